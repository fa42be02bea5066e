"""Counts and aggregates over the jobs table: queue positions and depths, counts by state, run times, and what
the metrics fold reads. Read-only; the partial indexes of shared.db.tables are what keep these cheap, and
tests/integration/test_query_plans.py holds them to it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shared.db.job_updates import chunks
from shared.db.rows import FinishedJob, JobRow, QueueCounts, QueueStanding
from shared.db.tables import jobs
from shared.db.transaction import Operations, Transactions
from shared.states import TERMINAL_STATES, JobState

FINISHED_PAGE = 5000  # finished rows read per query by `finished_since`


def _count_up_to(
    where: Sequence[sa.ColumnElement[bool]],
    cap: int | sa.BindParameter[int] | None,
    in_order_of: Sequence[sa.ColumnElement[Any]] = (),
) -> sa.ScalarSelect[int]:
    """A scalar subquery counting the jobs matching `where`, stopping at `cap` rows when a cap is given.

    `in_order_of`: the columns of the index meant to serve it, after those `where` fixes. Ordering the capped rows
    by them makes PostgreSQL take that index: without an order it may expect `cap` matches early in a sequential
    scan (predicates it assumes independent, as `tenant` and `state` are not) and read the whole table instead."""
    if cap is None:
        return sa.select(sa.func.count()).select_from(jobs).where(*where).scalar_subquery()
    matching = sa.select(jobs.c.id).where(*where).order_by(*in_order_of).limit(cap).subquery()
    return sa.select(sa.func.count()).select_from(matching).scalar_subquery()


@functools.cache
def _queue_position_statement(capped: bool) -> sa.Select[Any]:
    """The count behind `Stats.queue_position`, built once (it runs for every status read of a queued
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


@functools.cache
def _queue_standing_statement() -> sa.Select[int, int, int, bool]:
    """The counts behind `Stats.queue_standing`, each stopped at the cap (parameters as for the position, plus
    tenant). The tenant's own count reads `ix_jobs_undispatched` (queue, tenant, priority, created_at, id): only
    undispatched jobs can still be reordered by the dispatcher's round-robin over tenants."""
    same_queue = [jobs.c.state == JobState.QUEUED.value, jobs.c.queue == sa.bindparam("queue")]
    priority: sa.BindParameter[int] = sa.bindparam("priority", type_=sa.Integer)
    before = sa.tuple_(jobs.c.created_at, jobs.c.id) < sa.tuple_(
        sa.bindparam("created_at", type_=jobs.c.created_at.type), sa.bindparam("id", type_=jobs.c.id.type)
    )
    cap = sa.bindparam("cap", type_=sa.Integer)
    # The tenant's own jobs ahead, as two range scans (an OR of the two made PostgreSQL bitmap-scan the tenant).
    own = [*same_queue, jobs.c.dispatched_at.is_(None), jobs.c.tenant == sa.bindparam("tenant")]
    own_ahead = _count_up_to([*own, jobs.c.priority > priority], cap) + _count_up_to(
        [*own, jobs.c.priority == priority, before], cap
    )
    # Whether another tenant has an undispatched job in the queue: the nearest tenant below and above the job's own,
    # each an index scan in tenant order that stops at its first match. (`tenant <>` would walk past every entry of
    # the job's own tenant; without the ORDER BY, PostgreSQL chose a sequential scan. test_query_plans.py.)
    undispatched = [*same_queue, jobs.c.dispatched_at.is_(None)]
    tenant: sa.BindParameter[str] = sa.bindparam("tenant", type_=jobs.c.tenant.type)

    def nearest(where: sa.ColumnElement[bool], descending: bool) -> sa.ScalarSelect[Any]:
        order = (jobs.c.queue.desc(), jobs.c.tenant.desc()) if descending else (jobs.c.queue, jobs.c.tenant)
        return sa.select(jobs.c.tenant).where(*undispatched, where).order_by(*order).limit(1).scalar_subquery()

    other_tenants = sa.or_(
        nearest(jobs.c.tenant < tenant, descending=True).is_not(None),
        nearest(jobs.c.tenant > tenant, descending=False).is_not(None),
    )
    return sa.select(
        _count_up_to([*same_queue, jobs.c.priority > priority], cap),
        _count_up_to([*same_queue, jobs.c.priority == priority, before], cap),
        own_ahead,
        other_tenants,
    )


def counts_by_state(tx: Transactions, where: sa.ColumnElement[bool]) -> dict[JobState, int]:
    """The jobs matching `where` counted by state (every state present, zero included)."""
    statement = sa.select(jobs.c.state, sa.func.count()).where(where).group_by(jobs.c.state)
    counts = dict.fromkeys(JobState, 0)
    with tx.begin(write=False) as conn:
        for state, count in conn.execute(statement):
            counts[JobState(state)] = int(count)
    return counts


TENANTS_PER_COUNT = 100  # tenants counted by state in one statement (5 columns each)


def _queue_order_parameters(job: JobRow) -> dict[str, Any]:
    """Where `job` sorts in its queue: the bound parameters of the position and standing statements."""
    return {"queue": job.queue, "priority": job.priority, "created_at": job.created_at, "id": job.id}


class Stats(Operations):
    """Read-only counts for status reads, admission limits, the wait estimate and the metrics."""

    def queue_position(self, job: JobRow, *, cap: int | None = None) -> int | None:
        """How many queued jobs of the same Celery queue run before `job` (0: it is next); None unless queued.

        Order of the queue: higher priority first, then older (`created_at`, then id). Jobs of other queues do not
        count: other workers serve them. With `cap`, counting stops there: the answer is `min(position, cap)`, and
        the cost is bounded by the cap instead of growing with the backlog (two range scans of
        `ix_jobs_queued_order`, each stopped after `cap` entries).
        """
        if job.state is not JobState.QUEUED:
            return None
        parameters = _queue_order_parameters(job)
        if cap is not None:
            parameters["cap"] = cap
        with self._tx.begin(write=False) as conn:
            position = int(conn.execute(_queue_position_statement(cap is not None), parameters).scalar_one())
        return position if cap is None else min(position, cap)

    def queue_standing(self, job: JobRow, *, cap: int) -> QueueStanding | None:
        """Where a queued `job` stands in its queue, each count stopped at `cap`; None unless queued.

        One statement of capped range scans (`ix_jobs_queued_order` twice, `ix_jobs_undispatched` three times), so
        its cost is bounded by the cap, not the backlog (tests/integration/test_query_plans.py).
        """
        if job.state is not JobState.QUEUED:
            return None
        parameters = {**_queue_order_parameters(job), "tenant": job.tenant, "cap": cap}
        with self._tx.begin(write=False) as conn:
            higher, older, own, others = conn.execute(_queue_standing_statement(), parameters).one()
        return QueueStanding(
            higher_priority=min(int(higher), cap),
            same_priority=min(int(older), cap),
            own_tenant=min(int(own), cap),
            other_tenants_waiting=bool(others),
        )

    def counts_by_state(self) -> dict[JobState, int]:
        """Every job counted by state (for metrics)."""
        return counts_by_state(self._tx, sa.true())

    def queue_depth(self, queue: str, *, cap: int | None = None) -> int:
        """The queued jobs of one Celery queue, counted up to `cap` when given (a scan of `ix_jobs_queued_order`)."""
        statement = sa.select(_count_up_to([jobs.c.state == JobState.QUEUED.value, jobs.c.queue == queue], cap))
        with self._tx.begin(write=False) as conn:
            return int(conn.execute(statement).scalar_one())

    def tenant_counts(self, tenants: Sequence[str], *, cap: int) -> dict[JobState, tuple[int, bool]]:
        """The jobs of `tenants` by state, each tenant's counted up to `cap` (the dashboard's totals), as
        `(count, whether a tenant's count stopped at the cap)`: one statement of capped range scans of
        `ix_jobs_tenant_state`, so a long history or a deep backlog costs the cap, not its size."""
        states = list(JobState)
        counts = {state: (0, False) for state in states}
        index_order = (jobs.c.created_at, jobs.c.id)  # ix_jobs_tenant_state, after tenant and state
        with self._tx.begin(write=False) as conn:
            # A statement per TENANTS_PER_COUNT tenants: PostgreSQL takes at most 1,664 columns in a select list.
            for some in chunks(list(tenants), TENANTS_PER_COUNT):
                columns = [
                    _count_up_to([jobs.c.tenant == tenant, jobs.c.state == state.value], cap, index_order)
                    for tenant in some
                    for state in states
                ]
                for index, value in enumerate(conn.execute(sa.select(*columns)).one()):
                    state = states[index % len(states)]
                    total, capped = counts[state]
                    counts[state] = (total + int(value), capped or int(value) >= cap)
        return counts

    def queued_count(self, tenant: str, *, cap: int | None = None) -> int:
        """The tenant's queued jobs (for the per-tenant limit on queued jobs), counted up to `cap` when given
        (`min(count, cap)`, at a cost bounded by the cap: a scan of `ix_jobs_queued_tenant`)."""
        statement = sa.select(_count_up_to([jobs.c.tenant == tenant, jobs.c.state == JobState.QUEUED.value], cap))
        with self._tx.begin(write=False) as conn:
            return int(conn.execute(statement).scalar_one())

    def recent_runs(self, queue: str, sample: int) -> list[tuple[float, int | None, Any]]:
        """(run time in seconds, total steps, request) of the queue's `sample` most recently succeeded jobs: what
        the size-aware wait estimate (scheduler/wait_estimate.py) learns seconds per step and megapixel from."""
        statement = (
            sa.select(jobs.c.started_at, jobs.c.finished_at, jobs.c.total_steps, jobs.c.request)
            .where(
                jobs.c.state == JobState.SUCCEEDED.value,
                jobs.c.queue == queue,
                jobs.c.started_at.is_not(None),
                jobs.c.finished_at.is_not(None),
            )
            .order_by(jobs.c.finished_at.desc())
            .limit(sample)
        )
        with self._tx.begin(write=False) as conn:
            return [
                ((finished - started).total_seconds(), steps, request)
                for started, finished, steps, request in conn.execute(statement)
            ]

    def queue_counts(self) -> dict[str, QueueCounts]:
        """Queued (of which in flight) and running jobs, and the oldest queued job, of every queue that has any."""
        in_flight = sa.case((jobs.c.dispatched_at.is_not(None), 1), else_=0)
        statement = (
            sa.select(
                jobs.c.queue, jobs.c.state, sa.func.count(), sa.func.sum(in_flight), sa.func.min(jobs.c.created_at)
            )
            .where(jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
            .group_by(jobs.c.queue, jobs.c.state)
        )
        with self._tx.begin(write=False) as conn:
            rows = conn.execute(statement).all()
        out: dict[str, QueueCounts] = {}
        for queue, state, count, flying, oldest in rows:
            # min() keeps the column's type, so `oldest` comes back as an aware datetime on both databases.
            current = out.get(str(queue), QueueCounts())
            if state == JobState.QUEUED.value:
                current = QueueCounts(int(count), int(flying or 0), current.running, oldest)
            else:
                current = QueueCounts(current.queued, current.in_flight, int(count), current.oldest_queued)
            out[str(queue)] = current
        return out

    def finished_since(self, since: datetime | None) -> Iterator[FinishedJob]:
        """Finished jobs with `finished_at >= since` (all when None), oldest first, read in keyset pages."""
        columns = (
            jobs.c.id,
            jobs.c.model,
            jobs.c.state,
            jobs.c.attempt,
            jobs.c.created_at,
            jobs.c.started_at,
            jobs.c.finished_at,
            jobs.c.error,
        )
        terminal = [state.value for state in sorted(TERMINAL_STATES)]
        after: tuple[datetime, Any] | None = None
        while True:
            statement = sa.select(*columns).where(jobs.c.state.in_(terminal), jobs.c.finished_at.is_not(None))
            if since is not None:
                statement = statement.where(jobs.c.finished_at >= since)
            if after is not None:
                key = sa.tuple_(jobs.c.finished_at, jobs.c.id)
                statement = statement.where(
                    key > sa.tuple_(sa.literal(after[0], jobs.c.finished_at.type), sa.literal(after[1], jobs.c.id.type))
                )
            statement = statement.order_by(jobs.c.finished_at, jobs.c.id).limit(FINISHED_PAGE)
            with self._tx.begin(write=False) as conn:
                page = conn.execute(statement).mappings().all()
            for row in page:
                error = row["error"]
                code = error.get("code") if isinstance(error, Mapping) else None
                yield FinishedJob(
                    id=row["id"],
                    model=row["model"],
                    state=JobState(row["state"]),
                    attempt=int(row["attempt"]),
                    created_at=row["created_at"],
                    started_at=row["started_at"],
                    finished_at=row["finished_at"],
                    error_code=None if code is None else str(code),
                )
            if len(page) < FINISHED_PAGE:
                return
            after = (page[-1]["finished_at"], page[-1]["id"])
