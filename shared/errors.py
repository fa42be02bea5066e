"""The farm's error hierarchy, shared by scheduler, worker and SDK.

    RenderfarmError                      type            HTTP   what the worker does
    ├── ConfigError                      config          -      refuses to start
    ├── InputError                       invalid_request 422    fails the job at once (permanent)
    │   └── PayloadTooLarge              payload_too_large 413
    ├── NotFound                         not_found       404
    ├── Conflict                         conflict        409
    ├── RateLimited                      rate_limited    429    (carries retry_after_s)
    ├── Unavailable                      unavailable     503    (carries retry_after_s)
    ├── PermanentError                   permanent       500    fails the job at once
    │   └── LeaseLost                    lease_lost      -      stops rendering; a newer attempt owns the job
    └── TransientError                   transient       503    retries (a new delivery)
        ├── StorageUnavailable
        └── DatabaseUnavailable

Every error renders as the API's error body `{"error": {"type", "code", "message", "field"?}}`. `type` is the
class of problem (what a client switches on); `code` is the precise reason (stable, snake_case).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar


class RenderfarmError(Exception):
    """Base of every error the farm raises on purpose."""

    type: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal"

    def __init_subclass__(
        cls,
        *,
        type: str | None = None,
        http_status: int | None = None,
        default_code: str | None = None,
        **kwargs: Any,
    ) -> None:
        """A subclass names what sets it apart in its header (`class NotFound(RenderfarmError, type="not_found",
        http_status=404, default_code="not_found")`); what it leaves out it inherits."""
        super().__init_subclass__(**kwargs)
        if type is not None:
            cls.type = type
        if http_status is not None:
            cls.http_status = http_status
        if default_code is not None:
            cls.default_code = default_code

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.field = field

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class ConfigError(RenderfarmError, type="config", default_code="bad_setting"):
    """A setting is missing, malformed or insecure. `field` names the environment variable."""


@dataclass(frozen=True)
class FieldProblem:
    """One invalid field of a request: where it is (dotted path), why, and a stable code."""

    field: str
    message: str
    code: str = "invalid"

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


class InputError(RenderfarmError, type="invalid_request", http_status=422, default_code="invalid"):
    """The client's request cannot be run as it is; retrying it unchanged can never succeed."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        problems: Sequence[FieldProblem] = (),
    ) -> None:
        super().__init__(message, code=code, field=field)
        self.problems = tuple(problems) or ((FieldProblem(field, message, self.code),) if field else ())

    @classmethod
    def from_problems(cls, problems: Sequence[FieldProblem]) -> InputError:
        """One error for several problems; the first names the field and gives the message."""
        first = problems[0]
        message = first.message if len(problems) == 1 else f"{first.message} (and {len(problems) - 1} more)"
        return cls(f"{first.field}: {message}", code=first.code, field=first.field, problems=problems)

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        if self.problems:
            body["error"]["details"] = [problem.to_dict() for problem in self.problems]
        return body


class PayloadTooLarge(InputError, type="payload_too_large", http_status=413, default_code="too_large"):
    """An image or a request body is larger than the farm's limits."""


class NotFound(RenderfarmError, type="not_found", http_status=404, default_code="not_found"):
    """What the request names (a job, batch, asset, stored object) does not exist, or is another tenant's."""


class Gone(RenderfarmError, type="gone", http_status=410, default_code="gone"):
    """What the request names existed and was deleted on purpose (the retention purge); `purged_at` says when."""

    def __init__(self, message: str, *, purged_at: datetime, code: str | None = None, field: str | None = None):
        super().__init__(message, code=code, field=field)
        self.purged_at = purged_at

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        body["error"]["purged_at"] = self.purged_at.isoformat().replace("+00:00", "Z")
        return body


class Conflict(RenderfarmError, type="conflict", http_status=409, default_code="conflict"):
    """The request clashes with what the farm already holds (an id taken by a different request)."""


class _RetryAfterError(RenderfarmError):
    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        body["error"]["retry_after_s"] = self.retry_after_s
        return body


class RateLimited(_RetryAfterError, type="rate_limited", http_status=429, default_code="rate_limited"):
    """The tenant is at a limit (its queued jobs); retry after `retry_after_s` seconds."""


class Unavailable(_RetryAfterError, type="unavailable", http_status=503, default_code="unavailable"):
    """The farm cannot serve this now; retry after `retry_after_s` seconds."""


class PermanentError(RenderfarmError, type="permanent", default_code="render_failed"):
    """The job failed for a reason that a retry would not change (a broken model file, a bug)."""


class LeaseLost(PermanentError, default_code="lease_lost"):
    """This worker no longer owns the job: its lease expired and another attempt took over."""


class TransientError(RenderfarmError, type="transient", http_status=503, default_code="transient"):
    """A dependency was briefly unavailable; the job is retried as a new delivery."""


class StorageUnavailable(TransientError, default_code="storage_unavailable"):
    """The object storage did not answer."""


class DatabaseUnavailable(TransientError, default_code="database_unavailable"):
    """The database did not answer (or refused the connection)."""
