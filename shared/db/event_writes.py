"""Writing job and batch events, inside the transaction of the change that causes them (docs/api.md "Events and
webhooks", docs/reliability.md "Who moves each job on").

Every terminal transition goes through `shared.db.job_updates.update_jobs`, which calls `record_job_events` with the
rows its conditional UPDATE changed, on the same connection: the event and its webhook deliveries commit or roll
back with the state change. A transition happens once (the UPDATE of a losing or retried commit matches no row), so
its event is written once, whatever retries and fencing happen around it. A batch's `batch.finished` is written by
the transaction that finishes its last child; its `dedup_key` makes a second one impossible.

On PostgreSQL the writers take one transaction-level advisory lock (`lock_event_writers`), before the UPDATE that
locks the job rows, so the lock order is always this lock, then rows (no deadlock with another transition). It makes
the feed's cursor (`position`, from a sequence) grow in commit order, so a reader that saw position N never later
finds a new event below N; and it makes the "last child finished?" count of a batch see every other child's
committed state (two children finishing at once are counted one after the other). SQLite's write transactions are
serialised already.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from shared.db.rows import JobRow
from shared.db.tables import events, jobs, tenant_webhooks, webhook_deliveries
from shared.states import JobState

# Advisory lock namespace of the event writers ("rf" + "ev").
_EVENT_LOCK_SPACE = 0x72666576
EVENT_TYPES: dict[JobState, str] = {
    JobState.SUCCEEDED: "job.succeeded",
    JobState.FAILED: "job.failed",
    JobState.CANCELED: "job.canceled",
}
BATCH_FINISHED = "batch.finished"


def new_event_id() -> str:
    """A unique event id, the `webhook-id` of its deliveries: `evt_` and 32 hex digits."""
    return f"evt_{uuid.uuid4().hex}"


def _timestamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def job_event_body(event_type: str, event_id: str, row: JobRow, when: datetime) -> dict[str, Any]:
    """The body of a job's event: what changed, not the whole snapshot (`GET /v1/jobs/{task_id}` has that)."""
    return {
        "id": event_id,
        "type": event_type,
        "timestamp": _timestamp(when),
        "data": {
            "task_id": row.task_id,
            "state": row.state.value,
            "attempt": row.attempt,
            "batch_id": str(row.batch_id) if row.batch_id is not None else None,
            "error": row.error.to_dict() if row.error is not None else None,
        },
    }


def lock_event_writers(conn: Connection) -> None:
    """Take the event writers' lock until the transaction ends (PostgreSQL; nothing on SQLite). Call it before the
    terminal UPDATE whose rows `record_job_events` gets."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:space, 0)"), {"space": _EVENT_LOCK_SPACE})


def record_job_events(conn: Connection, rows: Sequence[JobRow], now: datetime) -> None:
    """Write the events of the jobs in `rows` that have just become terminal, their webhook deliveries, and the
    `batch.finished` of every batch whose last child this was. Call it on the connection of the change, which
    holds `lock_event_writers`."""
    finished = [row for row in rows if row.state in EVENT_TYPES]
    if not finished:
        return
    default_urls = _default_urls(conn, {row.tenant for row in finished})
    for row in finished:
        event_id = new_event_id()
        event_type = EVENT_TYPES[row.state]
        body = job_event_body(event_type, event_id, row, now)
        _insert_event(conn, row.tenant, event_type, event_id, f"{event_type}:{row.id}", body, row.id, row.batch_id, now)
        request_url = row.request.get("webhook_url") if isinstance(row.request, dict) else None
        url = request_url or default_urls.get(row.tenant)
        if url:
            add_delivery(conn, event_id, row.tenant, row.id, url, now)
    for tenant, batch_id in sorted({(row.tenant, row.batch_id) for row in finished if row.batch_id is not None}):
        _record_batch_finished(conn, tenant, batch_id, default_urls.get(tenant), now)


def add_delivery(
    conn: Connection, event_id: str, tenant: str, job_id: uuid.UUID | None, url: str, now: datetime
) -> uuid.UUID:
    """A pending webhook delivery of `event_id` to `url`, due now. Returns its id."""
    delivery_id = uuid.uuid4()
    conn.execute(
        sa.insert(webhook_deliveries).values(
            id=delivery_id,
            event_id=event_id,
            tenant=tenant,
            job_id=job_id,
            url=url,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            claimed_until=None,
            created_at=now,
            finished_at=None,
            log=[],
        )
    )
    return delivery_id


def _default_urls(conn: Connection, tenants: set[str]) -> dict[str, str]:
    statement = sa.select(tenant_webhooks.c.tenant, tenant_webhooks.c.default_url).where(
        tenant_webhooks.c.tenant.in_(sorted(tenants)), tenant_webhooks.c.default_url.is_not(None)
    )
    return {tenant: url for tenant, url in conn.execute(statement)}


def _insert_event(
    conn: Connection,
    tenant: str,
    event_type: str,
    event_id: str,
    dedup_key: str,
    body: dict[str, Any],
    job_id: uuid.UUID | None,
    batch_id: uuid.UUID | None,
    now: datetime,
) -> bool:
    """Insert one event unless one with `dedup_key` exists; whether it was inserted."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(events)
        .values(
            event_id=event_id,
            tenant=tenant,
            type=event_type,
            job_id=job_id,
            batch_id=batch_id,
            dedup_key=dedup_key,
            created_at=now,
            body=body,
        )
        .on_conflict_do_nothing(index_elements=[events.c.dedup_key])
        .returning(events.c.position)
    )
    return conn.execute(statement).first() is not None


def batch_finished_key(tenant: str, batch_id: uuid.UUID) -> str:
    """The dedup key of a batch's one `batch.finished` event (the retention purge deletes it with the batch, so a
    batch id used again gets its own)."""
    return f"{BATCH_FINISHED}:{tenant}:{batch_id}"


def _record_batch_finished(
    conn: Connection, tenant: str, batch_id: uuid.UUID, default_url: str | None, now: datetime
) -> None:
    """`batch.finished` when no child of the batch is queued or running any more (read after this transaction's
    own changes, and under the writers' lock on PostgreSQL)."""
    in_batch = [jobs.c.tenant == tenant, jobs.c.batch_id == batch_id]
    by_state = conn.execute(sa.select(jobs.c.state, sa.func.count()).where(*in_batch).group_by(jobs.c.state))
    counts = Counter({state: int(count) for state, count in by_state})
    if counts[JobState.QUEUED.value] or counts[JobState.RUNNING.value]:
        return
    event_id = new_event_id()
    body = {
        "id": event_id,
        "type": BATCH_FINISHED,
        "timestamp": _timestamp(now),
        "data": {
            "batch_id": str(batch_id),
            "counts": {state.value: counts[state.value] for state in EVENT_TYPES},
        },
    }
    inserted = _insert_event(
        conn, tenant, BATCH_FINISHED, event_id, batch_finished_key(tenant, batch_id), body, None, batch_id, now
    )
    if not inserted:
        return
    # The batch's children name their webhook URL each; the batch's event goes to each distinct one.
    url_of_child = jobs.c.request["webhook_url"].as_string()
    urls = {url for (url,) in conn.execute(sa.select(url_of_child).where(*in_batch).distinct()) if url}
    if not urls and default_url:
        urls = {default_url}
    for url in sorted(urls):
        add_delivery(conn, event_id, tenant, None, url, now)
