"""Batches: one row per batch (its manifest and mode) and its child jobs, inserted together (api.md "Submit")."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shared.db.job_inserts import insert_jobs
from shared.db.job_updates import cancel_jobs
from shared.db.rows import BatchRow, BulkResult, NewJob, plain_row
from shared.db.stats import counts_by_state
from shared.db.tables import BATCH_MODES, batches, jobs, purged_batches
from shared.db.transaction import Operations
from shared.errors import Gone, NotFound
from shared.states import JobState


class Batches(Operations):
    """The API's batches: create-or-get with the child jobs, read, cancel, and the children's counts and timing."""

    def create_if_absent(
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
        compares the stored manifest to tell a retry from a conflict). Batch ids are per tenant: another tenant's
        batch with the same id is not this one. Race-safe: two requests with one new id insert one batch (INSERT ... ON
        CONFLICT DO NOTHING). Raises what `shared.db.job_inserts.insert_jobs` raises (`Conflict`, `InputError`;
        then neither the batch nor any job is inserted), and `ValueError` for an unknown `mode`.
        """
        if mode not in BATCH_MODES:
            raise ValueError(f"batch mode must be one of {BATCH_MODES}, not {mode!r}")
        now = self._tx.clock()
        values = {
            "id": batch_id,
            "tenant": tenant,
            "created_at": now,
            "requested": len(items),
            "mode": mode,
            "manifest": manifest,
            "canceled_at": None,
        }
        with self._tx.begin() as conn:
            row, created = self._tx.insert_or_get(conn, batches, values, [batches.c.tenant, batches.c.id])
            result = insert_jobs(self._tx, conn, tenant, items, batch_id=batch_id, now=now) if created else None
        return plain_row(BatchRow, row), result

    def get(self, tenant: str, batch_id: uuid.UUID) -> BatchRow:
        """The tenant's batch. Raises `NotFound` for an unknown batch and another tenant's alike, and `Gone` (410)
        for one the retention purge deleted with its last job (its tombstone, migration 0010)."""
        statement = sa.select(batches).where(batches.c.id == batch_id, batches.c.tenant == tenant)
        with self._tx.begin(write=False) as conn:
            row = conn.execute(statement).mappings().first()
            if row is None:
                tombstone = sa.select(purged_batches.c.purged_at).where(
                    purged_batches.c.tenant == tenant, purged_batches.c.batch_id == batch_id
                )
                purged_at = conn.execute(tombstone).scalar_one_or_none()
                if purged_at is not None:
                    raise Gone(
                        f"batch {batch_id} was purged with its jobs at the end of their retention period",
                        code="batch_purged",
                        purged_at=purged_at,
                    )
                raise NotFound(f"no batch with id {batch_id}", code="batch_not_found")
        return plain_row(BatchRow, row)

    def cancel(self, tenant: str, batch_id: uuid.UUID, *, now: datetime | None = None) -> BatchRow:
        """Cancel what has not finished: queued jobs at once, running ones by request. Raises `NotFound`."""
        when = self._tx.now(now)
        with self._tx.begin() as conn:
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
            cancel_jobs(conn, [jobs.c.batch_id == batch_id, jobs.c.tenant == tenant], when)
        return plain_row(BatchRow, row)

    def counts(self, tenant: str, batch_id: uuid.UUID) -> dict[JobState, int]:
        """The tenant's batch's jobs counted by state (every state present, zero included)."""
        return counts_by_state(self._tx, sa.and_(jobs.c.tenant == tenant, jobs.c.batch_id == batch_id))

    def timing(self, tenant: str, batch_id: uuid.UUID) -> tuple[datetime | None, datetime | None]:
        """`(first started_at, last finished_at)` over the batch's jobs (None when no job started / finished yet)."""
        statement = sa.select(sa.func.min(jobs.c.started_at), sa.func.max(jobs.c.finished_at)).where(
            jobs.c.tenant == tenant, jobs.c.batch_id == batch_id
        )
        with self._tx.begin(write=False) as conn:
            first_started, last_finished = conn.execute(statement).one()
        return first_started, last_finished
