"""What the database operations return and accept: frozen dataclasses, never ORM objects tied to a session."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Protocol, TypeVar

from shared.errors import RenderfarmError
from shared.states import JobState


class ColumnValues(Protocol):
    """A row read from the database: its values by column name (SQLAlchemy's RowMapping, or a plain dict)."""

    def __getitem__(self, name: str, /) -> Any: ...


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
    retry_at: datetime | None = None  # not published nor claimed before (the backoff of a retry)
    outage_since: datetime | None = None  # the first outage that sent this job back to the queue
    storage_swept_at: datetime | None = None  # when uploads of attempts that never committed were removed
    outage_requeues: int = 0  # claims that ended in an outage: not attempts
    results_purged_at: datetime | None = None  # when the retention purge deleted its stored outputs (0007)

    @property
    def attempts_used(self) -> int:
        """Attempts that count against `max_attempts`: claims, less those that ended in an outage."""
        return self.attempt - self.outage_requeues

    @classmethod
    def from_mapping(cls, row: ColumnValues) -> JobRow:
        """The snapshot of a `jobs` row read as a mapping (column name -> value)."""
        error = row["error"]
        return cls(
            **{name: row[name] for name in _JOB_COLUMNS_AS_STORED},
            state=JobState(row["state"]),
            cancel_requested=bool(row["cancel_requested"]),
            error=None if error is None else JobError.from_dict(error),
            warnings=tuple(row["warnings"] or ()),
        )

    @property
    def message_id(self) -> str:
        """The Celery message id of the current delivery: `{uuid}:{attempt}` (never reused)."""
        return f"{self.id}:{self.attempt}"

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


# The columns JobRow keeps as the database returns them (the others are converted in `JobRow.from_mapping`).
_JOB_COLUMNS_AS_STORED = tuple(
    column.name for column in fields(JobRow) if column.name not in ("state", "cancel_requested", "error", "warnings")
)

_Plain = TypeVar("_Plain")


def plain_row(cls: type[_Plain], row: ColumnValues) -> _Plain:
    """A row dataclass whose fields are the table's columns, unchanged (ArtifactRow, AssetRow, BatchRow)."""
    return cls(**{column.name: row[column.name] for column in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class NewJob:
    """One job to insert (`Database.jobs.create_or_get`, or a batch's item with `Database.batches.create_if_absent`)."""

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
    """What a batch's insert did: rows inserted now, and rows that already existed with the same request."""

    created: int
    existing: int
    created_task_ids: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ArtifactRecord:
    """One uploaded output to record with `Database.leases.succeed` (sizes in bytes and pixels)."""

    kind: str  # "result" | "overlay" | "mask"
    index: int
    storage_key: str
    sha256: str
    bytes: int
    width: int
    height: int
    seed: int | None = None
    infotext: str | None = None


@dataclass(frozen=True, kw_only=True)
class ArtifactRow(ArtifactRecord):
    """A recorded artifact: what was uploaded, of which attempt of which job, and when it was recorded."""

    id: uuid.UUID
    job_id: uuid.UUID
    attempt: int
    created_at: datetime


@dataclass(frozen=True)
class QueueStanding:
    """Where a queued job stands in its queue (`Stats.queue_standing`), each count stopped at the cap asked for:
    jobs of higher priority ahead, older jobs of the same priority ahead, and of those ahead the ones of the job's
    own tenant not yet dispatched (the dispatcher's round-robin serves other tenants between them); and whether
    other tenants have jobs waiting for dispatch in the queue (without them the round-robin changes nothing)."""

    higher_priority: int
    same_priority: int
    own_tenant: int
    other_tenants_waiting: bool = False

    @property
    def position(self) -> int:
        """Jobs that run first (as `Stats.queue_position`)."""
        return self.higher_priority + self.same_priority


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


@dataclass(frozen=True)
class FinishedJob:
    """What the metrics fold of one finished job needs (`Stats.finished_since`)."""

    id: uuid.UUID
    model: str | None
    state: JobState
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime
    error_code: str | None


@dataclass(frozen=True)
class QueueCounts:
    """One Celery queue's unfinished jobs (`Stats.queue_counts`): queued (of which in flight) and running, and
    when its oldest queued job was submitted."""

    queued: int = 0
    in_flight: int = 0
    running: int = 0
    oldest_queued: datetime | None = None


@dataclass(frozen=True)
class WorkerRow:
    """One worker's announcement (`Database.workers`): what it consumes and can load, and how fresh that is."""

    hostname: str
    device: str
    queues: tuple[str, ...]
    models: tuple[str, ...]
    started_at: datetime
    seen_at: datetime
    expires_at: datetime
    # What it is doing now (`worker.status.WorkerStatus.snapshot`), None from a worker that announces none.
    status: Mapping[str, Any] | None = field(default=None, hash=False)

    @classmethod
    def from_mapping(cls, row: ColumnValues) -> WorkerRow:
        return cls(
            hostname=row["hostname"],
            device=row["device"],
            queues=tuple(row["queues"] or ()),
            models=tuple(row["models"] or ()),
            started_at=row["started_at"],
            seen_at=row["seen_at"],
            expires_at=row["expires_at"],
            status=row["status"],
        )
