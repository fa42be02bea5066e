"""Every read and write of the farm's tables.

Rules this module keeps (architecture.md "States", reliability.md "Job row vs message"):

- Every state change is ONE conditional UPDATE, `WHERE id = :id AND state IN (sources_of(target)) [AND attempt = :n]
  ... RETURNING *`: whoever loses a race sees "no row" and nothing was changed. Never read, decide, then write.
- Every change of a row bumps `seq` (so clients can drop stale snapshots) and `updated_at`.
- A worker's writes are fenced by its attempt number: after a lease expired and another attempt claimed the job, the
  old worker's `succeed`, `fail` and `renew_lease` match no row.
- The jobs table is the outbox: new and re-queued jobs have `dispatched_at` NULL until their message is published.
- Results are frozen dataclasses (`shared.db.rows`), never ORM objects tied to a session.
- A database that cannot be reached raises `DatabaseUnavailable` (a transient error: retry later).

Times come from the calling process's clock (`clock`, UTC), not from the database, so SQLite and PostgreSQL behave
the same. Leases are minutes long; hosts are expected to run NTP, so a skew of seconds does not matter.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.sql.dml import ReturningInsert

from shared.db.engine import SQLITE_BEGIN_OPTION
from shared.db.ids import new_id
from shared.db.rows import (
    ArtifactRecord,
    ArtifactRow,
    AssetRow,
    BatchRow,
    BulkResult,
    JobError,
    JobRow,
    LeaseStatus,
    NewJob,
)
from shared.db.tables import (
    BATCH_MODES,
    artifacts,
    assets,
    batches,
    jobs,
    utcnow,
)
from shared.errors import Conflict, DatabaseUnavailable, InputError, LeaseLost, NotFound
from shared.job.artifacts import ARTIFACT_KINDS
from shared.job.ids import is_valid_task_id, task_id_problem
from shared.states import JobState, sources_of

MAX_LIST_LIMIT = 1000  # rows per page of list_jobs
_IN_CHUNK = 1000  # ids per IN (...) list, well below PostgreSQL's 65,535 bind parameters per statement
# Columns a caller of `transition` may not set: the key, the tenant's identity, and what the update manages itself.
_PROTECTED_COLUMNS = frozenset({"id", "tenant", "task_id", "state", "seq", "updated_at", "created_at"})

ErrorLike = JobError | Mapping[str, Any]

# Advisory lock namespace of the dispatch window ("rf" + "dw"); the second key is the queue's CRC-32.
_DISPATCH_LOCK_SPACE = 0x72666477


class OutboxState(NamedTuple):
    """One Celery queue's outbox: whether it has queued jobs never published, and its messages in flight
    (published, not yet claimed)."""

    waiting: bool
    in_flight: int


def _count_up_to(
    where: Sequence[sa.ColumnElement[bool]], cap: int | sa.BindParameter[int] | None
) -> sa.ScalarSelect[int]:
    """A scalar subquery counting the jobs matching `where`, stopping at `cap` rows when a cap is given."""
    if cap is None:
        return sa.select(sa.func.count()).select_from(jobs).where(*where).scalar_subquery()
    matching = sa.select(jobs.c.id).where(*where).limit(cap).subquery()
    return sa.select(sa.func.count()).select_from(matching).scalar_subquery()


@functools.cache
def _queue_position_statement(capped: bool) -> sa.Select[Any]:
    """The count behind `JobRepository.queue_position`, built once (it runs for every status read of a queued
    job; building it per call was a tenth of the read's time). Parameters: queue, priority, created_at, id and
    cap (used when `capped`)."""
    same_queue = [jobs.c.state == JobState.QUEUED.value, jobs.c.queue == sa.bindparam("queue")]
    higher_priority = [*same_queue, jobs.c.priority > sa.bindparam("priority")]
    older_same_priority = [
        *same_queue,
        jobs.c.priority == sa.bindparam("priority"),
        sa.tuple_(jobs.c.created_at, jobs.c.id)
        < sa.tuple_(sa.bindparam("created_at", type_=jobs.c.created_at.type), sa.bindparam("id", type_=jobs.c.id.type)),
    ]
    cap: sa.BindParameter[int] | None = sa.bindparam("cap", type_=sa.Integer) if capped else None
    return sa.select(_count_up_to(higher_priority, cap) + _count_up_to(older_same_priority, cap))


# The distinct queues with queued jobs never published, as a skip scan of ix_jobs_undispatched: each step finds
# the next queue name with one index probe, so the cost grows with the number of queues, not of jobs. (A plain
# SELECT DISTINCT reads every entry.) Written for PostgreSQL and SQLite alike.
_WAITING_QUEUES = sa.text(
    """
    WITH RECURSIVE waiting(queue) AS (
        SELECT min(queue) FROM jobs WHERE state = 'queued' AND dispatched_at IS NULL
        UNION ALL
        SELECT (
            SELECT min(later.queue) FROM jobs AS later
            WHERE later.state = 'queued' AND later.dispatched_at IS NULL AND later.queue > waiting.queue
        )
        FROM waiting WHERE waiting.queue IS NOT NULL
    )
    SELECT queue FROM waiting WHERE queue IS NOT NULL
    """
)

# Messages in flight per queue (published, not yet claimed): a count over ix_jobs_in_flight.
_IN_FLIGHT_BY_QUEUE = (
    sa.select(jobs.c.queue, sa.func.count())
    .where(jobs.c.state == JobState.QUEUED.value, jobs.c.dispatched_at.is_not(None))
    .group_by(jobs.c.queue)
)


def _lock_key(queue: str) -> int:
    """A queue's advisory lock key: its CRC-32 as a signed 32-bit integer (PostgreSQL's `int4`)."""
    value = zlib.crc32(queue.encode("utf-8"))
    return value - (1 << 32) if value >= 1 << 31 else value


def _job_row(row: RowMapping) -> JobRow:
    error = row["error"]
    return JobRow(
        id=row["id"],
        tenant=row["tenant"],
        task_id=row["task_id"],
        state=JobState(row["state"]),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        lease_until=row["lease_until"],
        worker=row["worker"],
        priority=row["priority"],
        queue=row["queue"],
        model=row["model"],
        request=row["request"],
        request_hash=row["request_hash"],
        batch_id=row["batch_id"],
        created_at=row["created_at"],
        dispatched_at=row["dispatched_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        cancel_requested=bool(row["cancel_requested"]),
        error=None if error is None else JobError.from_dict(error),
        warnings=tuple(row["warnings"] or ()),
        seq=row["seq"],
        total_steps=row["total_steps"],
    )


def _artifact_row(row: RowMapping) -> ArtifactRow:
    return ArtifactRow(**{column.name: row[column.name] for column in artifacts.columns})


def _asset_row(row: RowMapping) -> AssetRow:
    return AssetRow(**{column.name: row[column.name] for column in assets.columns})


def _batch_row(row: RowMapping) -> BatchRow:
    return BatchRow(**{column.name: row[column.name] for column in batches.columns})


def _error_dict(error: ErrorLike) -> dict[str, Any]:
    return error.to_dict() if isinstance(error, JobError) else JobError.from_dict(error).to_dict()


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _encode_cursor(row: JobRow, oldest_first: bool) -> str:
    payload = {"t": row.created_at.isoformat(), "i": row.id.hex, "o": oldest_first}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, oldest_first: bool) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a page ends with. Raises InputError (field "cursor") for anything not made here."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        created_at = datetime.fromisoformat(payload["t"])
        job_id = uuid.UUID(hex=payload["i"])
        order = bool(payload["o"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError) as exc:
        raise InputError("the cursor is not one this server returned", code="invalid_cursor", field="cursor") from exc
    if created_at.tzinfo is None or order != oldest_first:
        raise InputError("the cursor belongs to a listing in the other order", code="invalid_cursor", field="cursor")
    return created_at, job_id


_INCOMING_TABLE = "rf_incoming_jobs"  # a batch's rows on their way in (PostgreSQL, per transaction)


class JobRepository:
    """The farm's database access: jobs, their artifacts, batches and assets.

    Thread-safe: every method checks out its own connection and runs its own transaction. The engine is the
    caller's (make it with `shared.db.engine.make_engine`, dispose of it when done).
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._dialect = engine.dialect.name
        if self._dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported database {self._dialect!r}: use PostgreSQL or SQLite")

    @property
    def engine(self) -> Engine:
        return self._engine

    # ------------------------------------------------------------------------------------------------------------
    # Plumbing

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction on its own connection; connection failures become DatabaseUnavailable.

        `write=False` (reads only): on SQLite a deferred BEGIN (readers need no write lock, see shared.db.engine);
        on PostgreSQL no transaction at all (autocommit), which saves the BEGIN and COMMIT round trips. Nothing is
        lost by that: at PostgreSQL's READ COMMITTED every statement takes its own snapshot in a transaction too.
        """
        try:
            with self._engine.connect() as conn:
                if not write:
                    if self._dialect == "postgresql":
                        conn.execution_options(isolation_level="AUTOCOMMIT")
                    else:
                        conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
                with conn.begin():
                    yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise DatabaseUnavailable(f"the database is unavailable: {exc.orig or exc}") from exc

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self._dialect == "postgresql" else sqlite.insert(table)

    def _now(self, now: datetime | None) -> datetime:
        return self._clock() if now is None else now

    def _update_jobs(
        self,
        conn: Connection,
        target: JobState,
        where: Sequence[sa.ColumnElement[bool]],
        values: Mapping[str, Any],
        *,
        from_states: frozenset[JobState] | None = None,
        now: datetime,
    ) -> list[JobRow]:
        """The one conditional UPDATE behind every state change; returns the rows it changed (maybe none).

        `from_states` narrows the allowed sources; it may never widen them beyond `sources_of(target)`.
        """
        sources = sources_of(target)
        if from_states is not None:
            if not from_states <= sources:
                raise ValueError(f"{sorted(from_states - sources)} -> {target} is not an allowed transition")
            sources = from_states
        if not sources:
            return []
        assignments: dict[str, Any] = {}
        if target.is_terminal:
            assignments["finished_at"] = now
        elif target is JobState.QUEUED:
            # Back in the queue: unpublished (the reconciler publishes it) and owned by no worker.
            assignments.update(dispatched_at=None, worker=None, lease_until=None)
        assignments.update(values)
        assignments.update(state=target.value, seq=jobs.c.seq + 1, updated_at=now)
        statement = (
            sa.update(jobs)
            .where(jobs.c.state.in_([state.value for state in sorted(sources)]), *where)
            .values(assignments)
            .returning(*jobs.columns)
        )
        return [_job_row(row) for row in conn.execute(statement).mappings()]

    def _touch_jobs(
        self, conn: Connection, where: Sequence[sa.ColumnElement[bool]], values: Mapping[str, Any], now: datetime
    ) -> list[JobRow]:
        """A conditional UPDATE that changes no state (lease, dispatch, cancel flag), bumping seq all the same."""
        statement = (
            sa.update(jobs)
            .where(*where)
            .values({**values, "seq": jobs.c.seq + 1, "updated_at": now})
            .returning(*jobs.columns)
        )
        return [_job_row(row) for row in conn.execute(statement).mappings()]

    # ------------------------------------------------------------------------------------------------------------
    # Creating jobs

    def create_or_get(
        self,
        tenant: str,
        task_id: str,
        request: Any,
        request_hash: str,
        *,
        queue: str,
        max_attempts: int,
        priority: int = 0,
        model: str | None = None,
        batch_id: uuid.UUID | None = None,
        total_steps: int | None = None,
        warnings: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[JobRow, bool]:
        """Insert a queued job, or return the tenant's existing job with this `task_id`.

        Returns `(job, created)`. Race-safe: two submissions of one id insert one row (INSERT ... ON CONFLICT DO
        NOTHING, then read). Raises `Conflict` (code `task_id_conflict`) when the existing job's `request_hash`
        differs from `request_hash`, naming both; `InputError` for an over-long task id.
        """
        _check_task_id(task_id)
        now = self._clock()
        values = _new_job_values(
            tenant,
            NewJob(
                task_id=task_id,
                request=request,
                request_hash=request_hash,
                priority=priority,
                queue=queue,
                model=model,
                max_attempts=max_attempts,
                total_steps=total_steps,
                warnings=tuple(warnings),
            ),
            batch_id=batch_id,
            now=now,
        )
        statement = (
            self._insert(jobs)
            .values(values)
            .on_conflict_do_nothing(index_elements=[jobs.c.tenant, jobs.c.task_id])
            .returning(*jobs.columns)
        )
        with self._transaction() as conn:
            inserted = conn.execute(statement).mappings().first()
            if inserted is not None:
                return _job_row(inserted), True
            # On PostgreSQL the conflicting insert waited for the other transaction to commit, and this new
            # statement (READ COMMITTED) sees its row.
            existing = (
                conn.execute(sa.select(jobs).where(jobs.c.tenant == tenant, jobs.c.task_id == task_id)).mappings().one()
            )
        job = _job_row(existing)
        if job.request_hash != request_hash:
            raise Conflict(
                f"task id {task_id!r} is already used by a different request (existing request hash "
                f"{job.request_hash}, this request's hash {request_hash}); choose another task id",
                code="task_id_conflict",
                field="task_id",
            )
        return job, False

    def bulk_create(self, tenant: str, items: Sequence[NewJob], *, batch_id: uuid.UUID | None = None) -> BulkResult:
        """Insert many queued jobs at once (multi-row INSERT ... ON CONFLICT DO NOTHING, one transaction).

        Items whose task id the tenant already has with the same request count as `existing`. Raises `Conflict`
        (code `task_id_conflict`, nothing inserted) when one exists with a different request, and `InputError`
        (code `duplicate_task_id`) when `items` repeats a task id.
        """
        with self._transaction() as conn:
            return self._bulk_insert(conn, tenant, items, batch_id=batch_id, now=self._clock())

    def _bulk_insert(
        self,
        conn: Connection,
        tenant: str,
        items: Sequence[NewJob],
        *,
        batch_id: uuid.UUID | None,
        now: datetime,
    ) -> BulkResult:
        seen: set[str] = set()
        for item in items:
            _check_task_id(item.task_id)
            if item.task_id in seen:
                raise InputError(
                    f"task id {item.task_id!r} appears twice in one batch", code="duplicate_task_id", field="task_id"
                )
            seen.add(item.task_id)
        if not items:
            return BulkResult(created=0, existing=0)
        for item in items:
            _check_max_attempts(item.max_attempts)
        statement = self._bulk_insert_statement(tenant, batch_id=batch_id, now=now)
        if self._dialect == "postgresql":
            self._copy_incoming(conn, items)
            created = {row[0] for row in conn.execute(statement)}
        else:
            created = {row[0] for row in conn.execute(statement, {"rows": self._bulk_payload(items)})}
        missing = [item for item in items if item.task_id not in created]
        if missing:
            wanted = {item.task_id: item.request_hash for item in missing}
            for chunk in _chunks(list(wanted)):
                found = conn.execute(
                    sa.select(jobs.c.task_id, jobs.c.request_hash).where(
                        jobs.c.tenant == tenant, jobs.c.task_id.in_(chunk)
                    )
                )
                for task_id, request_hash in found:
                    if request_hash != wanted[task_id]:
                        raise Conflict(
                            f"task id {task_id!r} is already used by a different request (existing request hash "
                            f"{request_hash}, this request's hash {wanted[task_id]}); no job of the batch was "
                            "created",
                            code="task_id_conflict",
                            field="task_id",
                        )
        return BulkResult(
            created=len(created),
            existing=len(missing),
            created_task_ids=tuple(item.task_id for item in items if item.task_id in created),
        )

    def _bulk_payload(self, items: Sequence[NewJob]) -> str:
        """SQLite: the batch as one JSON array, unpacked by `json_each` in the INSERT."""
        return json.dumps(
            [
                {
                    "id": new_id().hex,  # SQLite stores a Uuid as 32 hex digits
                    "task_id": item.task_id,
                    "priority": item.priority,
                    "queue": item.queue,
                    "model": item.model,
                    "max_attempts": item.max_attempts,
                    "request": item.request,
                    "request_hash": item.request_hash,
                    "total_steps": item.total_steps,
                    "warnings": [dict(warning) for warning in item.warnings],
                }
                for item in items
            ],
            allow_nan=False,  # NaN is not JSON: refuse it here, with a clear message, not in the database
            separators=(",", ":"),
        )

    # The columns of the temporary table a PostgreSQL batch is copied into (its rows' own values).
    _INCOMING_COLUMNS = (
        "id uuid, task_id text, priority int, queue text, model text, max_attempts int, request jsonb, "
        "request_hash text, total_steps int, warnings jsonb"
    )

    def _copy_incoming(self, conn: Connection, items: Sequence[NewJob]) -> None:
        """PostgreSQL: COPY the batch into a temporary table that is dropped at commit.

        COPY streams rows without parsing a statement or a giant parameter: 10,000 jobs take about 0.1 s to load and
        0.3 s in all, where one JSON parameter took about 1 s (most of it the server planning the 10 MB literal).
        """
        conn.execute(sa.text(f"CREATE TEMPORARY TABLE {_INCOMING_TABLE} ({self._INCOMING_COLUMNS}) ON COMMIT DROP"))
        raw = conn.connection.driver_connection  # the psycopg connection, inside this transaction
        assert raw is not None
        with raw.cursor() as cursor, cursor.copy(f"COPY {_INCOMING_TABLE} FROM STDIN") as copy:
            for item in items:
                copy.write_row(
                    (
                        new_id(),
                        item.task_id,
                        item.priority,
                        item.queue,
                        item.model,
                        item.max_attempts,
                        json.dumps(item.request, allow_nan=False, separators=(",", ":")),
                        item.request_hash,
                        item.total_steps,
                        json.dumps([dict(warning) for warning in item.warnings], separators=(",", ":")),
                    )
                )

    def _bulk_insert_statement(self, tenant: str, *, batch_id: uuid.UUID | None, now: datetime) -> ReturningInsert[Any]:
        """`INSERT INTO jobs SELECT ... FROM <the rows of one JSON array> ON CONFLICT DO NOTHING RETURNING task_id`.

        PostgreSQL reads the rows from a temporary table filled by COPY (`_copy_incoming`); SQLite gets the whole
        batch as ONE bind parameter (a JSON array, bound as "rows") unpacked by `json_each`. Either way: one
        INSERT, and no statement with tens of thousands of placeholders, which made a multi-row VALUES insert of
        10,000 jobs take seconds.
        """
        rows = sa.bindparam("rows", type_=sa.Text)
        per_row = ["id", "task_id", "priority", "queue", "model", "max_attempts", "request", "request_hash"]
        per_row += ["total_steps", "warnings"]
        if self._dialect == "postgresql":
            incoming = sa.table(
                _INCOMING_TABLE,
                *(
                    sa.column(name, postgresql.JSONB if name in ("request", "warnings") else jobs.c[name].type)
                    for name in per_row
                ),
            )
            source: Any = incoming
            selected: list[sa.ColumnElement[Any]] = [incoming.c[name] for name in per_row]
        else:
            source = sa.func.json_each(rows).table_valued("value")
            selected = [
                # `->` keeps JSON values as JSON text; json_extract gives SQL scalars for the other columns.
                source.c.value.op("->")(f"$.{name}")
                if name in ("request", "warnings")
                else sa.func.json_extract(source.c.value, f"$.{name}")
                for name in per_row
            ]
        constants: dict[str, sa.ColumnElement[Any]] = {
            "tenant": sa.literal(tenant, jobs.c.tenant.type),
            "state": sa.literal(JobState.QUEUED.value, jobs.c.state.type),
            "attempt": sa.literal(0, jobs.c.attempt.type),
            "batch_id": sa.null() if batch_id is None else sa.literal(batch_id, jobs.c.batch_id.type),
            "created_at": sa.literal(now, jobs.c.created_at.type),
            "updated_at": sa.literal(now, jobs.c.updated_at.type),
            "cancel_requested": sa.literal(False, jobs.c.cancel_requested.type),
            "seq": sa.literal(1, jobs.c.seq.type),
        }
        # `WHERE true`: without a WHERE, SQLite would read the ON of ON CONFLICT as a join constraint.
        select = sa.select(*selected, *constants.values()).select_from(source).where(sa.true())
        return (
            self._insert(jobs)
            .from_select([*per_row, *constants], select)
            .on_conflict_do_nothing(index_elements=[jobs.c.tenant, jobs.c.task_id])
            .returning(jobs.c.task_id)
        )

    # ------------------------------------------------------------------------------------------------------------
    # The outbox

    def mark_dispatched(self, job_id: uuid.UUID, *, now: datetime | None = None) -> bool:
        """Record that the job's message was published. Only while queued (a claimed job keeps its NULL).

        Returns False when the job is no longer queued (claimed already, canceled) or unknown.
        """
        when = self._now(now)
        with self._transaction() as conn:
            rows = self._touch_jobs(
                conn, [jobs.c.id == job_id, jobs.c.state == JobState.QUEUED.value], {"dispatched_at": when}, when
            )
        return bool(rows)

    def undispatched_jobs(
        self, older_than_s: float = 0.0, limit: int = 100, *, now: datetime | None = None
    ) -> list[JobRow]:
        """Queued jobs never published (or re-queued), created at least `older_than_s` seconds ago.

        The age keeps the reconciler from racing the API's own publish right after commit. Highest priority, then
        oldest, first.
        """
        cutoff = self._now(now) - timedelta(seconds=older_than_s)
        statement = (
            sa.select(jobs)
            .where(
                jobs.c.state == JobState.QUEUED.value,
                jobs.c.dispatched_at.is_(None),
                jobs.c.created_at <= cutoff,
            )
            .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)
            .limit(limit)
        )
        with self._transaction(write=False) as conn:
            return [_job_row(row) for row in conn.execute(statement).mappings()]

    def stale_dispatched_jobs(
        self, older_than_s: float, limit: int = 100, *, now: datetime | None = None
    ) -> list[JobRow]:
        """Queued jobs whose message was published more than `older_than_s` seconds ago and never claimed.

        Their message may be lost (for example Redis restarted empty); the reconciler may publish them again (a
        duplicate delivery is harmless: only one claim wins). Oldest dispatch first.
        """
        cutoff = self._now(now) - timedelta(seconds=older_than_s)
        statement = (
            sa.select(jobs)
            .where(jobs.c.state == JobState.QUEUED.value, jobs.c.dispatched_at < cutoff)
            .order_by(jobs.c.dispatched_at, jobs.c.id)
            .limit(limit)
        )
        with self._transaction(write=False) as conn:
            return [_job_row(row) for row in conn.execute(statement).mappings()]

    # ------------------------------------------------------------------------------------------------------------
    # The dispatcher's side (docs/farm-design.md "Queues, dispatch and fairness")

    def outbox_by_queue(self) -> dict[str, OutboxState]:
        """Every Celery queue with queued jobs never published or messages in flight, and which it has.

        The dispatcher reads this once per round (every 50 ms while a backlog waits behind full windows), so it
        must not count the backlog: the queues with unpublished jobs are found by a skip scan of
        `ix_jobs_undispatched` (one index probe per queue), the in-flight messages counted in `ix_jobs_in_flight`
        (at most a window per queue).
        """
        with self._transaction(write=False) as conn:
            waiting: set[str] = set(conn.execute(_WAITING_QUEUES).scalars())
            in_flight: dict[str, int] = {queue: int(count) for queue, count in conn.execute(_IN_FLIGHT_BY_QUEUE)}
        return {
            queue: OutboxState(waiting=queue in waiting, in_flight=in_flight.get(queue, 0))
            for queue in sorted(waiting | set(in_flight))
        }

    def in_flight_counts(self) -> dict[str, int]:
        """Messages in flight per Celery queue: queued jobs whose `dispatched_at` is set (queues with none omitted)."""
        with self._transaction(write=False) as conn:
            return {queue: int(count) for queue, count in conn.execute(_IN_FLIGHT_BY_QUEUE)}

    def fair_dispatch_order(self, queue: str, limit: int) -> sa.Select[Any]:
        """The ids of `queue`'s undispatched queued jobs in dispatch order, at most `limit` of them (a SELECT).

        Order: higher `priority` first; within one priority, round-robin over tenants, each tenant's oldest job
        first (`ROW_NUMBER() OVER (PARTITION BY tenant, priority ORDER BY created_at, id)`), then the oldest.

        The round-robin rank of a job is its row number among the tenant's undispatched jobs PLUS the jobs the
        tenant already has active in this queue at this priority (in the broker or running). Without that, a
        window refilled one slot at a time would always pick the tenant with the oldest waiting job (every
        tenant's next job has row number 1), and a flood submitted first would starve everyone else. With it, a
        free slot goes to the tenant with the fewest active jobs: fair share of the workers, not of the messages.

        Portable: window functions and CTEs work on PostgreSQL and SQLite (3.25+).
        """
        active = (
            sa.select(jobs.c.tenant, jobs.c.priority, sa.func.count().label("active"))
            .where(
                jobs.c.queue == queue,
                sa.or_(
                    jobs.c.state == JobState.RUNNING.value,
                    sa.and_(jobs.c.state == JobState.QUEUED.value, jobs.c.dispatched_at.is_not(None)),
                ),
            )
            .group_by(jobs.c.tenant, jobs.c.priority)
            .cte("active")
        )
        ranked = (
            sa.select(
                jobs.c.id,
                jobs.c.tenant,
                jobs.c.priority,
                jobs.c.created_at,
                sa.func.row_number()
                .over(partition_by=[jobs.c.tenant, jobs.c.priority], order_by=[jobs.c.created_at, jobs.c.id])
                .label("turn"),
            )
            .where(jobs.c.queue == queue, jobs.c.state == JobState.QUEUED.value, jobs.c.dispatched_at.is_(None))
            .cte("ranked")
        )
        turn = ranked.c.turn + sa.func.coalesce(active.c.active, 0)
        return (
            sa.select(ranked.c.id)
            .select_from(
                ranked.outerjoin(
                    active, sa.and_(active.c.tenant == ranked.c.tenant, active.c.priority == ranked.c.priority)
                )
            )
            .order_by(ranked.c.priority.desc(), turn, ranked.c.created_at, ranked.c.id)
            .limit(limit)
        )

    def claim_dispatch(
        self, queue: str, window: int, *, max_jobs: int | None = None, now: datetime | None = None
    ) -> list[JobRow]:
        """Take the right to publish up to `window - in flight` jobs of `queue`: mark them dispatched, return them.

        One transaction: lock the queue's window (a PostgreSQL advisory lock; SQLite's write transactions are
        already serialised by `BEGIN IMMEDIATE`), count the queue's in-flight messages, pick the next jobs in
        `fair_dispatch_order`, and claim them with ONE conditional UPDATE
        (`... WHERE id IN (...) AND dispatched_at IS NULL AND state = 'queued' RETURNING *`). Two schedulers
        dispatching at once therefore never both publish a job, and never overfill the window together.
        `max_jobs` caps the claim (keeps one transaction short). Returns the claimed jobs in dispatch order (maybe
        none). The caller publishes them and hands back the ones it could not publish with `release_dispatch`.
        Raises `ValueError` for a negative `window`.
        """
        if window < 0:
            raise ValueError(f"window must be zero or more, not {window}")
        when = self._now(now)
        with self._transaction() as conn:
            if self._dialect == "postgresql":
                # Per-queue lock, released at commit: the in-flight count below stays true until the claim is in.
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:space, :key)"),
                    {"space": _DISPATCH_LOCK_SPACE, "key": _lock_key(queue)},
                )
            in_flight = int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(jobs)
                    .where(
                        jobs.c.queue == queue,
                        jobs.c.state == JobState.QUEUED.value,
                        jobs.c.dispatched_at.is_not(None),
                    )
                ).scalar_one()
            )
            room = window - in_flight
            if max_jobs is not None:
                room = min(room, max_jobs)
            if room <= 0:
                return []
            order: list[uuid.UUID] = list(conn.execute(self.fair_dispatch_order(queue, room)).scalars())
            if not order:
                return []
            claimed = self._touch_jobs(
                conn,
                [
                    jobs.c.id.in_(order),
                    jobs.c.dispatched_at.is_(None),
                    jobs.c.state == JobState.QUEUED.value,
                ],
                {"dispatched_at": when},
                when,
            )
        # RETURNING gives no order; publish in the fair order chosen above.
        position = {job_id: index for index, job_id in enumerate(order)}
        return sorted(claimed, key=lambda job: position[job.id])

    def release_dispatch(self, jobs_to_release: Sequence[JobRow], *, now: datetime | None = None) -> list[uuid.UUID]:
        """Hand back dispatches that were claimed but not published: `dispatched_at` back to NULL.

        Conditional on each job still being queued with the very `dispatched_at` of the given row, so a release
        never undoes a newer dispatch (or touches a job a worker claimed through an older message). Returns the
        ids released.
        """
        when = self._now(now)
        released: list[uuid.UUID] = []
        with self._transaction() as conn:
            for job in jobs_to_release:
                if job.dispatched_at is None:
                    continue
                rows = self._touch_jobs(
                    conn,
                    [
                        jobs.c.id == job.id,
                        jobs.c.state == JobState.QUEUED.value,
                        jobs.c.dispatched_at == job.dispatched_at,
                    ],
                    {"dispatched_at": None},
                    when,
                )
                released += [row.id for row in rows]
        return released

    def reset_lost_dispatch(
        self, job_ids: Sequence[uuid.UUID], older_than_s: float, *, now: datetime | None = None
    ) -> list[JobRow]:
        """Make queued jobs whose message was lost undispatched again, so the dispatcher publishes them anew.

        Only jobs still queued and dispatched more than `older_than_s` seconds ago change: a job re-dispatched
        (or claimed by a worker) since the caller looked is left alone. Returns the changed jobs.
        """
        when = self._now(now)
        cutoff = when - timedelta(seconds=older_than_s)
        changed: list[JobRow] = []
        with self._transaction() as conn:
            ids = list(job_ids)
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                changed += self._touch_jobs(
                    conn,
                    [
                        jobs.c.id.in_(chunk),
                        jobs.c.state == JobState.QUEUED.value,
                        jobs.c.dispatched_at < cutoff,
                    ],
                    {"dispatched_at": None},
                    when,
                )
        return changed

    def reset_all_dispatch(self, *, now: datetime | None = None) -> int:
        """Make every queued job undispatched (the embedded broker lives in memory and starts empty). Returns how
        many rows changed."""
        when = self._now(now)
        with self._transaction() as conn:
            rows = self._touch_jobs(
                conn,
                [jobs.c.state == JobState.QUEUED.value, jobs.c.dispatched_at.is_not(None)],
                {"dispatched_at": None},
                when,
            )
        return len(rows)

    # ------------------------------------------------------------------------------------------------------------
    # The worker's side

    def claim(self, job_id: uuid.UUID, worker: str, lease_s: float, *, now: datetime | None = None) -> int | None:
        """Take a queued job: running, attempt + 1, owned by `worker` until now + `lease_s` seconds.

        Returns the new attempt number, or None when the job is not queued (a duplicate delivery, canceled,
        already running or finished, or unknown): the caller acks the message and does nothing.
        The caller fails the job when the returned attempt exceeds `max_attempts`.
        """
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, not {lease_s}")
        when = self._now(now)
        with self._transaction() as conn:
            rows = self._update_jobs(
                conn,
                JobState.RUNNING,
                [jobs.c.id == job_id],
                {
                    "attempt": jobs.c.attempt + 1,
                    "worker": worker,
                    "started_at": when,
                    "lease_until": when + timedelta(seconds=lease_s),
                },
                now=when,
            )
        return rows[0].attempt if rows else None

    def renew_lease(
        self, job_id: uuid.UUID, attempt: int, lease_s: float, *, now: datetime | None = None
    ) -> LeaseStatus:
        """Extend this attempt's lease to now + `lease_s` seconds, and learn whether cancel was requested.

        `held` is False when this attempt no longer owns the job (its lease expired and the job was re-queued or
        taken by a newer attempt, or the job finished): the worker must stop and write nothing.
        """
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, not {lease_s}")
        when = self._now(now)
        with self._transaction() as conn:
            rows = self._touch_jobs(
                conn,
                [jobs.c.id == job_id, jobs.c.state == JobState.RUNNING.value, jobs.c.attempt == attempt],
                {"lease_until": when + timedelta(seconds=lease_s)},
                when,
            )
        if not rows:
            return LeaseStatus(held=False, cancel_requested=False)
        return LeaseStatus(held=True, cancel_requested=rows[0].cancel_requested)

    def succeed(
        self,
        job_id: uuid.UUID,
        attempt: int,
        artifact_records: Sequence[ArtifactRecord],
        warnings: Sequence[Mapping[str, Any]] = (),
        *,
        now: datetime | None = None,
    ) -> JobRow:
        """Record the uploaded artifacts and mark the job succeeded, in one transaction fenced by `attempt`.

        `warnings` are appended to the job's warnings (the API's come first). Raises `LeaseLost` when the job is
        not running under `attempt` any more; then nothing at all is written. Raises `ValueError` for an unknown
        artifact kind.
        """
        for record in artifact_records:
            if record.kind not in ARTIFACT_KINDS:
                raise ValueError(f"artifact kind must be one of {ARTIFACT_KINDS}, not {record.kind!r}")
        when = self._now(now)
        with self._transaction() as conn:
            rows = self._update_jobs(
                conn,
                JobState.SUCCEEDED,
                [jobs.c.id == job_id, jobs.c.attempt == attempt],
                {},
                from_states=frozenset({JobState.RUNNING}),
                now=when,
            )
            if not rows:
                current = conn.execute(sa.select(jobs.c.state, jobs.c.attempt).where(jobs.c.id == job_id)).first()
                detail = "the job does not exist" if current is None else f"it is {current[0]} at attempt {current[1]}"
                # Raising inside the transaction rolls it back: no artifact row is written.
                raise LeaseLost(f"attempt {attempt} of job {job_id} no longer owns the job: {detail}")
            job = rows[0]
            if artifact_records:
                conn.execute(
                    sa.insert(artifacts),
                    [
                        {
                            "id": new_id(),
                            "job_id": job_id,
                            "attempt": attempt,
                            "kind": record.kind,
                            "index": record.index,
                            "storage_key": record.storage_key,
                            "sha256": record.sha256,
                            "bytes": record.bytes,
                            "width": record.width,
                            "height": record.height,
                            "seed": record.seed,
                            "infotext": record.infotext,
                            "created_at": when,
                        }
                        for record in artifact_records
                    ],
                )
            if warnings:
                # The row is this transaction's since the UPDATE above (a row lock on PostgreSQL, the write lock
                # on SQLite), so appending to the list read back by that UPDATE cannot lose a concurrent change.
                combined = [*job.warnings, *warnings]
                (row,) = conn.execute(
                    sa.update(jobs).where(jobs.c.id == job_id).values(warnings=combined).returning(*jobs.columns)
                ).mappings()
                job = _job_row(row)
        return job

    def fail(
        self,
        job_id: uuid.UUID,
        attempt: int | None,
        error: ErrorLike,
        *,
        now: datetime | None = None,
    ) -> JobRow | None:
        """Mark the job failed with `error` ({type, code, message, field?}).

        With `attempt` (a worker): only while running under that attempt. Without (the API or the reconciler): from
        queued or running. Returns the failed job, or None when the fence or the state did not match (nothing
        changed).
        """
        when = self._now(now)
        where = [jobs.c.id == job_id]
        from_states = None
        if attempt is not None:
            # A re-queued job keeps its attempt number until the next claim, so the attempt alone does not prove
            # ownership: the job must also still be running.
            where.append(jobs.c.attempt == attempt)
            from_states = frozenset({JobState.RUNNING})
        with self._transaction() as conn:
            rows = self._update_jobs(
                conn, JobState.FAILED, where, {"error": _error_dict(error)}, from_states=from_states, now=when
            )
        return rows[0] if rows else None

    def cancel_running(self, job_id: uuid.UUID, attempt: int, *, now: datetime | None = None) -> JobRow | None:
        """The worker honours a cancel request: running (under `attempt`) with cancel requested -> canceled.

        Returns the canceled job, or None when the fence, the state or the flag did not match.
        """
        when = self._now(now)
        with self._transaction() as conn:
            rows = self._update_jobs(
                conn,
                JobState.CANCELED,
                [jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.cancel_requested],
                {},
                from_states=frozenset({JobState.RUNNING}),
                now=when,
            )
        return rows[0] if rows else None

    # ------------------------------------------------------------------------------------------------------------
    # The API's side

    def request_cancel(self, tenant: str, task_id: str, *, now: datetime | None = None) -> JobRow:
        """Cancel the tenant's job `task_id`, in whatever state it is (api.md "Cancel").

        queued -> canceled at once; running -> `cancel_requested` set (the worker stops at its next step and
        records canceled); finished -> unchanged. Returns the job as it is afterwards. Raises `NotFound` for an
        unknown task id or another tenant's.
        """
        key = [jobs.c.tenant == tenant, jobs.c.task_id == task_id]
        # The job may move between the statements below (claimed, re-queued); each is a conditional UPDATE, so
        # retrying the short sequence converges. Three rounds cover any interleaving the state machine allows.
        for _ in range(3):
            when = self._now(now)
            with self._transaction() as conn:
                rows = self._update_jobs(
                    conn,
                    JobState.CANCELED,
                    key,
                    {"cancel_requested": True},
                    from_states=frozenset({JobState.QUEUED}),
                    now=when,
                )
                if rows:
                    return rows[0]
                rows = self._touch_jobs(
                    conn,
                    [*key, jobs.c.state == JobState.RUNNING.value, sa.not_(jobs.c.cancel_requested)],
                    {"cancel_requested": True},
                    when,
                )
                if rows:
                    return rows[0]
                current = conn.execute(sa.select(jobs).where(*key)).mappings().first()
            if current is None:
                raise NotFound(f"no job with task id {task_id!r}", code="job_not_found")
            job = _job_row(current)
            if job.is_terminal or (job.state is JobState.RUNNING and job.cancel_requested):
                return job
        return job

    # ------------------------------------------------------------------------------------------------------------
    # The reconciler's side

    def requeue_expired(self, now: datetime | None = None) -> list[JobRow]:
        """Deal with running jobs whose lease expired before `now` and that have attempts left.

        Those with a cancel request become canceled (the user asked; running them again would be wrong), whatever
        their attempts; the others go back to queued, unpublished (`dispatched_at` NULL) so the reconciler publishes
        them, with no worker. Returns the changed jobs (look at `state` to tell which is which).
        """
        when = self._now(now)
        expired = [jobs.c.lease_until < when]
        with self._transaction() as conn:
            canceled = self._update_jobs(
                conn,
                JobState.CANCELED,
                [*expired, jobs.c.cancel_requested],
                {},
                from_states=frozenset({JobState.RUNNING}),
                now=when,
            )
            requeued = self._update_jobs(
                conn,
                JobState.QUEUED,
                [*expired, sa.not_(jobs.c.cancel_requested), jobs.c.attempt < jobs.c.max_attempts],
                {},
                now=when,
            )
        return canceled + requeued

    def fail_exhausted(self, now: datetime | None = None, *, limit: int = 1000) -> list[JobRow]:
        """Fail running jobs whose lease expired before `now` on their last allowed attempt.

        Error code `attempts_exhausted`, with a message naming the attempts and the last worker: a job that
        takes down its worker every time (a poison job) ends here instead of looping. Returns the failed jobs.
        """
        when = self._now(now)
        expired = [
            jobs.c.state == JobState.RUNNING.value,
            jobs.c.lease_until < when,
            jobs.c.attempt >= jobs.c.max_attempts,
            sa.not_(jobs.c.cancel_requested),
        ]
        failed: list[JobRow] = []
        with self._transaction() as conn:
            candidates = conn.execute(
                sa.select(jobs.c.id, jobs.c.attempt, jobs.c.max_attempts, jobs.c.worker).where(*expired).limit(limit)
            ).all()
            for job_id, attempt, max_attempts, worker in candidates:
                error = JobError(
                    type="permanent",
                    code="attempts_exhausted",
                    message=(
                        f"the job was started {attempt} times (the limit is {max_attempts}) and each time its "
                        f"worker stopped renewing its lease (last worker: {worker or 'unknown'}); the worker may "
                        "have crashed, been killed or lost its connection, possibly because of this job"
                    ),
                )
                # Fenced by the attempt seen, so a renewal that lands in between keeps the job alive.
                failed += self._update_jobs(
                    conn,
                    JobState.FAILED,
                    [*expired[1:], jobs.c.id == job_id, jobs.c.attempt == attempt],
                    {"error": error.to_dict()},
                    from_states=frozenset({JobState.RUNNING}),
                    now=when,
                )
        return failed

    # ------------------------------------------------------------------------------------------------------------
    # The generic transition

    def transition(
        self,
        job_id: uuid.UUID,
        target: JobState,
        *,
        expected_attempt: int | None = None,
        from_states: frozenset[JobState] | None = None,
        now: datetime | None = None,
        **values: Any,
    ) -> bool:
        """Move the job to `target` if the state machine allows it from its current state; set `values` too.

        One UPDATE `WHERE id = :id AND state IN (sources_of(target)) [AND attempt = :expected_attempt]`.
        `from_states` narrows the sources (it may not widen them). Moving to a terminal state sets `finished_at`;
        moving to queued clears `dispatched_at`, `worker` and `lease_until`. Returns True when the row changed.
        Raises `ValueError` for an unknown or protected column in `values`.
        """
        for name in values:
            if name not in jobs.columns or name in _PROTECTED_COLUMNS:
                raise ValueError(f"transition cannot set column {name!r}")
        if "error" in values and values["error"] is not None:
            values["error"] = _error_dict(values["error"])
        where = [jobs.c.id == job_id]
        if expected_attempt is not None:
            where.append(jobs.c.attempt == expected_attempt)
        when = self._now(now)
        with self._transaction() as conn:
            rows = self._update_jobs(conn, target, where, values, from_states=from_states, now=when)
        return bool(rows)

    # ------------------------------------------------------------------------------------------------------------
    # Reads

    def get(self, tenant: str, task_id: str) -> JobRow:
        """The tenant's job `task_id`. Raises `NotFound` for an unknown id and for another tenant's job alike."""
        with self._transaction(write=False) as conn:
            row = (
                conn.execute(sa.select(jobs).where(jobs.c.tenant == tenant, jobs.c.task_id == task_id))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"no job with task id {task_id!r}", code="job_not_found")
        return _job_row(row)

    def get_by_id(self, job_id: uuid.UUID) -> JobRow:
        """The job with database key `job_id` (the worker's view; no tenant check). Raises `NotFound`."""
        with self._transaction(write=False) as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise NotFound(f"no job with id {job_id}", code="job_not_found")
        return _job_row(row)

    def artifacts_of(self, job_id: uuid.UUID) -> list[ArtifactRow]:
        """The job's artifacts, ordered by kind (result, overlay, mask) then index."""
        kind_order = sa.case({kind: position for position, kind in enumerate(ARTIFACT_KINDS)}, value=artifacts.c.kind)
        statement = sa.select(artifacts).where(artifacts.c.job_id == job_id).order_by(kind_order, artifacts.c.index)
        with self._transaction(write=False) as conn:
            return [_artifact_row(row) for row in conn.execute(statement).mappings()]

    def list_jobs(
        self,
        tenant: str,
        *,
        state: JobState | None = None,
        batch_id: uuid.UUID | None = None,
        cursor: str | None = None,
        limit: int = 50,
        oldest_first: bool = False,
    ) -> tuple[list[JobRow], str | None]:
        """One page of the tenant's jobs, newest first (or oldest first), optionally of one state and/or batch.

        Returns `(rows, next_cursor)`; `next_cursor` is None on the last page. Keyset pagination on
        `(created_at, id)`: a job is listed exactly once even while new jobs arrive. Raises `InputError` for a
        cursor this server did not make or a `limit` outside 1..1000.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InputError(f"limit must be between 1 and {MAX_LIST_LIMIT}", code="invalid_limit", field="limit")
        key = sa.tuple_(jobs.c.created_at, jobs.c.id)
        statement = sa.select(jobs).where(jobs.c.tenant == tenant)
        if state is not None:
            statement = statement.where(jobs.c.state == JobState(state).value)
        if batch_id is not None:
            statement = statement.where(jobs.c.batch_id == batch_id)
        if cursor is not None:
            created_at, job_id = _decode_cursor(cursor, oldest_first)
            after = sa.tuple_(sa.literal(created_at, jobs.c.created_at.type), sa.literal(job_id, jobs.c.id.type))
            statement = statement.where(key > after if oldest_first else key < after)
        if oldest_first:
            statement = statement.order_by(jobs.c.created_at, jobs.c.id)
        else:
            statement = statement.order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        with self._transaction(write=False) as conn:
            rows = [_job_row(row) for row in conn.execute(statement.limit(limit + 1)).mappings()]
        if len(rows) <= limit:
            return rows, None
        page = rows[:limit]
        return page, _encode_cursor(page[-1], oldest_first)

    def queue_position(self, job: JobRow, *, cap: int | None = None) -> int | None:
        """How many queued jobs of the same Celery queue run before `job` (0: it is next); None unless queued.

        Order of the queue: higher priority first, then older (`created_at`, then id). Jobs of other queues do not
        count: other workers serve them. With `cap`, counting stops there: the answer is `min(position, cap)`, and
        the cost is bounded by the cap instead of growing with the backlog (two range scans of
        `ix_jobs_queued_order`, each stopped after `cap` entries).
        """
        if job.state is not JobState.QUEUED:
            return None
        parameters: dict[str, Any] = {
            "queue": job.queue,
            "priority": job.priority,
            "created_at": job.created_at,
            "id": job.id,
        }
        if cap is not None:
            parameters["cap"] = cap
        with self._transaction(write=False) as conn:
            position = int(conn.execute(_queue_position_statement(cap is not None), parameters).scalar_one())
        return position if cap is None else min(position, cap)

    def batch_counts(self, batch_id: uuid.UUID) -> dict[JobState, int]:
        """The batch's jobs counted by state (every state present, zero included)."""
        return self._counts_by_state(jobs.c.batch_id == batch_id)

    def counts_by_state(self) -> dict[JobState, int]:
        """Every job counted by state (for metrics)."""
        return self._counts_by_state(sa.true())

    def _counts_by_state(self, where: sa.ColumnElement[bool]) -> dict[JobState, int]:
        statement = sa.select(jobs.c.state, sa.func.count()).where(where).group_by(jobs.c.state)
        counts = dict.fromkeys(JobState, 0)
        with self._transaction(write=False) as conn:
            for state, count in conn.execute(statement):
                counts[JobState(state)] = int(count)
        return counts

    def queue_depths(self) -> dict[str, int]:
        """Queued jobs per Celery queue (what an autoscaler scales workers on)."""
        statement = (
            sa.select(jobs.c.queue, sa.func.count()).where(jobs.c.state == JobState.QUEUED.value).group_by(jobs.c.queue)
        )
        with self._transaction(write=False) as conn:
            return {queue: int(count) for queue, count in conn.execute(statement)}

    def queue_depth(self, queue: str, *, cap: int | None = None) -> int:
        """The queued jobs of one Celery queue, counted up to `cap` when given (a scan of `ix_jobs_queued_order`)."""
        statement = sa.select(_count_up_to([jobs.c.state == JobState.QUEUED.value, jobs.c.queue == queue], cap))
        with self._transaction(write=False) as conn:
            return int(conn.execute(statement).scalar_one())

    def queued_count(self, tenant: str, *, cap: int | None = None) -> int:
        """The tenant's queued jobs (for the per-tenant limit on queued jobs), counted up to `cap` when given
        (`min(count, cap)`, at a cost bounded by the cap: a scan of `ix_jobs_queued_tenant`)."""
        statement = sa.select(_count_up_to([jobs.c.tenant == tenant, jobs.c.state == JobState.QUEUED.value], cap))
        with self._transaction(write=False) as conn:
            return int(conn.execute(statement).scalar_one())

    # ------------------------------------------------------------------------------------------------------------
    # Batches

    def create_batch(
        self,
        tenant: str,
        items: Sequence[NewJob],
        *,
        mode: str,
        manifest: Any,
        batch_id: uuid.UUID | None = None,
    ) -> tuple[BatchRow, BulkResult]:
        """Insert a batch and its child jobs in one transaction (a failure leaves neither).

        `requested` is `len(items)`. Raises what `bulk_create` raises, and `ValueError` for an unknown `mode`.
        """
        if mode not in BATCH_MODES:
            raise ValueError(f"batch mode must be one of {BATCH_MODES}, not {mode!r}")
        now = self._clock()
        values = {
            "id": batch_id or new_id(),
            "tenant": tenant,
            "created_at": now,
            "requested": len(items),
            "mode": mode,
            "manifest": manifest,
            "canceled_at": None,
        }
        with self._transaction() as conn:
            row = conn.execute(sa.insert(batches).values(values).returning(*batches.columns)).mappings().one()
            result = self._bulk_insert(conn, tenant, items, batch_id=row["id"], now=now)
        return _batch_row(row), result

    def get_batch(self, tenant: str, batch_id: uuid.UUID) -> BatchRow:
        """The tenant's batch. Raises `NotFound` for an unknown batch and another tenant's alike."""
        with self._transaction(write=False) as conn:
            row = (
                conn.execute(sa.select(batches).where(batches.c.id == batch_id, batches.c.tenant == tenant))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"no batch with id {batch_id}", code="batch_not_found")
        return _batch_row(row)

    def cancel_batch(self, tenant: str, batch_id: uuid.UUID, *, now: datetime | None = None) -> BatchRow:
        """Cancel what has not finished: queued jobs at once, running ones by request. Raises `NotFound`."""
        when = self._now(now)
        in_batch = [jobs.c.batch_id == batch_id, jobs.c.tenant == tenant]
        with self._transaction() as conn:
            row = (
                conn.execute(
                    sa.update(batches)
                    .where(batches.c.id == batch_id, batches.c.tenant == tenant)
                    .values(canceled_at=sa.func.coalesce(batches.c.canceled_at, when))
                    .returning(*batches.columns)
                )
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"no batch with id {batch_id}", code="batch_not_found")
            self._update_jobs(
                conn,
                JobState.CANCELED,
                in_batch,
                {"cancel_requested": True},
                from_states=frozenset({JobState.QUEUED}),
                now=when,
            )
            self._touch_jobs(
                conn,
                [*in_batch, jobs.c.state == JobState.RUNNING.value, sa.not_(jobs.c.cancel_requested)],
                {"cancel_requested": True},
                when,
            )
        return _batch_row(row)

    # ------------------------------------------------------------------------------------------------------------
    # Assets

    def add_asset(
        self,
        tenant: str,
        sha256: str,
        *,
        storage_key: str,
        size_bytes: int,
        mime: str,
        width: int,
        height: int,
    ) -> tuple[AssetRow, bool]:
        """Record an uploaded input image; returns `(asset, created)`. Uploading the same bytes again is a no-op."""
        values = {
            "tenant": tenant,
            "sha256": sha256,
            "storage_key": storage_key,
            "bytes": size_bytes,
            "mime": mime,
            "width": width,
            "height": height,
            "created_at": self._clock(),
        }
        statement = (
            self._insert(assets)
            .values(values)
            .on_conflict_do_nothing(index_elements=[assets.c.tenant, assets.c.sha256])
            .returning(*assets.columns)
        )
        with self._transaction() as conn:
            row = conn.execute(statement).mappings().first()
            if row is not None:
                return _asset_row(row), True
            existing = (
                conn.execute(sa.select(assets).where(assets.c.tenant == tenant, assets.c.sha256 == sha256))
                .mappings()
                .one()
            )
        return _asset_row(existing), False

    def get_asset(self, tenant: str, sha256: str) -> AssetRow:
        """The tenant's asset with this sha256. Raises `NotFound` for an unknown one and another tenant's alike."""
        with self._transaction(write=False) as conn:
            row = (
                conn.execute(sa.select(assets).where(assets.c.tenant == tenant, assets.c.sha256 == sha256))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"no asset with sha256 {sha256}", code="asset_not_found")
        return _asset_row(row)

    # ------------------------------------------------------------------------------------------------------------
    # Batches: create-or-get and timing (for POST / GET /v1/batches)

    def create_batch_if_absent(
        self,
        tenant: str,
        items: Sequence[NewJob],
        *,
        mode: str,
        manifest: Any,
        batch_id: uuid.UUID,
    ) -> tuple[BatchRow, BulkResult | None]:
        """Insert the batch `batch_id` and its child jobs in one transaction, unless a batch with that id exists.

        Returns `(batch, result)`; `result` is None when the batch already existed (nothing was inserted: the caller
        compares the stored manifest to tell a retry from a conflict). The existing row may be another tenant's: the
        caller must check `batch.tenant`. Race-safe: two requests with one new id insert one batch (INSERT ... ON
        CONFLICT DO NOTHING). Raises what `bulk_create` raises, and `ValueError` for an unknown `mode`.
        """
        if mode not in BATCH_MODES:
            raise ValueError(f"batch mode must be one of {BATCH_MODES}, not {mode!r}")
        now = self._clock()
        values = {
            "id": batch_id,
            "tenant": tenant,
            "created_at": now,
            "requested": len(items),
            "mode": mode,
            "manifest": manifest,
            "canceled_at": None,
        }
        statement = (
            self._insert(batches)
            .values(values)
            .on_conflict_do_nothing(index_elements=[batches.c.id])
            .returning(*batches.columns)
        )
        with self._transaction() as conn:
            row = conn.execute(statement).mappings().first()
            if row is not None:
                result = self._bulk_insert(conn, tenant, items, batch_id=batch_id, now=now)
                return _batch_row(row), result
            existing = conn.execute(sa.select(batches).where(batches.c.id == batch_id)).mappings().one()
        return _batch_row(existing), None

    def batch_timing(self, batch_id: uuid.UUID) -> tuple[datetime | None, datetime | None]:
        """`(first started_at, last finished_at)` over the batch's jobs (None when no job started / finished yet)."""
        statement = sa.select(sa.func.min(jobs.c.started_at), sa.func.max(jobs.c.finished_at)).where(
            jobs.c.batch_id == batch_id
        )
        with self._transaction(write=False) as conn:
            first_started, last_finished = conn.execute(statement).one()
        return first_started, last_finished


def _check_task_id(task_id: str) -> None:
    if not is_valid_task_id(task_id):
        raise InputError(f"task id {task_id_problem()}", code="invalid_task_id", field="task_id")


def _check_max_attempts(max_attempts: int) -> None:
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")


def _new_job_values(tenant: str, item: NewJob, *, batch_id: uuid.UUID | None, now: datetime) -> dict[str, Any]:
    _check_max_attempts(item.max_attempts)
    return {
        "id": new_id(),
        "tenant": tenant,
        "task_id": item.task_id,
        "state": JobState.QUEUED.value,
        "attempt": 0,
        "max_attempts": item.max_attempts,
        "lease_until": None,
        "worker": None,
        "priority": item.priority,
        "queue": item.queue,
        "model": item.model,
        "request": item.request,
        "request_hash": item.request_hash,
        "batch_id": batch_id,
        "created_at": now,
        "dispatched_at": None,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
        "cancel_requested": False,
        "error": None,
        "warnings": [dict(warning) for warning in item.warnings],
        "seq": 1,
        "total_steps": item.total_steps,
    }
