"""What shared/redact.py masks in log lines and error messages, one shape at a time, and that the formatter it
installs masks whole lines, tracebacks included (issue 15, finding 8)."""

from __future__ import annotations

import logging

import pytest

from shared.redact import RedactingFormatter, install_log_redaction, redact


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("postgresql+psycopg://renderfarm:Pa55-word@db:5432/rf", "Pa55-word", "postgresql+psycopg://renderfarm:***@"),
        ("redis://:redis-secret-1@redis:6379/0", "redis-secret-1", "redis://:***@"),
        (
            '127.0.0.1:5555 - "GET /v1/files/alice/r.png?expires=1700000000&sig=9f8e7d6c5b4a HTTP/1.1" 200',
            "9f8e7d6c5b4a",
            "/v1/files/alice/r.png?expires=1700000000&sig=***",
        ),
        (
            "http://s3:8333/b/k.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261206"
            "&X-Amz-Signature=abcdef0123456789",
            "abcdef0123456789",
            "X-Amz-Signature=***",
        ),
        ("...&X-Amz-Credential=AKIAEXAMPLE%2F20261206%2Fus-east-1&...", "AKIAEXAMPLE", "X-Amz-Credential=***"),
        ("Authorization: Bearer tok-0123456789abcdef", "tok-0123456789abcdef", "Bearer ***"),
        (
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: Connection refused',
            "10.0.0.5",
            "connection to server at <address> failed: Connection refused",
        ),
        (
            "Error 111 connecting to redis.internal:6379. Connection refused.",
            "redis.internal",
            "connecting to <address>",
        ),
        ('Could not connect to the endpoint URL: "http://s3.internal:8333/bucket/key"', "s3.internal", "endpoint URL:"),
    ],
)
def test_redact_masks_the_secret_and_keeps_the_rest(text: str, secret: str, kept: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert kept in masked


def test_text_without_secrets_is_unchanged() -> None:
    text = "job 5f1c was requeued after 3 attempts; Bearer realm=renderfarm"
    assert redact(text) == text


def test_the_formatter_masks_arguments_and_tracebacks() -> None:
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "connecting with %s", ("redis://:pw-123456@r:6379",), None
    )
    try:
        raise RuntimeError("postgresql://u:hunter2-secret@db/x is down")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    line = RedactingFormatter(logging.Formatter("%(message)s")).format(record)
    assert "pw-123456" not in line
    assert "hunter2-secret" not in line
    assert "RuntimeError" in line


def test_install_wraps_every_handler_once() -> None:
    logger = logging.getLogger("uvicorn.access")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        install_log_redaction()
        install_log_redaction()
        assert isinstance(handler.formatter, RedactingFormatter)
        assert not isinstance(handler.formatter.inner, RedactingFormatter)
    finally:
        logger.removeHandler(handler)
