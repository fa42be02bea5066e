"""The API's side of a job: create-or-get, reads (one job, a page of jobs, its artifacts) and cancel."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

import sqlalchemy as sa

from shared.db.job_inserts import check_task_id, new_job_values, task_id_conflict
from shared.db.job_updates import cancel_jobs
from shared.db.rows import ArtifactRow, JobRow, NewJob, plain_row
from shared.db.tables import artifacts, jobs, purged_jobs
from shared.db.transaction import Operations
from shared.errors import Gone, InputError, NotFound
from shared.job.artifacts import ARTIFACT_KINDS
from shared.states import JobState

MAX_LIST_LIMIT = 1000  # rows per page of list_jobs


class Jobs(Operations):
    """Jobs as the API sees them: by tenant and task id (or by database key, for the worker)."""

    def create_or_get(self, tenant: str, item: NewJob, *, batch_id: uuid.UUID | None = None) -> tuple[JobRow, bool]:
        """Insert `item` as a queued job, or return the tenant's existing job with its `task_id`.

        Returns `(job, created)`. Race-safe: two submissions of one id insert one row (INSERT ... ON CONFLICT DO
        NOTHING, then read). Raises `Conflict` (code `task_id_conflict`) when the existing job's `request_hash`
        differs from the item's, naming both; `InputError` for an over-long task id.
        """
        check_task_id(item.task_id)
        values = new_job_values(tenant, item, batch_id=batch_id, now=self._tx.clock())
        with self._tx.begin() as conn:
            row, created = self._tx.insert_or_get(conn, jobs, values, [jobs.c.tenant, jobs.c.task_id])
        job = JobRow.from_mapping(row)
        if not created and job.request_hash != item.request_hash:
            raise task_id_conflict(
                item.task_id, job.request_hash, item.request_hash, consequence="choose another task id"
            )
        return job, created

    def get(self, tenant: str, task_id: str) -> JobRow:
        """The tenant's job `task_id`. Raises `NotFound` for an unknown id and for another tenant's job alike, and
        `Gone` (410) for one the retention purge deleted (its tombstone, migration 0007)."""
        statement = sa.select(jobs).where(jobs.c.tenant == tenant, jobs.c.task_id == task_id)
        with self._tx.begin(write=False) as conn:
            row = conn.execute(statement).mappings().first()
            if row is None:
                raise self._missing(conn, tenant, task_id)
        return JobRow.from_mapping(row)

    def _missing(self, conn: sa.Connection, tenant: str, task_id: str) -> NotFound | Gone:
        """The error for a task id without a job row: Gone when the purge deleted it, else NotFound."""
        tombstone = sa.select(purged_jobs.c.purged_at).where(
            purged_jobs.c.tenant == tenant, purged_jobs.c.task_id == task_id
        )
        purged_at = conn.execute(tombstone).scalar_one_or_none()
        if purged_at is not None:
            return Gone(
                f"job {task_id!r} was purged at the end of its retention period", code="job_purged", purged_at=purged_at
            )
        return NotFound(f"no job with task id {task_id!r}", code="job_not_found")

    def get_by_id(self, job_id: uuid.UUID) -> JobRow:
        """The job with database key `job_id` (the worker's view; no tenant check). Raises `NotFound`."""
        missing = NotFound(f"no job with id {job_id}", code="job_not_found")
        return JobRow.from_mapping(self._tx.read_one(sa.select(jobs).where(jobs.c.id == job_id), missing))

    def artifacts_of(self, job_id: uuid.UUID) -> list[ArtifactRow]:
        """The job's artifacts, ordered by kind (result, overlay, mask) then index."""
        kind_order = sa.case({kind: position for position, kind in enumerate(ARTIFACT_KINDS)}, value=artifacts.c.kind)
        statement = sa.select(artifacts).where(artifacts.c.job_id == job_id).order_by(kind_order, artifacts.c.index)
        with self._tx.begin(write=False) as conn:
            return [plain_row(ArtifactRow, row) for row in conn.execute(statement).mappings()]

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
        with self._tx.begin(write=False) as conn:
            rows = [JobRow.from_mapping(row) for row in conn.execute(statement.limit(limit + 1)).mappings()]
        if len(rows) <= limit:
            return rows, None
        page = rows[:limit]
        return page, _encode_cursor(page[-1], oldest_first)

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
            with self._tx.begin() as conn:
                changed = cancel_jobs(conn, key, self._tx.now(now))
                if changed:
                    return changed[0]
                current = conn.execute(sa.select(jobs).where(*key)).mappings().first()
                if current is None:
                    raise self._missing(conn, tenant, task_id)
            job = JobRow.from_mapping(current)
            if job.is_terminal or (job.state is JobState.RUNNING and job.cancel_requested):
                return job
        return job


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
