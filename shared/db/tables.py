"""The farm's tables, as SQLAlchemy 2.0 declarative models, portable between PostgreSQL and SQLite.

Portability rules kept here (the first migration in `shared/db/migrations/versions` mirrors them exactly, and
`tests/integration/test_migrations.py` checks that it does):

- ids are `sa.Uuid`: native `uuid` on PostgreSQL, `CHAR(32)` hex on SQLite. Lowercase hex sorts like the bytes, so
  keyset pagination on `(created_at, id)` orders the same way on both.
- JSON columns are `sa.JSON`, `JSONB` on PostgreSQL (smaller, comparable, indexable).
- timestamps are `UTCDateTime`: aware datetimes in UTC in Python; `timestamptz` on PostgreSQL; on SQLite a
  fixed-width ISO string in UTC, which compares correctly as text.

Only `shared.db` (through `shared.db.database.Database`) reads and writes these tables; everyone else goes through it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.job.artifacts import ARTIFACT_KINDS
from shared.job.ids import MAX_TASK_ID_LENGTH
from shared.states import JobState

TENANT_MAX_LENGTH = 64  # characters (shared.config's tenant pattern)
SHA256_HEX_LENGTH = 64  # characters of a sha256 hex digest

BATCH_MODES: tuple[str, ...] = ("list", "zip", "product")

# Constraint and index names are fixed by convention, so the migration, the models and every database agree on
# them (Alembic can only compare and drop what has a stable name).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware timestamp, always UTC on the way in and out.

    Naive datetimes are refused on the way in: a naive value is local time on some machine, and storing it as UTC
    would silently shift leases and orderings by the machine's offset.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite gives back the naive UTC value it was given; PostgreSQL gives the session's time zone.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def _quoted_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


JOB_STATE_VALUES: tuple[str, ...] = tuple(state.value for state in JobState)

# The predicates of the partial indexes (written as SQL text so that the migration can repeat them verbatim).
QUEUED = "state = 'queued'"
UNDISPATCHED = "state = 'queued' AND dispatched_at IS NULL"
IN_FLIGHT = "state = 'queued' AND dispatched_at IS NOT NULL"
# Finished jobs whose uploads of uncommitted attempts the reconciler has not removed yet (migration 0004): claimed at
# least once and not a success at the first attempt (that one's only uploads are the committed ones).
UNSWEPT = (
    "storage_swept_at IS NULL AND attempt >= 1 AND state IN ('succeeded', 'failed', 'canceled') "
    "AND (state <> 'succeeded' OR attempt > 1)"
)

# Retention (migration 0008): the purge's work lists, oldest first by when the job finished.
TERMINAL = "state IN ('succeeded', 'failed', 'canceled')"
RESULTS_STORED = f"{TERMINAL} AND results_purged_at IS NULL"


def _where(predicate: str) -> dict[str, Any]:
    """The keyword arguments of a partial index with `predicate`, on PostgreSQL and SQLite alike."""
    return {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(predicate)}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class Batch(Base):
    """A fan-out of child jobs from one `POST /v1/batches` manifest."""

    __tablename__ = "batches"
    __table_args__ = (
        sa.CheckConstraint(f"mode IN ({_quoted_list(BATCH_MODES)})", name="mode"),
        sa.Index(None, "tenant", "created_at"),
        # Keyed per tenant (migration 0003): a client-chosen batch id another tenant uses behaves as an unused one,
        # so batch ids tell no tenant about another's.
        sa.PrimaryKeyConstraint("tenant", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    tenant: Mapped[str] = mapped_column(sa.String(TENANT_MAX_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    requested: Mapped[int] = mapped_column(sa.Integer)
    mode: Mapped[str] = mapped_column(sa.String(16))
    manifest: Mapped[Any] = mapped_column(JSONType)
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Job(Base):
    """One job: its request, its state, its lease and its outbox marker (`dispatched_at`)."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "task_id"),
        # A job's batch is its own tenant's (batches are keyed per tenant).
        sa.ForeignKeyConstraint(["tenant", "batch_id"], ["batches.tenant", "batches.id"]),
        sa.CheckConstraint(f"state IN ({_quoted_list(JOB_STATE_VALUES)})", name="state"),
        # Partial indexes on queued jobs only (migration 0002): what the API and the dispatcher read per request and
        # per round stays proportional to what they need, not to the backlog or to the whole table.
        # A queued job's position in its queue, counted up to a cap (higher priority first, then age).
        sa.Index("ix_jobs_queued_order", "queue", "priority", "created_at", "id", **_where(QUEUED)),
        # A tenant's queued jobs, counted for the per-tenant limit.
        sa.Index("ix_jobs_queued_tenant", "tenant", **_where(QUEUED)),
        # The outbox: which queues have jobs never published, and the next ones of a queue in dispatch order.
        sa.Index("ix_jobs_undispatched", "queue", "tenant", "priority", "created_at", "id", **_where(UNDISPATCHED)),
        # A queue's messages in flight (published, not yet claimed): the dispatch window.
        sa.Index("ix_jobs_in_flight", "queue", "tenant", "priority", **_where(IN_FLIGHT)),
        # The tenant's listing, newest first, with a keyset cursor on (created_at, id).
        sa.Index(None, "tenant", "created_at", "id"),
        # The same of one state (`?state=failed` among a million successes), and capped counts by state (the
        # dashboard's): range scans of what is asked for, not of the tenant's whole history (migration 0011).
        sa.Index("ix_jobs_tenant_state", "tenant", "state", "created_at", "id"),
        # A batch's items and its counts by state.
        sa.Index(None, "batch_id", "state"),
        # The reconciler: expired leases of running jobs.
        sa.Index(None, "state", "lease_until"),
        # The reconciler: the outbox (queued jobs never published, or published long ago).
        sa.Index(None, "state", "dispatched_at"),
        # The reconciler's sweep: finished jobs that may have left uploads behind, oldest first (migration 0004).
        sa.Index("ix_jobs_unswept", "finished_at", "id", **_where(UNSWEPT)),
        sa.Index("ix_jobs_finished", "finished_at", "id", **_where(TERMINAL)),
        sa.Index("ix_jobs_results_stored", "finished_at", "id", **_where(RESULTS_STORED)),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(TENANT_MAX_LENGTH))
    task_id: Mapped[str] = mapped_column(sa.String(MAX_TASK_ID_LENGTH))
    state: Mapped[str] = mapped_column(sa.String(16))
    attempt: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))
    max_attempts: Mapped[int] = mapped_column(sa.Integer)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    priority: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))
    queue: Mapped[str] = mapped_column(sa.String(128))
    model: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    request: Mapped[Any] = mapped_column(JSONType)
    request_hash: Mapped[str] = mapped_column(sa.String(SHA256_HEX_LENGTH))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    error: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    warnings: Mapped[Any] = mapped_column(JSONType)
    seq: Mapped[int] = mapped_column(sa.BigInteger, server_default=sa.text("1"))
    total_steps: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    # Migration 0004 (reliability.md "Outages and retries"): a re-queued job is neither published nor claimed
    # before `retry_at`; claims that ended in an outage are counted apart from the attempts, since `outage_since`.
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outage_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    storage_swept_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outage_requeues: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))
    results_purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Artifact(Base):
    """One stored output image of a succeeded job (written in the same transaction as `succeeded`)."""

    __tablename__ = "artifacts"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "kind", "index"),
        sa.CheckConstraint(f"kind IN ({_quoted_list(ARTIFACT_KINDS)})", name="kind"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    kind: Mapped[str] = mapped_column(sa.String(16))
    index: Mapped[int] = mapped_column(sa.Integer)
    storage_key: Mapped[str] = mapped_column(sa.String(1024))
    sha256: Mapped[str] = mapped_column(sa.String(SHA256_HEX_LENGTH))
    bytes: Mapped[int] = mapped_column(sa.BigInteger)
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)
    seed: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    infotext: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Asset(Base):
    """An uploaded input image, content-addressed per tenant (a tenant sees only its own)."""

    __tablename__ = "assets"
    __table_args__ = (sa.Index(None, "created_at"),)

    tenant: Mapped[str] = mapped_column(sa.String(TENANT_MAX_LENGTH), primary_key=True)
    sha256: Mapped[str] = mapped_column(sa.String(SHA256_HEX_LENGTH), primary_key=True)
    storage_key: Mapped[str] = mapped_column(sa.String(1024))
    bytes: Mapped[int] = mapped_column(sa.BigInteger)
    mime: Mapped[str] = mapped_column(sa.String(64))
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PurgedBatch(Base):
    """The tombstone of a batch the retention purge deleted with its last job (migration 0010): reads answer 410."""

    __tablename__ = "purged_batches"
    __table_args__ = (sa.PrimaryKeyConstraint("tenant", "batch_id"),)

    tenant: Mapped[str] = mapped_column(sa.String(TENANT_MAX_LENGTH))
    batch_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    purged_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PurgedJob(Base):
    """The tombstone of a job row the retention purge deleted (migration 0008): reads of it answer 410."""

    __tablename__ = "purged_jobs"
    __table_args__ = (sa.PrimaryKeyConstraint("tenant", "task_id"),)

    tenant: Mapped[str] = mapped_column(sa.String(TENANT_MAX_LENGTH))
    task_id: Mapped[str] = mapped_column(sa.String(MAX_TASK_ID_LENGTH))
    job_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    purged_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkerAnnouncement(Base):
    """What one live worker process serves (migration 0005): written by the worker on start and every heartbeat,
    removed when it stops, ignored (and later deleted) once `expires_at` has passed, so a worker killed with -9
    vanishes after a few missed heartbeats (docs/reliability.md "Who moves each job on")."""

    __tablename__ = "worker_announcements"
    __table_args__ = (sa.Index(None, "expires_at"),)

    hostname: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    device: Mapped[str] = mapped_column(sa.String(32))
    queues: Mapped[Any] = mapped_column(JSONType)
    models: Mapped[Any] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What it is doing now (migration 0008, `worker.status`): GPU, loaded models, current job, step speed, OOMs.
    status: Mapped[Any | None] = mapped_column(JSONType, nullable=True)


