"""What the repository returns and accepts: frozen dataclasses, never ORM objects tied to a session."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.errors import RenderfarmError
from shared.states import JobState


@dataclass(frozen=True)
class JobError:
    """Why a job failed: the API's error body fields (`type` of problem, stable `code`, human `message`)."""

    type: str
    code: str
    message: str
    field: str | None = None

    @classmethod
    def from_exception(cls, exc: RenderfarmError) -> JobError:
        return cls(type=exc.type, code=exc.code, message=exc.message, field=exc.field)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobError:
        return cls(
            type=str(data.get("type", "error")),
            code=str(data.get("code", "internal")),
            message=str(data.get("message", "")),
            field=None if data.get("field") is None else str(data["field"]),
        )

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


@dataclass(frozen=True)
class JobRow:
    """A snapshot of one `jobs` row. `seq` orders snapshots of the same job: a larger one is newer."""

    id: uuid.UUID
    tenant: str
    task_id: str
    state: JobState
    attempt: int
    max_attempts: int
    lease_until: datetime | None
    worker: str | None
    priority: int
    queue: str
    model: str | None
    request: Any
    request_hash: str
    batch_id: uuid.UUID | None
    created_at: datetime
    dispatched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    cancel_requested: bool
    error: JobError | None
    warnings: tuple[Mapping[str, Any], ...]
    seq: int
    total_steps: int | None

    @property
    def message_id(self) -> str:
        """The Celery message id of the current delivery: `{uuid}:{attempt}` (never reused)."""
        return f"{self.id}:{self.attempt}"

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


@dataclass(frozen=True)
class NewJob:
    """One job to insert with `JobRepository.bulk_create` (the fields that differ between a batch's items)."""

    task_id: str
    request: Any
    request_hash: str
    priority: int = 0
    queue: str = "default"
    model: str | None = None
    max_attempts: int = 3
    total_steps: int | None = None
    warnings: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class BulkResult:
    """What `bulk_create` did: rows inserted now, and rows that already existed with the same request."""

    created: int
    existing: int
    created_task_ids: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ArtifactRecord:
    """One uploaded output to record with `JobRepository.succeed` (sizes in bytes and pixels)."""

    kind: str  # "result" | "overlay" | "mask"
    index: int
    storage_key: str
    sha256: str
    bytes: int
    width: int
    height: int
    seed: int | None = None
    infotext: str | None = None


@dataclass(frozen=True)
class ArtifactRow:
    id: uuid.UUID
    job_id: uuid.UUID
    attempt: int
    kind: str
    index: int
    storage_key: str
    sha256: str
    bytes: int
    width: int
    height: int
    seed: int | None
    infotext: str | None
    created_at: datetime


@dataclass(frozen=True)
class LeaseStatus:
    """The answer to a lease renewal: whether this attempt still owns the job, and whether to stop (cancel)."""

    held: bool
    cancel_requested: bool


@dataclass(frozen=True)
class AssetRow:
    tenant: str
    sha256: str
    storage_key: str
    bytes: int
    mime: str
    width: int
    height: int
    created_at: datetime


@dataclass(frozen=True)
class BatchRow:
    id: uuid.UUID
    tenant: str
    created_at: datetime
    requested: int
    mode: str
    manifest: Any
    canceled_at: datetime | None
