"""The SDK's exceptions. Transport failures are apart from the farm's answers, and every exception that came from
a request carries it (`.request`).

    RenderfarmError                     base of everything the SDK raises on purpose
    ├── TransportError                  the farm could not be reached, or did not answer (after the retries)
    │   ├── ConnectError                no connection (refused, DNS, TLS)
    │   └── RequestTimeout              connected, but no answer within the `Timeout`
    ├── APIError                        the farm answered with its error body {error: {type, code, message, field?}}
    │   ├── ValidationError      422    the request is invalid; `.field` names the field, `.details` lists all
    │   │   └── PayloadTooLarge  413    an image or the body is over the farm's limits
    │   ├── Unauthorized         401    no token, or not a valid one
    │   ├── Forbidden            403
    │   ├── NotFound             404    no such job / batch / asset for your token (others' look the same)
    │   ├── Conflict             409    the task id (or batch id) is taken by a different request
    │   ├── RateLimited          429    `.retry_after_s`
    │   └── ServerError          5xx
    │       └── Unavailable      503    `.retry_after_s`: the farm or a dependency is briefly down
    ├── JobFailed                       the job ended `failed` (`.job`, `.job.error`)
    │   └── JobCanceled                 the job ended `canceled`
    ├── JobNotFinished                  results were asked for before the job finished
    ├── WaitTimeout                     `wait` gave up; the job itself goes on (`.job` is the last snapshot seen)
    └── IntegrityError                  a download's sha256 differs from the farm's record

The four about a job (JobFailed, JobCanceled, JobNotFinished, WaitTimeout) carry its snapshot, so they live beside
`Job` in `renderfarm._job`. These are the SDK's classes, not the server's (`shared.errors`): a client needs no server
code to catch them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

__all__ = [
    "APIError",
    "Conflict",
    "ConnectError",
    "Forbidden",
    "IntegrityError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RenderfarmError",
    "RequestTimeout",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
    "error_from_response",
]


class RenderfarmError(Exception):
    """Base of every exception the SDK raises on purpose. `request` is the request it came from, when there was one."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class TransportError(RenderfarmError):
    """The farm could not be reached or did not answer, after the client's retries."""


class ConnectError(TransportError):
    """No connection could be made (refused, name resolution, TLS)."""


class RequestTimeout(TransportError):
    """Connected, but the farm did not answer within the client's `Timeout`."""


class APIError(RenderfarmError):
    """The farm answered with an error. `type` is the class of problem, `code` the precise reason (stable,
    snake_case), `field` the request field at fault (dotted path) when there is one, `details` every field problem
    (`[{field, code, message}]`), `body` the whole error object."""

    status_code: int = 0

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str = "error",
        code: str = "error",
        field: str | None = None,
        details: Sequence[Mapping[str, Any]] = (),
        body: Mapping[str, Any] | None = None,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message, request=request)
        self.status_code = status_code
        self.type = type
        self.code = code
        self.field = field
        self.details = tuple(details)
        self.body: Mapping[str, Any] = body or {}
        self.response = response

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status_code} {self.code}: {self.message}{where}"


class ValidationError(APIError):
    """422: the request cannot be run as it is; `field` names the first bad field, `details` all of them."""


class PayloadTooLarge(ValidationError):
    """413: an inline image, an upload or the body is over the farm's limits."""


class Unauthorized(APIError):
    """401: no token was sent, or it names no tenant. Pass `token=` or set RENDERFARM_TOKEN."""


class Forbidden(APIError):
    """403: refused for where the request comes from (a farm without tokens serves only its own machine)."""


class NotFound(APIError):
    """404: no such job, batch or asset for this token (another tenant's look exactly the same)."""


class Conflict(APIError):
    """409: the task id (or batch id) is already used by a different request. `existing_request_hash` and
    `request_hash` (when the farm names them) tell the two apart."""

    @property
    def existing_request_hash(self) -> str | None:
        value = self.body.get("existing_request_hash")
        return str(value) if value is not None else None

    @property
    def request_hash(self) -> str | None:
        value = self.body.get("request_hash")
        return str(value) if value is not None else None


class _RetryAfter(APIError):
    @property
    def retry_after_s(self) -> float | None:
        """Seconds the farm asked us to wait (the `Retry-After` header, else the body's `retry_after_s`)."""
        return retry_after_of(self.response, self.body)


class RateLimited(_RetryAfter):
    """429: too many requests, or too many queued jobs; wait `retry_after_s` seconds."""


class ServerError(APIError):
    """5xx: the farm's own fault, not the request's."""


class Unavailable(ServerError, _RetryAfter):
    """503: the farm or one of its dependencies is briefly down; wait `retry_after_s` seconds."""


class IntegrityError(RenderfarmError):
    """A downloaded file's sha256 differs from the one the farm recorded for it."""

    def __init__(self, url: str, expected: str, actual: str) -> None:
        super().__init__(f"download of {url.split('?', 1)[0]} has sha256 {actual}, the farm recorded {expected}")
        self.expected = expected
        self.actual = actual


# --------------------------------------------------------------------------------------------------------------
# Mapping answers to exceptions

_BY_STATUS: dict[int, type[APIError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
}


def retry_after_of(response: httpx.Response | None, body: Mapping[str, Any] | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds; HTTP dates are not used by the farm), else from the
    error body's `retry_after_s`; None when neither says."""
    if response is not None:
        header = response.headers.get("retry-after")
        if header is not None:
            try:
                return max(float(header), 0.0)
            except ValueError:
                pass
    value = (body or {}).get("retry_after_s")
    return float(value) if isinstance(value, int | float) else None


def error_from_response(response: httpx.Response) -> APIError:
    """The typed exception for an error answer. Bodies that are not the farm's error shape (a proxy's HTML page)
    still give the right class by status, with the text as message."""
    status = response.status_code
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        text = response.text.strip()[:500] or response.reason_phrase
        error = {"type": "http", "code": f"http_{status}", "message": text}
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    details = error.get("details")
    return cls(
        str(error.get("message", "")),
        status_code=status,
        type=str(error.get("type", "error")),
        code=str(error.get("code", "error")),
        field=error.get("field") if isinstance(error.get("field"), str) else None,
        details=details if isinstance(details, list) else (),
        body=error,
        request=response.request,
        response=response,
    )
