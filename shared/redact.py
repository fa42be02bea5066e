"""Keeping secrets and internal addresses out of logs and error bodies (docs/reliability.md "Secrets").

    redact(text)                      # the text with credentials, signatures and server addresses masked
    install_log_redaction()           # every handler of the root and uvicorn loggers writes redacted lines

What `redact` masks, and why it is enough: the farm's own messages never put a secret into a log line or an error
body on purpose; what could carry one in is text from elsewhere, which has a few shapes only:

- URLs with credentials (`postgresql://user:PASSWORD@host/db`, `redis://:PASSWORD@host`): the password;
- signed URLs (the local folder's `?expires=&sig=`, S3's presigned `X-Amz-Signature`, `X-Amz-Credential`,
  `X-Amz-Security-Token`, and the older `Signature`/`AWSAccessKeyId`): the parameter's value. The uvicorn access
  log prints each request's query string, so every download through `/v1/files` would otherwise log a usable URL;
- a driver's connection error (`connection to server at "10.0.0.5", port 5432 failed`, `Error 111 connecting to
  redis:6379`, `Could not connect to the endpoint URL: "http://s3:8333/bucket/key"`): the server's address;
- `Authorization` headers a library echoes (`Bearer <token>`, `Basic <base64>`): the credentials.

Masked parts become `***` (a secret) or `<address>` (a server), so a reader still sees what failed.
"""

from __future__ import annotations

import logging
import re
from typing import Final

__all__ = ["MASK", "RedactingFormatter", "install_log_redaction", "redact"]

MASK: Final = "***"
ADDRESS: Final = "<address>"

# Query parameters whose value is a signature or a credential (case-insensitive).
_SECRET_PARAMS: Final = (
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "awsaccesskeyid",
    "token",
    "access_token",
)
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # scheme://user:password@  →  scheme://user:***@
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), rf"\g<1>{MASK}@"),
    # ?sig=...&X-Amz-Signature=...  →  ?sig=***&X-Amz-Signature=***
    (re.compile(r"([?&](?:" + "|".join(_SECRET_PARAMS) + r")=)[^&\s\"'<>]+", re.IGNORECASE), rf"\g<1>{MASK}"),
    # Authorization: Bearer abc / Basic abc
    (re.compile(r"\b(Bearer|Basic)\s+(?!realm=)[A-Za-z0-9._~+/=-]{8,}"), rf"\g<1> {MASK}"),
    # libpq: connection to server at "host" (1.2.3.4), port 5432 failed / on socket "/run/..."
    (re.compile(r'(server (?:at|on socket)) "[^"]*"(?: \([^)]*\))?(?:, port \d+)?'), rf"\g<1> {ADDRESS}"),
    # redis-py: Error 111 connecting to host:6379.
    (re.compile(r"(connecting to) [^\s,;]+:\d+"), rf"\g<1> {ADDRESS}"),
    # botocore and urllib3: Could not connect to the endpoint URL: "http://s3:8333/bucket/key"; host='s3', port=8333
    (re.compile(r'(endpoint URL:?) "?[^\s"]+"?'), rf"\g<1> {ADDRESS}"),
    (re.compile(r"host='[^']*', port=\d+"), f"host={ADDRESS}"),
)


def redact(text: str) -> str:
    """`text` with credentials, signatures and server addresses masked (see the module docstring)."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats as `inner` does, then redacts the whole line (message, arguments and traceback alike)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


_LOGGERS_WITH_OWN_HANDLERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task")


def install_log_redaction(extra_loggers: tuple[str, ...] = ()) -> None:
    """Make every handler of the root logger and of the loggers that bring their own handlers (uvicorn's, Celery's)
    redact what it writes. Call it after logging is configured (after uvicorn.Config, in Celery's
    `after_setup_logger`); calling it again changes nothing."""
    for name in (None, *_LOGGERS_WITH_OWN_HANDLERS, *extra_loggers):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler.formatter, RedactingFormatter):
                handler.setFormatter(RedactingFormatter(handler.formatter))
