"""The worker's and the reconciler's side of a job: the lease (claim, renew, finish) and its expiry.

A worker's writes are fenced by its attempt number (see shared.db.job_updates): after a lease expired and another
attempt claimed the job, the old worker's `succeed`, `fail` and `renew_lease` match no row.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from shared.db.ids import new_id
from shared.db.job_updates import ErrorLike, error_dict, touch_jobs, update_jobs
from shared.db.rows import ArtifactRecord, JobError, JobRow, LeaseStatus
from shared.db.tables import UNSWEPT, UTCDateTime, artifacts, jobs
from shared.db.transaction import Operations
from shared.errors import LeaseLost
from shared.job.artifacts import ARTIFACT_KINDS
from shared.states import JobState

# Claims that count against `max_attempts`: those that ended in an outage do not (`JobRow.attempts_used`).
_ATTEMPTS_USED = jobs.c.attempt - jobs.c.outage_requeues

# Columns a caller of `transition` may not set: the key, the tenant's identity, and what the update manages itself.
_PROTECTED_COLUMNS = frozenset({"id", "tenant", "task_id", "state", "seq", "updated_at", "created_at"})


def _retry_at(now: datetime, delay_s: float) -> datetime | None:
    """When a job re-queued at `now` may run again: NULL (at once) without a delay."""
    return now + timedelta(seconds=delay_s) if delay_s > 0 else None


class Leases(Operations):
    """Running jobs: who owns them until when, and how each attempt ends."""

    def _lease(self, lease_s: float, now: datetime | None) -> tuple[datetime, datetime]:
        """`(now, the end of a lease of lease_s seconds from now)`. Raises ValueError unless `lease_s` is positive."""
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, not {lease_s}")
        when = self._tx.now(now)
        return when, when + timedelta(seconds=lease_s)

    def claim(self, job_id: uuid.UUID, worker: str, lease_s: float, *, now: datetime | None = None) -> JobRow | None:
        """Take a queued job: running, attempt + 1, owned by `worker` until now + `lease_s` seconds.

        Returns the claimed job (its `attempt` is the new attempt number), or None when the job is not queued (a
        duplicate delivery, canceled, already running or finished, or unknown): the caller acks the message and does
        nothing.
        A job waiting for its retry (`retry_at` later than now) is not claimed either: a duplicate message that
        arrives during the backoff is dropped, and the dispatcher publishes the job when it is due.
        The caller fails the job when the returned attempt exceeds `max_attempts` (its `attempts_used`).
        """
        when, until = self._lease(lease_s, now)
        values = {"attempt": jobs.c.attempt + 1, "worker": worker, "started_at": when, "lease_until": until}
        due = sa.or_(jobs.c.retry_at.is_(None), jobs.c.retry_at <= when)
        with self._tx.begin() as conn:
            rows = update_jobs(conn, JobState.RUNNING, [jobs.c.id == job_id, due], values, now=when)
        return rows[0] if rows else None

    def renew_lease(
        self, job_id: uuid.UUID, attempt: int, lease_s: float, *, now: datetime | None = None
    ) -> LeaseStatus:
        """Extend this attempt's lease to now + `lease_s` seconds, and learn whether cancel was requested.

        `held` is False when this attempt no longer owns the job (its lease expired and the job was re-queued or
        taken by a newer attempt, or the job finished): the worker must stop and write nothing.
        """
        when, until = self._lease(lease_s, now)
        held = [jobs.c.id == job_id, jobs.c.state == JobState.RUNNING.value, jobs.c.attempt == attempt]
        with self._tx.begin() as conn:
            rows = touch_jobs(conn, held, {"lease_until": until}, when)
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
        not running under `attempt` any more; then nothing at all is written. Idempotent: when the job already
        succeeded under this same attempt (an earlier call committed and its reply was lost), returns the job and
        writes nothing, so a commit may be retried after a database error. Raises `ValueError` for an unknown
        artifact kind.
        """
        for record in artifact_records:
            if record.kind not in ARTIFACT_KINDS:
                raise ValueError(f"artifact kind must be one of {ARTIFACT_KINDS}, not {record.kind!r}")
        when = self._tx.now(now)
        with self._tx.begin() as conn:
            rows = update_jobs(
                conn,
                JobState.SUCCEEDED,
                [jobs.c.id == job_id, jobs.c.attempt == attempt],
                {},
                from_states=frozenset({JobState.RUNNING}),
                now=when,
            )
            if not rows:
                current = conn.execute(sa.select(jobs.c.state, jobs.c.attempt).where(jobs.c.id == job_id)).first()
                if current is not None and (current[0], current[1]) == (JobState.SUCCEEDED.value, attempt):
                    # This very commit went in and its reply was lost (a database blip): the retry is a no-op.
                    (row,) = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings()
                    return JobRow.from_mapping(row)
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
                job = JobRow.from_mapping(row)
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
        when = self._tx.now(now)
        where = [jobs.c.id == job_id]
        from_states = None
        if attempt is not None:
            # A re-queued job keeps its attempt number until the next claim, so the attempt alone does not prove
            # ownership: the job must also still be running.
            where.append(jobs.c.attempt == attempt)
            from_states = frozenset({JobState.RUNNING})
        with self._tx.begin() as conn:
            rows = update_jobs(
                conn, JobState.FAILED, where, {"error": error_dict(error)}, from_states=from_states, now=when
            )
        return rows[0] if rows else None

    def cancel_running(self, job_id: uuid.UUID, attempt: int, *, now: datetime | None = None) -> JobRow | None:
        """The worker honours a cancel request: running (under `attempt`) with cancel requested -> canceled.

        Returns the canceled job, or None when the fence, the state or the flag did not match.
        """
        when = self._tx.now(now)
        with self._tx.begin() as conn:
            rows = update_jobs(
                conn,
                JobState.CANCELED,
                [jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.cancel_requested],
                {},
                from_states=frozenset({JobState.RUNNING}),
                now=when,
            )
        return rows[0] if rows else None

    def requeue_expired(self, now: datetime | None = None, *, retry_delay_s: float = 0.0) -> list[JobRow]:
        """Deal with running jobs whose lease expired before `now` and that have attempts left.

        Those with a cancel request become canceled (the user asked; running them again would be wrong), whatever
        their attempts; the others go back to queued, unpublished (`dispatched_at` NULL) so the reconciler publishes
        them, with no worker, not before `retry_delay_s` from now (`retry_at`). An expired lease counts as an
        attempt (the worker may have died of this job). Returns the changed jobs (look at `state` to tell which is
        which).
        """
        when = self._tx.now(now)
        expired = [jobs.c.lease_until < when]
        with self._tx.begin() as conn:
            canceled = update_jobs(
                conn,
                JobState.CANCELED,
                [*expired, jobs.c.cancel_requested],
                {},
                from_states=frozenset({JobState.RUNNING}),
                now=when,
            )
            requeued = update_jobs(
                conn,
                JobState.QUEUED,
                [*expired, sa.not_(jobs.c.cancel_requested), jobs.c.max_attempts > _ATTEMPTS_USED],
                {"retry_at": _retry_at(when, retry_delay_s)},
                now=when,
            )
        return canceled + requeued

    def fail_exhausted(self, now: datetime | None = None, *, limit: int = 1000) -> list[JobRow]:
        """Fail running jobs whose lease expired before `now` on their last allowed attempt.

        Error code `attempts_exhausted`, with a message naming the attempts and the last worker: a job that
        takes down its worker every time (a poison job) ends here instead of looping. Returns the failed jobs.
        """
        when = self._tx.now(now)
        expired = [
            jobs.c.state == JobState.RUNNING.value,
            jobs.c.lease_until < when,
            jobs.c.max_attempts <= _ATTEMPTS_USED,
            sa.not_(jobs.c.cancel_requested),
        ]
        failed: list[JobRow] = []
        with self._tx.begin() as conn:
            candidates = conn.execute(
                sa.select(jobs.c.id, jobs.c.attempt, jobs.c.max_attempts).where(*expired).limit(limit)
            ).all()
            # The message reaches the tenant: it names no worker (worker names carry the operator's host names).
            for job_id, attempt, max_attempts in candidates:
                error = JobError(
                    type="permanent",
                    code="attempts_exhausted",
                    message=(
                        f"the job was started {attempt} times (the limit is {max_attempts}) and each time its "
                        "worker stopped renewing its lease; the worker may have crashed, been killed or lost its "
                        "connection, possibly because of this job"
                    ),
                )
                # Fenced by the attempt seen, so a renewal that lands in between keeps the job alive.
                failed += update_jobs(
                    conn,
                    JobState.FAILED,
                    [*expired[1:], jobs.c.id == job_id, jobs.c.attempt == attempt],
                    {"error": error.to_dict()},
                    from_states=frozenset({JobState.RUNNING}),
                    now=when,
                )
        return failed

    def requeue(
        self,
        job_id: uuid.UUID,
        attempt: int,
        *,
        retry_delay_s: float,
        outage: ErrorLike | None = None,
        counts_as_attempt: bool = True,
        outage_deadline_s: float | None = None,
        now: datetime | None = None,
    ) -> JobRow | None:
        """A worker hands its running job back to the queue: queued, undispatched, not before `retry_delay_s`.

        Fenced by `attempt` (and the running state). `counts_as_attempt=False` gives the claim back to the job
        (`outage_requeues` + 1): the job itself did not fail (an outage, or the worker shutting down). With
        `outage` (the error of a storage or database outage), the outage clock starts (`outage_since`, if not
        already running) and, when `outage_deadline_s` has passed since it started, the job fails instead with
        code `outage_deadline_exceeded` and a message quoting `outage`. Returns the changed job (queued, or
        failed: look at `state`), or None when this attempt does not own the job any more.
        """
        when = self._tx.now(now)
        owned = [jobs.c.id == job_id, jobs.c.attempt == attempt]
        running = frozenset({JobState.RUNNING})
        with self._tx.begin() as conn:
            if outage is not None and outage_deadline_s is not None:
                cause = error_dict(outage)
                error = JobError(
                    type="transient",
                    code="outage_deadline_exceeded",
                    message=(
                        f"the job could not run for more than outage_deadline_s = {outage_deadline_s:g} s because "
                        f"of an outage ({cause['code']}: {cause['message']})"
                    ),
                )
                cutoff = when - timedelta(seconds=outage_deadline_s)
                failed = update_jobs(
                    conn,
                    JobState.FAILED,
                    [*owned, jobs.c.outage_since.is_not(None), jobs.c.outage_since <= cutoff],
                    {"error": error.to_dict()},
                    from_states=running,
                    now=when,
                )
                if failed:
                    return failed[0]
            values: dict[str, Any] = {"retry_at": _retry_at(when, retry_delay_s)}
            if not counts_as_attempt:
                values["outage_requeues"] = jobs.c.outage_requeues + 1
            if outage is not None:
                started = sa.bindparam(None, when, type_=UTCDateTime())
                values["outage_since"] = sa.func.coalesce(jobs.c.outage_since, started)
            rows = update_jobs(conn, JobState.QUEUED, owned, values, from_states=running, now=when)
        return rows[0] if rows else None

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
            values["error"] = error_dict(values["error"])
        where = [jobs.c.id == job_id]
        if expected_attempt is not None:
            where.append(jobs.c.attempt == expected_attempt)
        when = self._tx.now(now)
        with self._tx.begin() as conn:
            rows = update_jobs(conn, target, where, values, from_states=from_states, now=when)
        return bool(rows)

    # ----------------------------------------------------------------------------------------------------------
    # The sweep of uploads that no commit points to (reliability.md "Storage")

    def unswept_finished(self, grace_s: float, *, limit: int = 100, now: datetime | None = None) -> list[JobRow]:
        """Finished jobs that may have left objects of uncommitted attempts in storage, oldest first.

        Those that ended more than `grace_s` seconds ago, were claimed at least once and are not marked swept,
        except a job that succeeded at its first attempt (its only uploads are the committed ones).
        """
        cutoff = self._tx.now(now) - timedelta(seconds=grace_s)
        statement = (
            # The predicate of ix_jobs_unswept verbatim, so that PostgreSQL reads that small partial index.
            sa.select(jobs)
            .where(sa.text(UNSWEPT), jobs.c.finished_at < cutoff)
            .order_by(jobs.c.finished_at, jobs.c.id)
            .limit(limit)
        )
        with self._tx.begin(write=False) as conn:
            return [JobRow.from_mapping(row) for row in conn.execute(statement).mappings()]

    def mark_swept(self, job_id: uuid.UUID, *, now: datetime | None = None) -> bool:
        """Record that the job's uncommitted uploads were removed. Returns False when the job is not finished."""
        when = self._tx.now(now)
        terminal = [state.value for state in JobState if state.is_terminal]
        with self._tx.begin() as conn:
            rows = touch_jobs(conn, [jobs.c.id == job_id, jobs.c.state.in_(terminal)], {"storage_swept_at": when}, when)
        return bool(rows)
