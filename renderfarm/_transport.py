"""The parts of talking to the farm that do no I/O themselves, shared by `Client` and `AsyncClient`:
configuration value objects (`Timeout`, `Retries`), the retry decision, environment defaults, and the parser of
server-sent events.

Why every request may be retried: each one the SDK sends is idempotent. Jobs are created with `PUT
/v1/jobs/{task_id}` under a task id chosen before the first try, batches under a batch id chosen before the first
try, assets are content-addressed, cancel is cancel. So a timeout or a dropped connection is always answered by
sending the same request again, and it can never create a second job.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import httpx

from renderfarm._errors import (
    ConnectError,
    RequestTimeout,
    TransportError,
    error_from_response,
    retry_after_of,
)

__all__ = [
    "DEFAULT_URL",
    "TOKEN_ENV",
    "URL_ENV",
    "Retries",
    "SSEEvent",
    "SSEParser",
    "Timeout",
    "resolve_token",
    "resolve_url",
]

URL_ENV: Final = "RENDERFARM_URL"
TOKEN_ENV: Final = "RENDERFARM_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_URL: Final = "http://127.0.0.1:7860"  # `renderfarm up` listens here
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})  # answers that mean "later", never "no"


@dataclass(frozen=True)
class Timeout:
    """How long one HTTP request may take, in seconds, per phase (None: no limit).

    `Timeout(10)` sets every phase to 10 s; `Timeout(connect=2, read=60)` sets some. The default reads for 30 s:
    long enough for a big upload's answer, short enough that a dead connection is noticed and retried.
    Streams (`wait`) use their own read timeout: the farm sends a keep-alive every 15 s.

    >>> Timeout(5).read, Timeout(connect=1).connect
    (5.0, 1.0)
    """

    default: float | None = 30.0
    connect: float | None = 5.0
    read: float | None = None
    write: float | None = None
    pool: float | None = 10.0

    def __init__(
        self,
        default: float | None = 30.0,
        *,
        connect: float | None = None,
        read: float | None = None,
        write: float | None = None,
        pool: float | None = None,
    ) -> None:
        # Frozen: set through object.__setattr__ once, here.
        values = {
            "default": default,
            "connect": connect if connect is not None else (default if default is not None and default < 5 else 5.0),
            "read": read if read is not None else default,
            "write": write if write is not None else default,
            "pool": pool if pool is not None else (default if default is not None and default < 10 else 10.0),
        }
        for name, value in values.items():
            if value is not None and value <= 0:
                raise ValueError(f"timeout {name} must be a positive number of seconds or None, not {value}")
            object.__setattr__(self, name, None if value is None else float(value))

    @classmethod
    def of(cls, timeout: Timeout | float | None) -> Timeout:
        """The `Timeout` a client was given: as it is, seconds for every phase, or None for the default."""
        if isinstance(timeout, Timeout):
            return timeout
        return cls(timeout) if timeout is not None else cls()

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@dataclass(frozen=True)
class Retries:
    """How transport failures and "try later" answers (429, 502, 503, 504) are retried.

    `attempts` is the most tries of one request (1: no retry). Waits grow as `backoff_s × 2^n` with ±25 % jitter,
    capped at `max_backoff_s`; a `Retry-After` from the farm is honoured when it is at most `max_retry_after_s`
    (a longer one is raised as RateLimited / Unavailable at once, for the caller to decide).

    >>> Retries(attempts=1)  # never retry                                  # doctest: +ELLIPSIS
    Retries(attempts=1, ...)
    """

    attempts: int = 5
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0
    statuses: frozenset[int] = field(default=RETRY_STATUSES)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff times must not be negative")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before try `attempt + 1` (attempt counts from 1), with jitter so many clients that failed
        together do not come back together."""
        base = min(self.backoff_s * (2 ** (attempt - 1)), self.max_backoff_s)
        return base * random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not cryptography

    def delay_after_answer(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying after this answer, or None when it must not be retried (yet)."""
        if response.status_code not in self.statuses or attempt >= self.attempts:
            return None
        retry_after = retry_after_of(response)
        if retry_after is None:
            return self.backoff(attempt)
        if retry_after > self.max_retry_after_s:
            return None
        return retry_after

    def delay_after_failure(self, attempt: int) -> float | None:
        """Seconds to wait before retrying after a transport failure, or None when the tries are used up."""
        return self.backoff(attempt) if attempt < self.attempts else None


def transport_error(exc: httpx.TransportError, request: httpx.Request | None) -> TransportError:
    """The SDK's exception for an httpx transport failure that is not retried any more."""
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(f"the farm did not answer in time ({message})", request=request)
    if isinstance(exc, httpx.ConnectError):
        return ConnectError(f"cannot connect to the farm ({message})", request=request)
    return TransportError(f"the connection to the farm failed ({message})", request=request)


def checked(response: httpx.Response) -> httpx.Response:
    """The response if it is a success; the typed APIError otherwise."""
    if response.is_success:
        return response
    raise error_from_response(response)


def resolve_url(base_url: str | None) -> str:
    """The farm's URL: the argument, else RENDERFARM_URL, else http://127.0.0.1:7860 (no trailing slash).
    An address without a scheme (`127.0.0.1:7860`, `farm:7860`) means http://."""
    url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).strip()
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the farm's URL must start with http:// or https://, not {url!r}")
    return url.rstrip("/")


def resolve_token(token: str | None) -> str | None:
    """The API token: the argument, else RENDERFARM_TOKEN, else None (a farm without tokens on this machine)."""
    return token or os.environ.get(TOKEN_ENV) or None


def same_origin(url: str, base_url: str) -> bool:
    """True when `url` is on the farm's own host and port (so it may carry the token)."""
    a, b = httpx.URL(url), httpx.URL(base_url)
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


# --------------------------------------------------------------------------------------------------------------
# Server-sent events


@dataclass(frozen=True)
class SSEEvent:
    """One event of a stream: its `id` (the snapshot's seq), `event` name and `data` text."""

    event: str
    data: str
    id: str | None = None


class SSEParser:
    """Turns the lines of a `text/event-stream` into events (the WHATWG rules the farm needs: `event`, `data`,
    `id`, comments and blank-line dispatch). Feed it lines without their line ending."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None

    def feed(self, line: str) -> Iterator[SSEEvent]:
        if line == "":
            if self._data:
                yield SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return
        if line.startswith(":"):
            return  # a comment: the farm's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
            self.last_id = value