# The feed's cursor: SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a BIGINT.
EVENT_POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PENDING_DELIVERY = "state = 'pending'"
DELIVERY_STATES: tuple[str, ...] = ("pending", "delivered", "failed")


class Event(Base):
    """One job or batch event (migration 0006), written in the transaction of the change that causes it: the
    per-tenant feed (`position` is its cursor) and the body every webhook delivery of it sends."""

    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("event_id"),
        # A second event for the same transition (a batch finished twice) is impossible.
        sa.UniqueConstraint("dedup_key"),
        sa.Index(None, "tenant", "position"),
        sa.Index(None, "job_id"),
        # SQLite: never reuse the position of a deleted newest event (a feed cursor must only grow).
        {"sqlite_autoincrement": True},
    )

    position: Mapped[int] = mapped_column(EVENT_POSITION, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(sa.String(64))
    tenant: Mapped[str] = mapped_column(sa.String(TENANT_MAX_LENGTH))
    type: Mapped[str] = mapped_column(sa.String(32))
    job_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    dedup_key: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    body: Mapped[Any] = mapped_column(JSONType)


class WebhookDelivery(Base):
    """One event to one URL (migration 0006): the outbox the scheduler's webhook loop works through."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.CheckConstraint(f"state IN ({_quoted_list(DELIVERY_STATES)})", name="state"),
        sa.Index("ix_webhook_deliveries_due", "next_attempt_at", **_where(PENDING_DELIVERY)),
        sa.Index(None, "job_id"),
        sa.Index(None, "event_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    event_id: Mapped[str] = mapped_column(sa.String(64))
    tenant: Mapped[str] = mapped_column(sa.String(TENANT_MAX_LENGTH))
    job_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    url: Mapped[str] = mapped_column(sa.String(4096))
    state: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    log: Mapped[Any] = mapped_column(JSONType)


class TenantWebhook(Base):
    """A tenant's webhook signing secret, the previous one until its rotation's overlap ends, and the tenant's
    default URL for events of jobs without a `webhook_url` (migration 0006)."""

    __tablename__ = "tenant_webhooks"

    tenant: Mapped[str] = mapped_column(sa.String(TENANT_MAX_LENGTH), primary_key=True)
    # Sealed (shared/secret_box.py, migration 0009) or as they are, without RENDERFARM_WEBHOOK_SECRETS_KEY.
    secret: Mapped[str] = mapped_column(sa.String(512))
    previous_secret: Mapped[str | None] = mapped_column(sa.String(512), nullable=True)
    previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rotated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    default_url: Mapped[str | None] = mapped_column(sa.String(4096), nullable=True)


metadata = Base.metadata
jobs: sa.Table = Job.__table__  # type: ignore[assignment]
artifacts: sa.Table = Artifact.__table__  # type: ignore[assignment]
assets: sa.Table = Asset.__table__  # type: ignore[assignment]
batches: sa.Table = Batch.__table__  # type: ignore[assignment]
worker_announcements: sa.Table = WorkerAnnouncement.__table__  # type: ignore[assignment]
events: sa.Table = Event.__table__  # type: ignore[assignment]
webhook_deliveries: sa.Table = WebhookDelivery.__table__  # type: ignore[assignment]
tenant_webhooks: sa.Table = TenantWebhook.__table__  # type: ignore[assignment]
purged_jobs: sa.Table = PurgedJob.__table__  # type: ignore[assignment]
purged_batches: sa.Table = PurgedBatch.__table__  # type: ignore[assignment]
