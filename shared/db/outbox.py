"""The dispatcher's and the reconciler's side of the outbox (reliability.md "Job row vs message").

The jobs table is the outbox: new and re-queued jobs have `dispatched_at` NULL until their message is published.
The dispatcher claims the right to publish a queue's next jobs (`claim_dispatch`), publishes them and hands back
what it could not publish (`release_dispatch`); the reconciler finds messages that may be lost
(`stale_dispatched_jobs`) and makes their jobs publishable again (`reset_lost_dispatch`, `reset_all_dispatch`).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa

from shared.db.job_updates import chunks, touch_jobs
from shared.db.rows import JobRow
from shared.db.tables import UTCDateTime, jobs
from shared.db.transaction import Operations
from shared.states import JobState

# Advisory lock namespace of the dispatch window ("rf" + "dw"); the second key is the queue's CRC-32.
_DISPATCH_LOCK_SPACE = 0x72666477


class OutboxState(NamedTuple):
    """One Celery queue's outbox: whether it has queued jobs never published, and its messages in flight
    (published, not yet claimed)."""

    waiting: bool
    in_flight: int


# The distinct queues with queued jobs never published and due (`retry_at` passed or unset), as a skip scan of
# ix_jobs_undispatched: each step finds the next queue name with one index probe, so the cost grows with the number
# of queues, not of jobs. (A plain SELECT DISTINCT reads every entry.) Written for PostgreSQL and SQLite alike.
_WAITING_QUEUES = sa.text(
    """
    WITH RECURSIVE waiting(queue) AS (
        SELECT min(queue) FROM jobs
        WHERE state = 'queued' AND dispatched_at IS NULL AND (retry_at IS NULL OR retry_at <= :now)
        UNION ALL
        SELECT (
            SELECT min(later.queue) FROM jobs AS later
            WHERE later.state = 'queued' AND later.dispatched_at IS NULL AND later.queue > waiting.queue
            AND (later.retry_at IS NULL OR later.retry_at <= :now)
        )
        FROM waiting WHERE waiting.queue IS NOT NULL
    )
    SELECT queue FROM waiting WHERE queue IS NOT NULL
    """
).bindparams(sa.bindparam("now", type_=UTCDateTime()))

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


class Outbox(Operations):
    """Publishing jobs: which queues wait, the claim and release of a dispatch, and the repair of lost messages."""

    def outbox_by_queue(self, *, now: datetime | None = None) -> dict[str, OutboxState]:
        """Every Celery queue with queued jobs never published or messages in flight, and which it has.

        The dispatcher reads this once per round (every 50 ms while a backlog waits behind full windows), so it
        must not count the backlog: the queues with unpublished jobs are found by a skip scan of
        `ix_jobs_undispatched` (one index probe per queue), the in-flight messages counted in `ix_jobs_in_flight`
        (at most a window per queue). A job waiting for its retry (`retry_at` later than `now`) does not count as
        waiting until it is due.
        """
        when = self._tx.now(now)
        with self._tx.begin(write=False) as conn:
            waiting: set[str] = set(conn.execute(_WAITING_QUEUES, {"now": when}).scalars())
            in_flight: dict[str, int] = {queue: int(count) for queue, count in conn.execute(_IN_FLIGHT_BY_QUEUE)}
        return {
            queue: OutboxState(waiting=queue in waiting, in_flight=in_flight.get(queue, 0))
            for queue in sorted(waiting | set(in_flight))
        }

    def stale_dispatched_jobs(
        self, older_than_s: float, limit: int = 100, *, now: datetime | None = None
    ) -> list[JobRow]:
        """Queued jobs whose message was published more than `older_than_s` seconds ago and never claimed.

        Their message may be lost (for example Redis restarted empty); the reconciler may publish them again (a
        duplicate delivery is harmless: only one claim wins). Oldest dispatch first.
        """
        cutoff = self._tx.now(now) - timedelta(seconds=older_than_s)
        statement = (
            sa.select(jobs)
            .where(jobs.c.state == JobState.QUEUED.value, jobs.c.dispatched_at < cutoff)
            .order_by(jobs.c.dispatched_at, jobs.c.id)
            .limit(limit)
        )
        with self._tx.begin(write=False) as conn:
            return [JobRow.from_mapping(row) for row in conn.execute(statement).mappings()]

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
        when = self._tx.now(now)
        with self._tx.begin() as conn:
            if self._tx.dialect == "postgresql":
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
            order: list[uuid.UUID] = list(conn.execute(_fair_dispatch_order(queue, room, when)).scalars())
            if not order:
                return []
            claimed = touch_jobs(
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
        when = self._tx.now(now)
        released: list[uuid.UUID] = []
        with self._tx.begin() as conn:
            for job in jobs_to_release:
                if job.dispatched_at is None:
                    continue
                rows = touch_jobs(
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
        when = self._tx.now(now)
        cutoff = when - timedelta(seconds=older_than_s)
        changed: list[JobRow] = []
        with self._tx.begin() as conn:
            ids = list(job_ids)
            for chunk in chunks(ids):
                changed += touch_jobs(
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
        when = self._tx.now(now)
        with self._tx.begin() as conn:
            rows = touch_jobs(
                conn,
                [jobs.c.state == JobState.QUEUED.value, jobs.c.dispatched_at.is_not(None)],
                {"dispatched_at": None},
                when,
            )
        return len(rows)


def _fair_dispatch_order(queue: str, limit: int, now: datetime) -> sa.Select[Any]:
    """The ids of `queue`'s undispatched queued jobs in dispatch order, at most `limit` of them (a SELECT). Jobs
    waiting for their retry (`retry_at` later than `now`) are left out until they are due.

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
        .where(
            jobs.c.queue == queue,
            jobs.c.state == JobState.QUEUED.value,
            jobs.c.dispatched_at.is_(None),
            sa.or_(jobs.c.retry_at.is_(None), jobs.c.retry_at <= now),
        )
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
