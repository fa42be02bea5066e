"""The reconciler: brings the jobs table back in line with what workers and the broker really do.

Each run (every `settings.reconcile_interval_s` in the scheduler, or once with `renderfarm reconcile --once`):

1. Expired leases with attempts left: the worker died or hangs. The job goes back to `queued`, undispatched, not
   before `retry_backoff_base_s` (`retry_at`), and the dispatcher publishes it again (`on_requeue` wakes it). An
   expired job with a cancel request becomes `canceled`.
2. Expired leases on the last attempt: `failed` with code `attempts_exhausted` (a poison job ends here).
3. Lost messages (cluster mode): queued jobs dispatched more than `lost_grace_s` ago whose Redis marker
   `rf:dispatched:{id}` is gone (Redis restarted empty or was flushed) are made undispatched again, so the dispatcher
   re-publishes them. The embedded default has no Redis and an in-memory broker that only loses messages when the
   process ends: `reset_dispatch_on_startup` covers that case.
4. Stranded messages (cluster mode): queued jobs dispatched more than `dispatch_stranded_s` ago whose message is no
   longer waiting in the broker's queue were received by a worker that never claimed them (it died between the
   receipt and the claim; the broker would hand the message back only after its visibility timeout, hours). They are
   made undispatched again, which also frees their dispatch-window slot. A message still waiting in its queue is
   left alone (busy workers, not a dead one). A late redelivery of the old message is harmless: the claim is a
   conditional UPDATE, and a job waiting for its retry is not claimed.
5. Orphaned uploads: finished jobs that ended more than `orphan_sweep_grace_s` ago lose the objects that attempts
   which never committed left under their task's keys (needs `storage`).
6. Watchers of every changed job are notified, and a finished or re-queued job's live progress is cleared.
7. Retention (scheduler/purge.py): one bounded pass of the purge, when RENDERFARM_RETENTION_* or TENANT_RETENTION
   set a retention (needs `storage`).

Every change is one conditional UPDATE in shared.db, so two reconcilers (two scheduler processes) running at
once change each job once.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from scheduler.dispatch import Dispatcher, MarkerLoop, dispatched_marker
from scheduler.purge import PurgeReport, purge_once
from shared.config import Settings
from shared.db import Database, JobRow, make_engine
from shared.live import LiveStatus, events_key, open_live_status
from shared.queueing import make_celery_app
from shared.states import JobState
from shared.storage import Storage, open_storage

log = logging.getLogger(__name__)

# Seconds a dispatched job may lack its marker before its message counts as lost. The marker is set right after the
# publish, so this only has to cover that gap (and clock skew between schedulers); a larger value delays recovery
# after a Redis restart by as much.
DEFAULT_LOST_GRACE_S = 30.0
LOST_SCAN_LIMIT = 10_000  # dispatched jobs examined per run (in flight is at most a window per queue)
SWEEP_LIMIT = 100  # finished jobs whose uncommitted uploads are removed per run
DEFAULT_STOP_TIMEOUT_S = 30.0  # seconds `stop()` waits for the current run


@dataclass(frozen=True)
class ReconcileReport:
    """What one run changed, by job id. `published` counts messages sent by `main_once` after the run."""

    requeued: tuple[uuid.UUID, ...] = ()  # running, lease expired, attempts left -> queued (undispatched)
    canceled: tuple[uuid.UUID, ...] = ()  # running with a cancel request, lease expired -> canceled
    failed: tuple[uuid.UUID, ...] = ()  # running, lease expired on the last attempt -> failed (attempts_exhausted)
    lost: tuple[uuid.UUID, ...] = ()  # queued, dispatched, marker gone -> undispatched (re-published)
    lost_check_skipped: bool = False  # no Redis (embedded), or Redis could not be read this run
    stranded: tuple[uuid.UUID, ...] = ()  # queued, dispatched long ago, message taken and never claimed -> undispatched
    swept: tuple[uuid.UUID, ...] = ()  # finished jobs whose uncommitted uploads were removed
    purge: PurgeReport | None = None  # step 7, the retention purge (None: no retention set, or no storage)
    published: int = 0

    @property
    def changed(self) -> int:
        """How many jobs this run changed (the sweep changes no job's state, so it is not counted)."""
        return len(self.requeued) + len(self.canceled) + len(self.failed) + len(self.lost) + len(self.stranded)


def reset_dispatch_on_startup(db: Database) -> int:
    """Embedded start-up: make every queued job undispatched, because the in-memory broker starts empty.

    Call it before starting the dispatcher. Returns how many jobs were reset. Raises `DatabaseUnavailable`.
    Never call it in cluster mode while other schedulers run: their messages are still in Redis (harmless, but
    every in-flight job would be published twice).
    """
    count = db.outbox.reset_all_dispatch()
    if count:
        log.info("start-up: %d queued job(s) made undispatched (the in-memory broker starts empty)", count)
    return count


class Reconciler(MarkerLoop):
    """Requeues or fails jobs whose lease expired and recovers lost messages; see the module's docstring.

    Args:
        db: the farm's database (its clock decides what is expired).
        live: live status: progress of changed jobs is cleared, their watchers notified.
        settings: the farm's settings (`reconcile_interval_s`, `redis_url`).
        redis_url: where the dispatch markers live; None means `settings.redis_url`. Without one the lost-message
            check is skipped.
        lost_grace_s: seconds since `dispatched_at` before a missing marker counts as a lost message; None means
            `settings.reconcile_lost_grace_s`.
        on_requeue: called (no arguments) after a run that made jobs undispatched; pass `dispatcher.wake`.
        storage: where artifacts live; with it, uploads of attempts that never committed are swept (step 5).

    Raises `ValueError` for a negative grace.
    """

    def __init__(
        self,
        db: Database,
        live: LiveStatus,
        settings: Settings,
        *,
        redis_url: str | None = None,
        lost_grace_s: float | None = None,
        on_requeue: Callable[[], None] | None = None,
        storage: Storage | None = None,
    ) -> None:
        if lost_grace_s is None:
            lost_grace_s = settings.reconcile_lost_grace_s
        if lost_grace_s < 0:
            raise ValueError(f"lost_grace_s must be zero or more, not {lost_grace_s}")
        super().__init__("reconciler", DEFAULT_STOP_TIMEOUT_S, db, live, settings, redis_url)
        self._lost_grace_s = lost_grace_s
        self._on_requeue = on_requeue
        self._storage = storage
        self._run_lock = threading.Lock()

    def run_once(self) -> ReconcileReport:
        """One run of steps 1-6. Returns what changed.

        Raises `DatabaseUnavailable` when the database cannot be reached (what changed before that stays
        changed: each step is its own transaction). A Redis that cannot be read skips the lost-message check
        (`lost_check_skipped`): a missing answer must not be taken for missing markers.
        """
        with self._run_lock:
            expired = self._db.leases.requeue_expired(retry_delay_s=self._settings.retry_backoff_base_s)
            requeued = [job for job in expired if job.state is JobState.QUEUED]
            canceled = [job for job in expired if job.state is JobState.CANCELED]
            for job in requeued:
                log.warning(
                    "job %s (tenant %s, task %s): lease of attempt %d expired (worker %s); re-queued",
                    job.id,
                    job.tenant,
                    job.task_id,
                    job.attempt,
                    job.worker or "unknown",
                )
            for job in canceled:
                log.info("job %s: lease expired with a cancel request; canceled", job.task_id)

            failed = self._db.leases.fail_exhausted()
            for job in failed:
                log.warning(
                    "job %s (tenant %s, task %s): lease expired on attempt %d of %d; failed (attempts_exhausted)",
                    job.id,
                    job.tenant,
                    job.task_id,
                    job.attempt,
                    job.max_attempts,
                )

            lost, skipped = self._recover_lost()
            stranded = [] if skipped else self._recover_stranded()
            swept = self._sweep_orphans()
            purge = self._purge()

            # A re-queued or finished job's progress belongs to a dead attempt; a lost one has none to clear.
            self._update_live([*requeued, *canceled, *failed], clear=True)
            self._update_live([*lost, *stranded], clear=False)
            if (requeued or lost or stranded) and self._on_requeue is not None:
                try:
                    self._on_requeue()
                except Exception:
                    log.exception("the reconciler's on_requeue callback failed")
            return ReconcileReport(
                requeued=_ids(requeued),
                canceled=_ids(canceled),
                failed=_ids(failed),
                lost=_ids(lost),
                lost_check_skipped=skipped,
                stranded=_ids(stranded),
                swept=tuple(swept),
                purge=purge,
            )

    def _recover_lost(self) -> tuple[list[JobRow], bool]:
        """Step 3. Returns (jobs made undispatched, whether the check was skipped)."""
        if self._redis is None:
            return [], True
        stale = self._db.outbox.stale_dispatched_jobs(self._lost_grace_s, limit=LOST_SCAN_LIMIT)
        if not stale:
            return [], False
        try:
            pipe = self._redis.pipeline(transaction=False)
            for job in stale:
                pipe.exists(dispatched_marker(job.id))
            present = pipe.execute()
        except Exception:
            log.warning("cannot read the dispatch markers; lost-message check skipped this run", exc_info=True)
            return [], True
        missing = [job.id for job, found in zip(stale, present, strict=True) if not found]
        if not missing:
            return [], False
        # Fenced by the grace again: a job re-dispatched since the read above keeps its fresh dispatch.
        lost = self._db.outbox.reset_lost_dispatch(missing, self._lost_grace_s)
        for job in lost:
            log.warning(
                "job %s (queue %s): its message is lost (no dispatch marker in Redis); made undispatched to be "
                "published again",
                job.task_id,
                job.queue,
            )
        return lost, False

    def _recover_stranded(self) -> list[JobRow]:
        """Step 4. Returns the jobs made undispatched (none when the broker's queues cannot be read)."""
        if self._redis is None:
            return []
        bound_s = self._settings.dispatch_stranded_s
        stale = self._db.outbox.stale_dispatched_jobs(bound_s, limit=LOST_SCAN_LIMIT)
        if not stale:
            return []
        waiting = self._waiting_in_broker(sorted({job.queue for job in stale}))
        if waiting is None:
            return []
        candidates = [job.id for job in stale if job.id not in waiting]
        if not candidates:
            return []
        # Fenced by the bound again: a job claimed or re-dispatched since the read above is left alone.
        stranded = self._db.outbox.reset_lost_dispatch(candidates, bound_s)
        for job in stranded:
            log.warning(
                "job %s (queue %s): its message was taken from the broker more than %.0f s ago and the job was never "
                "claimed (the worker died before its claim); made undispatched to be published again",
                job.task_id,
                job.queue,
                bound_s,
            )
        return stranded

    def _waiting_in_broker(self, queues: list[str]) -> set[uuid.UUID] | None:
        """The jobs with a message still waiting in one of `queues` (kombu's Redis transport keeps a queue as a
        list named like it, each item a JSON message whose `headers.id` is `{job id}:{attempt}`), or None when
        the broker cannot be read or a message cannot be understood (then nothing counts as stranded)."""
        assert self._redis is not None
        try:
            pipe = self._redis.pipeline(transaction=False)
            for queue in queues:
                pipe.lrange(queue, 0, -1)
            lists = pipe.execute()
            waiting: set[uuid.UUID] = set()
            for items in lists:
                for raw in items:
                    task_id = str(json.loads(raw)["headers"]["id"])
                    waiting.add(uuid.UUID(task_id.partition(":")[0]))
        except Exception:
            log.warning("cannot read the broker's queues; stranded-message check skipped this run", exc_info=True)
            return None
        return waiting

    def _sweep_orphans(self) -> list[uuid.UUID]:
        """Step 5. Returns the jobs swept. A storage error ends the sweep for this run (the rest waits)."""
        if self._storage is None:
            return []
        swept: list[uuid.UUID] = []
        for job in self._db.leases.unswept_finished(self._settings.orphan_sweep_grace_s, limit=SWEEP_LIMIT):
            committed = {artifact.storage_key for artifact in self._db.jobs.artifacts_of(job.id)}
            try:
                orphans = [key for key in self._storage.list(f"{job.tenant}/{job.task_id}/") if key not in committed]
                for key in orphans:
                    self._storage.delete(key)
            except Exception as exc:
                log.warning("sweep of uncommitted uploads stopped (%s: %s); retrying next run", type(exc).__name__, exc)
                break
            if orphans:
                log.info("job %s: removed %d object(s) of attempts that never committed", job.task_id, len(orphans))
            self._db.leases.mark_swept(job.id)
            swept.append(job.id)
        return swept

    def _purge(self) -> PurgeReport | None:
        """Step 7: one bounded pass of the retention purge (scheduler/purge.py). An error ends it for this run."""
        policy = self._settings.retention_policy()
        if self._storage is None or not policy.enabled:
            return None
        try:
            return purge_once(self._db, self._storage, policy, limit=self._settings.purge_batch_size)
        except Exception as exc:
            log.warning("retention purge stopped (%s: %s); retrying next run", type(exc).__name__, exc)
            return None

    def _update_live(self, changed: Iterable[JobRow], *, clear: bool) -> None:
        tenants: set[str] = set()
        try:
            for job in changed:
                if clear:
                    self._live.clear(job.id)
                self._live.notify(job.id)
                tenants.add(job.tenant)
            for tenant in sorted(tenants):  # a job that ended wrote its tenant's events
                self._live.notify(events_key(tenant))
        except Exception:
            # Live status is a cache: a status read merges the durable row anyway.
            log.warning("could not update the live status of changed jobs", exc_info=True)

    # --------------------------------------------------------------------------------------------------------------
    # The loop

    def _loop(self) -> None:
        """`run_once` now and then every `settings.reconcile_interval_s` seconds. An exception in a run is logged
        and the loop goes on."""
        while not self._stopping.is_set():
            try:
                report = self.run_once()
                if report.changed:
                    log.info(
                        "reconciled: %d re-queued, %d canceled, %d failed, %d lost, %d stranded",
                        len(report.requeued),
                        len(report.canceled),
                        len(report.failed),
                        len(report.lost),
                        len(report.stranded),
                    )
            except Exception:
                log.exception("reconcile run failed; retrying in %.1f s", self._settings.reconcile_interval_s)
            self._stopping.wait(self._settings.reconcile_interval_s)


def _ids(rows: Iterable[JobRow]) -> tuple[uuid.UUID, ...]:
    return tuple(row.id for row in rows)


def main_once(settings: Settings) -> ReconcileReport:
    """`renderfarm reconcile --once`: one reconcile run against the configured database and Redis, then one
    dispatch round (cluster mode) so that re-queued, undispatched and lost jobs are published even when no
    scheduler runs. Returns the report (`published` counts the messages sent).

    In the embedded default the broker lives in memory inside the running `renderfarm` process, so a message
    published from this separate process would reach nobody: only leases are reconciled; the running process's
    dispatcher publishes the re-queued jobs at its next tick. Raises `DatabaseUnavailable` when the database cannot
    be reached.
    """
    engine = make_engine(settings.resolved_database_url)
    live = open_live_status(settings.redis_url)
    app = make_celery_app(settings)
    storage = open_storage(settings)
    try:
        db = Database(engine)
        reconciler = Reconciler(db, live, settings, storage=storage)
        dispatcher = None if settings.embedded else Dispatcher(db, app, live, settings)
        try:
            report = reconciler.run_once()
            if dispatcher is not None:
                report = replace(report, published=dispatcher.dispatch_once())
        finally:
            reconciler.stop()
            if dispatcher is not None:
                dispatcher.stop()
        log.info(
            "reconcile --once: %d re-queued, %d canceled, %d failed, %d lost, %d published",
            len(report.requeued),
            len(report.canceled),
            len(report.failed),
            len(report.lost),
            report.published,
        )
        return report
    finally:
        storage.close()
        app.close()
        live.close()
        engine.dispose()
