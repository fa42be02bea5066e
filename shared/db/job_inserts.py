"""Inserting queued jobs: one (`new_job_values`, for `Jobs.create_or_get`) or a whole batch in ONE statement
(`insert_jobs`, for `Batches.create_if_absent`).

The jobs table is the outbox: new jobs have `dispatched_at` NULL until their message is published.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import ReturningInsert

from shared.db.ids import new_id
from shared.db.job_updates import chunks
from shared.db.rows import BulkResult, NewJob
from shared.db.tables import jobs
from shared.db.transaction import Transactions
from shared.errors import Conflict, InputError
from shared.job.ids import is_valid_task_id, task_id_problem
from shared.states import JobState

_INCOMING_TABLE = "rf_incoming_jobs"  # a batch's rows on their way in (PostgreSQL, per transaction)
# The columns of the temporary table a PostgreSQL batch is copied into (its rows' own values).
_INCOMING_COLUMNS = (
    "id uuid, task_id text, priority int, queue text, model text, max_attempts int, request jsonb, "
    "request_hash text, total_steps int, warnings jsonb"
)


def task_id_conflict(task_id: str, existing_hash: str, new_hash: str, *, consequence: str) -> Conflict:
    """The error for a task id the tenant already used with a different request."""
    return Conflict(
        f"task id {task_id!r} is already used by a different request (existing request hash "
        f"{existing_hash}, this request's hash {new_hash}); {consequence}",
        code="task_id_conflict",
        field="task_id",
    )


def check_task_id(task_id: str) -> None:
    if not is_valid_task_id(task_id):
        raise InputError(f"task id {task_id_problem()}", code="invalid_task_id", field="task_id")


def _check_max_attempts(max_attempts: int) -> None:
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")


def new_job_values(tenant: str, item: NewJob, *, batch_id: uuid.UUID | None, now: datetime) -> dict[str, Any]:
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


def insert_jobs(
    tx: Transactions,
    conn: Connection,
    tenant: str,
    items: Sequence[NewJob],
    *,
    batch_id: uuid.UUID | None,
    now: datetime,
) -> BulkResult:
    """Insert many queued jobs in ONE statement (INSERT ... SELECT ... ON CONFLICT DO NOTHING), in `conn`'s
    transaction.

    Items whose task id the tenant already has with the same request count as `existing`. Raises `Conflict`
    (code `task_id_conflict`; the caller's transaction then inserts nothing) when one exists with a different
    request, and `InputError` (code `duplicate_task_id`) when `items` repeats a task id.
    """
    seen: set[str] = set()
    for item in items:
        check_task_id(item.task_id)
        if item.task_id in seen:
            raise InputError(
                f"task id {item.task_id!r} appears twice in one batch", code="duplicate_task_id", field="task_id"
            )
        seen.add(item.task_id)
    if not items:
        return BulkResult(created=0, existing=0)
    for item in items:
        _check_max_attempts(item.max_attempts)
    statement = _insert_statement(tx, tenant, batch_id=batch_id, now=now)
    if tx.dialect == "postgresql":
        _copy_incoming(conn, items)
        created = {row[0] for row in conn.execute(statement)}
    else:
        created = {row[0] for row in conn.execute(statement, {"rows": _json_payload(items)})}
    missing = [item for item in items if item.task_id not in created]
    if missing:
        wanted = {item.task_id: item.request_hash for item in missing}
        for chunk in chunks(list(wanted)):
            found = conn.execute(
                sa.select(jobs.c.task_id, jobs.c.request_hash).where(jobs.c.tenant == tenant, jobs.c.task_id.in_(chunk))
            )
            for task_id, request_hash in found:
                if request_hash != wanted[task_id]:
                    raise task_id_conflict(
                        task_id, request_hash, wanted[task_id], consequence="no job of the batch was created"
                    )
    return BulkResult(
        created=len(created),
        existing=len(missing),
        created_task_ids=tuple(item.task_id for item in items if item.task_id in created),
    )


def _json_payload(items: Sequence[NewJob]) -> str:
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


def _copy_incoming(conn: Connection, items: Sequence[NewJob]) -> None:
    """PostgreSQL: COPY the batch into a temporary table that is dropped at commit.

    COPY streams rows without parsing a statement or a giant parameter: 10,000 jobs take about 0.1 s to load and
    0.3 s in all, where one JSON parameter took about 1 s (most of it the server planning the 10 MB literal).
    """
    conn.execute(sa.text(f"CREATE TEMPORARY TABLE {_INCOMING_TABLE} ({_INCOMING_COLUMNS}) ON COMMIT DROP"))
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


def _insert_statement(
    tx: Transactions, tenant: str, *, batch_id: uuid.UUID | None, now: datetime
) -> ReturningInsert[Any]:
    """`INSERT INTO jobs SELECT ... FROM <the rows of one JSON array> ON CONFLICT DO NOTHING RETURNING task_id`.

    PostgreSQL reads the rows from a temporary table filled by COPY (`_copy_incoming`); SQLite gets the whole
    batch as ONE bind parameter (a JSON array, bound as "rows") unpacked by `json_each`. Either way: one
    INSERT, and no statement with tens of thousands of placeholders, which made a multi-row VALUES insert of
    10,000 jobs take seconds.
    """
    rows = sa.bindparam("rows", type_=sa.Text)
    per_row = ["id", "task_id", "priority", "queue", "model", "max_attempts", "request", "request_hash"]
    per_row += ["total_steps", "warnings"]
    if tx.dialect == "postgresql":
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
        tx.insert(jobs)
        .from_select([*per_row, *constants], select)
        .on_conflict_do_nothing(index_elements=[jobs.c.tenant, jobs.c.task_id])
        .returning(jobs.c.task_id)
    )
