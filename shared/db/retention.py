"""The retention purge's side of the database (migration 0007; the policy is shared.retention, the purge itself
scheduler/purge.py): which terminal jobs and assets are past their retention, and removing them.

Every work list reads the oldest rows past a cutoff through a partial index (`ix_jobs_results_stored`,
`ix_jobs_finished`, `ix_assets_created_at`) with a LIMIT, so one pass costs the same however large the tables are.
No query here can select a job that is not terminal, nor a job of a batch that still has a queued or running job
(its batch's results are still being made), and the deletes repeat those conditions, so a row that changed between
the read and the write is left alone.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa

from shared.db.event_writes import batch_finished_key
from shared.db.rows import AssetRow, JobRow, plain_row
from shared.db.tables import (
    artifacts,
    assets,
    batches,
    events,
    jobs,
    purged_batches,
    purged_jobs,
    webhook_deliveries,
)
from shared.db.transaction import Operations
from shared.states import TERMINAL_STATES, JobState

_TERMINAL = sorted(state.value for state in TERMINAL_STATES)
_UNFINISHED = [JobState.QUEUED.value, JobState.RUNNING.value]
_ASSET_REF = re.compile(r"asset:([0-9a-f]{64})")


def _tenant_filter(column: sa.ColumnElement[str], tenants: Sequence[str], others: bool) -> sa.ColumnElement[bool]:
    """`tenants` exactly, or (`others`) every tenant but them."""
    if others:
        return column.not_in(tenants) if tenants else sa.true()
    return column.in_(tenants)


def _batch_finished() -> sa.ColumnElement[bool]:
    """The job is in no batch, or its batch has no queued or running job left (index `(batch_id, state)`)."""
    sibling = jobs.alias("sibling")
    running_sibling = (
        sa.select(sa.literal(1)).where(sibling.c.batch_id == jobs.c.batch_id, sibling.c.state.in_(_UNFINISHED)).exists()
    )
    # CASE, not OR: PostgreSQL may evaluate an OR's arms in any order, and would run the sibling probe for every
    # job outside a batch too (tests/integration/test_query_plans.py).
    return sa.case((jobs.c.batch_id.is_(None), sa.true()), else_=~running_sibling)


class Retention(Operations):
    """What the purge reads and deletes: result sets, job rows (with tombstones) and assets past their cutoffs."""

    def results_due(self, tenants: Sequence[str], others: bool, cutoff: datetime, limit: int) -> list[JobRow]:
        """Terminal jobs of these tenants that finished before `cutoff` and still have their outputs stored."""
        return self._finished_before(tenants, others, cutoff, limit, jobs.c.results_purged_at.is_(None))

    def jobs_due(self, tenants: Sequence[str], others: bool, cutoff: datetime, limit: int) -> list[JobRow]:
        """Terminal jobs of these tenants that finished before `cutoff` (their rows are to go)."""
        return self._finished_before(tenants, others, cutoff, limit)

    def _finished_before(
        self, tenants: Sequence[str], others: bool, cutoff: datetime, limit: int, *extra: sa.ColumnElement[bool]
    ) -> list[JobRow]:
        """Terminal jobs of these tenants, outside an unfinished batch, finished before `cutoff`, oldest first."""
        statement = (
            sa.select(jobs)
            .where(
                jobs.c.state.in_(_TERMINAL),
                jobs.c.finished_at < cutoff,
                _tenant_filter(jobs.c.tenant, tenants, others),
                _batch_finished(),
                *extra,
            )
            .order_by(jobs.c.finished_at, jobs.c.id)
            .limit(limit)
        )
        with self._tx.begin(write=False) as conn:
            return [JobRow.from_mapping(row) for row in conn.execute(statement).mappings()]

    def assets_due(self, tenants: Sequence[str], others: bool, cutoff: datetime, limit: int) -> list[AssetRow]:
        """Assets of these tenants uploaded before `cutoff` (whether a live job uses one is `live_asset_refs`)."""
        statement = (
            sa.select(assets)
            .where(assets.c.created_at < cutoff, _tenant_filter(assets.c.tenant, tenants, others))
            .order_by(assets.c.created_at)
            .limit(limit)
        )
        with self._tx.begin(write=False) as conn:
            return [plain_row(AssetRow, row) for row in conn.execute(statement).mappings()]

    def live_asset_refs(self, tenant: str) -> set[str]:
        """The sha256 of every asset that a queued or running job of `tenant` names (`asset:<sha256>` anywhere in
        its request). Bounded: a tenant has at most RENDERFARM_MAX_QUEUED_JOBS_PER_TENANT queued jobs."""
        statement = sa.select(jobs.c.request).where(jobs.c.tenant == tenant, jobs.c.state.in_(_UNFINISHED))
        found: set[str] = set()
        with self._tx.begin(write=False) as conn:
            for (request,) in conn.execute(statement):
                found.update(_ASSET_REF.findall(_text_of(request)))
        return found

    def mark_results_purged(self, job_ids: Iterable[uuid.UUID]) -> int:
        """Record that these jobs' outputs are gone: their artifact rows deleted, `results_purged_at` set (still
        terminal jobs only). Returns how many jobs were marked."""
        ids = list(job_ids)
        if not ids:
            return 0
        now = self._tx.clock()
        with self._tx.begin() as conn:
            marked = conn.execute(
                sa.update(jobs)
                .where(jobs.c.id.in_(ids), jobs.c.state.in_(_TERMINAL), jobs.c.results_purged_at.is_(None))
                .values(results_purged_at=now, updated_at=now)
                .returning(jobs.c.id)
            ).scalars()
            marked_ids = list(marked)
            if marked_ids:
                conn.execute(sa.delete(artifacts).where(artifacts.c.job_id.in_(marked_ids)))
        return len(marked_ids)

    def delete_jobs(self, rows: Iterable[JobRow]) -> int:
        """Delete these (terminal) job rows and their artifact rows, leaving a tombstone of each. Returns how many."""
        wanted = {row.id: row for row in rows}
        if not wanted:
            return 0
        now = self._tx.clock()
        with self._tx.begin() as conn:
            deletable = list(
                conn.execute(
                    sa.select(jobs.c.id, jobs.c.tenant, jobs.c.task_id, jobs.c.created_at).where(
                        jobs.c.id.in_(list(wanted)), jobs.c.state.in_(_TERMINAL)
                    )
                ).mappings()
            )
            if not deletable:
                return 0
            ids = [row["id"] for row in deletable]
            for row in deletable:
                key = [purged_jobs.c.tenant == row["tenant"], purged_jobs.c.task_id == row["task_id"]]
                conn.execute(sa.delete(purged_jobs).where(*key))  # an older tombstone of a reused task id
                conn.execute(
                    sa.insert(purged_jobs).values(
                        tenant=row["tenant"],
                        task_id=row["task_id"],
                        job_id=row["id"],
                        created_at=row["created_at"],
                        purged_at=now,
                    )
                )
            conn.execute(sa.delete(artifacts).where(artifacts.c.job_id.in_(ids)))
            # The job's events and webhook deliveries live as long as its row (docs/api.md "Events and webhooks").
            conn.execute(sa.delete(webhook_deliveries).where(webhook_deliveries.c.job_id.in_(ids)))
            conn.execute(sa.delete(events).where(events.c.job_id.in_(ids)))
            conn.execute(sa.delete(jobs).where(jobs.c.id.in_(ids), jobs.c.state.in_(_TERMINAL)))
        return len(ids)

    def batches_emptied_by(self, rows: Iterable[JobRow]) -> list[tuple[str, uuid.UUID]]:
        """The (tenant, batch id) of the batches whose every remaining job is among `rows`: deleting those rows
        leaves them empty (what a dry run reports, and what `delete_empty_batches` is then given)."""
        deleting: dict[tuple[str, uuid.UUID], int] = {}
        for row in rows:
            if row.batch_id is not None:
                deleting[(row.tenant, row.batch_id)] = deleting.get((row.tenant, row.batch_id), 0) + 1
        emptied = []
        with self._tx.begin(write=False) as conn:
            for (tenant, batch_id), count in sorted(deleting.items(), key=lambda item: (item[0][0], str(item[0][1]))):
                remaining = sa.select(sa.func.count()).where(jobs.c.tenant == tenant, jobs.c.batch_id == batch_id)
                if int(conn.execute(remaining).scalar_one()) <= count:
                    emptied.append((tenant, batch_id))
        return emptied

    def delete_empty_batches(self, candidates: Iterable[tuple[str, uuid.UUID]]) -> list[tuple[str, uuid.UUID]]:
        """Delete those of these batches that no job row names any more (the purge took their last jobs), with their
        `batch.finished` event and its deliveries, leaving a tombstone of each (reads answer 410). Returns them."""
        now = self._tx.clock()
        deleted = []
        with self._tx.begin() as conn:
            for tenant, batch_id in candidates:
                named = sa.select(sa.literal(1)).where(jobs.c.tenant == tenant, jobs.c.batch_id == batch_id).limit(1)
                if conn.execute(named).first() is not None:
                    continue
                this_batch = [batches.c.tenant == tenant, batches.c.id == batch_id]
                created_at = conn.execute(sa.select(batches.c.created_at).where(*this_batch)).scalar_one_or_none()
                if created_at is None:
                    continue
                finished = events.c.dedup_key == batch_finished_key(tenant, batch_id)
                event_ids = sa.select(events.c.event_id).where(finished).scalar_subquery()
                conn.execute(sa.delete(webhook_deliveries).where(webhook_deliveries.c.event_id.in_(event_ids)))
                conn.execute(sa.delete(events).where(finished))
                tombstone = [purged_batches.c.tenant == tenant, purged_batches.c.batch_id == batch_id]
                conn.execute(sa.delete(purged_batches).where(*tombstone))  # an older one of a reused batch id
                conn.execute(
                    sa.insert(purged_batches).values(
                        tenant=tenant, batch_id=batch_id, created_at=created_at, purged_at=now
                    )
                )
                conn.execute(sa.delete(batches).where(*this_batch))
                deleted.append((tenant, batch_id))
        return deleted

    def delete_assets(self, tenant: str, sha256s: Iterable[str], cutoff: datetime) -> int:
        """Delete these asset rows of `tenant` (still older than `cutoff`: one uploaded again since is kept)."""
        keys = list(sha256s)
        if not keys:
            return 0
        with self._tx.begin() as conn:
            result = conn.execute(
                sa.delete(assets).where(
                    assets.c.tenant == tenant, assets.c.sha256.in_(keys), assets.c.created_at < cutoff
                )
            )
        return int(result.rowcount or 0)

    def purged_at(self, tenant: str, task_id: str) -> datetime | None:
        """When the tenant's job `task_id` was purged, or None when there is no tombstone."""
        statement = sa.select(purged_jobs.c.purged_at).where(
            purged_jobs.c.tenant == tenant, purged_jobs.c.task_id == task_id
        )
        with self._tx.begin(write=False) as conn:
            value: datetime | None = conn.execute(statement).scalar_one_or_none()
        return value


def _text_of(request: object) -> str:
    """The request JSON as text, for the asset-reference search (a dict on PostgreSQL's JSONB and SQLite's JSON)."""
    return request if isinstance(request, str) else json.dumps(request)
