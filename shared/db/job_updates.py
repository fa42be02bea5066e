"""The two conditional UPDATEs every change of a job row goes through (architecture.md "States").

- Every state change is ONE conditional UPDATE, `WHERE id = :id AND state IN (sources_of(target)) [AND attempt = :n]
  ... RETURNING *`: whoever loses a race sees "no row" and nothing was changed. Never read, decide, then write.
- Every change of a row bumps `seq` (so clients can drop stale snapshots) and `updated_at`.
- A worker's writes are fenced by its attempt number: after a lease expired and another attempt claimed the job, the
  old worker's `succeed`, `fail` and `renew_lease` match no row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shared.db.event_writes import lock_event_writers, record_job_events
from shared.db.rows import JobError, JobRow
from shared.db.tables import jobs
from shared.states import JobState, sources_of

ErrorLike = JobError | Mapping[str, Any]

IN_CHUNK = 1000  # ids per IN (...) list, well below PostgreSQL's 65,535 bind parameters per statement

_Item = TypeVar("_Item")


def chunks(items: Sequence[_Item], size: int = IN_CHUNK) -> Iterator[Sequence[_Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def error_dict(error: ErrorLike) -> dict[str, Any]:
    return error.to_dict() if isinstance(error, JobError) else JobError.from_dict(error).to_dict()


def update_jobs(
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
    if target.is_terminal:
        lock_event_writers(conn)  # before the rows' locks: one lock order for every transition
    changed = [JobRow.from_mapping(row) for row in conn.execute(statement).mappings()]
    if target.is_terminal:
        # The transition's events (and webhook deliveries) commit with it, or not at all (shared.db.event_writes).
        record_job_events(conn, changed, now)
    return changed


def touch_jobs(
    conn: Connection, where: Sequence[sa.ColumnElement[bool]], values: Mapping[str, Any], now: datetime
) -> list[JobRow]:
    """A conditional UPDATE that changes no state (lease, dispatch, cancel flag), bumping seq all the same."""
    statement = (
        sa.update(jobs)
        .where(*where)
        .values({**values, "seq": jobs.c.seq + 1, "updated_at": now})
        .returning(*jobs.columns)
    )
    return [JobRow.from_mapping(row) for row in conn.execute(statement).mappings()]


def cancel_jobs(conn: Connection, where: Sequence[sa.ColumnElement[bool]], now: datetime) -> list[JobRow]:
    """Cancel the matching jobs that have not finished (api.md "Cancel"): queued ones at once (canceled), running
    ones by request (`cancel_requested` set; the worker stops at its next step). Returns the rows changed."""
    canceled = update_jobs(
        conn, JobState.CANCELED, where, {"cancel_requested": True}, from_states=frozenset({JobState.QUEUED}), now=now
    )
    requested = touch_jobs(
        conn,
        [*where, jobs.c.state == JobState.RUNNING.value, sa.not_(jobs.c.cancel_requested)],
        {"cancel_requested": True},
        now,
    )
    return canceled + requested
