"""One claimed attempt of a job (`ClaimedRun`): its lease (how long, `lease_seconds`; renewed every third of it)
and its best-effort live status (`LiveGuard`)."""

from __future__ import annotations

import logging
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from shared.config import Settings
from shared.db import JobRow
from shared.errors import DatabaseUnavailable, LeaseLost
from shared.job.spec import Img2ImgJob
from shared.live import LiveStatus, events_key
from worker.deps import WorkerDeps
from worker.run_outcome import PhaseTimings, RunOutcome

logger = logging.getLogger(__name__)

RENEW_FRACTION: Final = 1 / 3  # renew the lease every third of it
RENEW_RETRY_S: Final = 5.0  # after a failed renewal (database blip), try again this much later (seconds)
LIVE_BACKOFF_S: Final = 10.0  # after a live-status error, leave Redis alone this long (seconds) instead of every step


def lease_seconds(job: Img2ImgJob, settings: Settings) -> float:
    """The job's lease in seconds: base + steps × megapixels × n_iter × factor, capped at the job deadline.

    Megapixels counts the whole batch (width × height × images per batch), since a batch of 8 takes about 8 times as
    long per step as one image.
    """
    megapixels = job.width * job.height * job.effective_batch_size / 1e6
    lease = settings.lease_base_s + job.steps * megapixels * job.n_iter * settings.lease_s_per_step_megapixel
    return min(lease, settings.job_deadline_max_s)


class CancelRequested(Exception):
    """Raised from the step callback or a lease renewal when the job's cancel was asked (live flag or row)."""


class LiveGuard:
    """Best-effort live status: Redis may lose everything, and the job's durable state never depends on it, so a
    failing live store is logged and then left alone for LIVE_BACKOFF_S instead of slowing every step.

    Reads (`reads=True`: the stop check of every step) and writes (progress, previews, wake-ups) are left alone
    apart: a write that fails (a preview too large, one slow round trip) must not stop the job from seeing a
    cancel, interrupt or skip for the next LIVE_BACKOFF_S; both fail alike when the store is down."""

    def __init__(self, live: LiveStatus, clock: Callable[[], float]) -> None:
        self._live = live
        self._clock = clock
        self._paused_until = {False: float("-inf"), True: float("-inf")}  # by `reads`

    def call(self, what: str, fn: Callable[[], Any], default: Any = None, *, reads: bool = False) -> Any:
        now = self._clock()
        if now < self._paused_until[reads]:
            return default
        try:
            return fn()
        except Exception as exc:  # the live store is optional: any failure of it must not fail the job
            logger.warning("live status %s failed (%s); ignoring it for %.0f s", what, exc, LIVE_BACKOFF_S)
            self._paused_until[reads] = now + LIVE_BACKOFF_S
            return default


@dataclass
class ClaimedRun:
    """One claimed attempt: its identity, lease and the dependencies."""

    job_id: uuid.UUID
    attempt: int
    row: JobRow
    lease_s: float
    deps: WorkerDeps
    timings: PhaseTimings
    live: LiveGuard
    progress_writes: int = 0

    @property
    def name(self) -> str:
        """The job as its log lines name it: the user's task id (what they search for), not the row's UUID."""
        return self.row.task_id

    next_renewal: float = 0.0
    callbacks_s: float = 0.0  # time in the step callback (perf_counter seconds)

    def outcome(self, state: str, *, artifacts: int = 0, error_code: str | None = None) -> RunOutcome:
        return RunOutcome(
            job_id=self.job_id,
            state=state,
            attempt=self.attempt,
            artifacts=artifacts,
            timings_ms=types.MappingProxyType(dict(self.timings.ms)),
            progress_writes=self.progress_writes,
            error_code=error_code,
            callbacks_ms=self.callbacks_s * 1000.0,
            task_id=self.row.task_id,
        )

    def renew(self) -> None:
        """Extend the lease.

        Raises LeaseLost when another attempt owns the job, CancelRequested when cancel was asked.
        """
        deps = self.deps
        now = deps.clock()
        try:
            status = deps.db.leases.renew_lease(self.job_id, self.attempt, self.lease_s)
        except DatabaseUnavailable as exc:
            # The lease still has two thirds left; the fenced commit catches a takeover that happens meanwhile.
            logger.warning("job %s: lease renewal failed (%s); retrying in %.0f s", self.name, exc, RENEW_RETRY_S)
            self.next_renewal = now + min(RENEW_RETRY_S, self.lease_s * RENEW_FRACTION)
            return
        self.next_renewal = now + self.lease_s * RENEW_FRACTION
        if not status.held:
            raise LeaseLost(f"attempt {self.attempt} of job {self.job_id} lost its lease")
        if status.cancel_requested:
            raise CancelRequested

    def finished(self) -> None:
        """After a terminal transition (or a requeue): drop the live record, wake the job's watchers and the
        long polls of its tenant's event feed."""
        self.live.call("clear", lambda: self.deps.live.clear(self.job_id))
        self.live.call("notify", lambda: self.deps.live.notify(self.job_id))
        self.live.call("events notify", lambda: self.deps.live.notify(events_key(self.row.tenant)))
