"""The engine's step callback for one claimed run (`StepHook`): cancel, interrupt and skip checks, lease renewal,
live previews while watched (worker/preview_publisher.py), throttled live progress, and the stop of a render that a
shutting-down worker could not finish."""

from __future__ import annotations

import time
from typing import Any, Final

from shared.job.stops import STOP_INTERRUPTED, STOP_SKIPPED, stop_warning
from shared.live import LiveProgress, StopRequests
from worker.claimed_run import CancelRequested, ClaimedRun
from worker.engine.processing import Progress, StableDiffusionProcessingImg2Img
from worker.metrics import WORKER_METRICS
from worker.preview_publisher import PreviewPublisher

DRAIN_MARGIN: Final = 0.9  # on SIGTERM, stop a render that would not end within this share of the soft shutdown


class Draining(Exception):
    """Raised from the step callback when the worker is shutting down and the render would not finish in time."""


class StepHook:
    """The progress callback: cancel check every step, lease renewal every third of it, throttled progress writes."""

    def __init__(self, run: ClaimedRun) -> None:
        self._run = run
        deps = run.deps
        self._interval = deps.settings.progress_interval_s
        self._started_mono = deps.clock()
        self._started_wall = deps.wall_clock()
        self._last_write = float("-inf")
        self._soft_shutdown_s = deps.settings.worker_soft_shutdown_s
        # A1111 interrupt / skip (scheduler/a1111): the processing object to stop, set by the job runner's
        # _render_once, and how many skip requests have been honoured (the live skip count only grows; each new one
        # ends one batch).
        self.processing: StableDiffusionProcessingImg2Img | None = None
        self._skips_seen = 0
        # Where each kind of stop was honoured (whole-job step), for the job's warnings (shared/job/stops.py).
        self._stops: dict[str, int] = {}
        self._total_steps = 0
        self.previews = PreviewPublisher(
            str(run.job_id),
            run.attempt,
            lambda record: run.live.call("preview write", lambda: deps.live.set_preview(record)),
            deps.settings.models_dir,
            deps.previews,
        )

    def __call__(self, progress: Progress) -> None:
        started = time.perf_counter()
        try:
            self._step(progress)
        finally:
            self._run.callbacks_s += time.perf_counter() - started

    def _step(self, progress: Progress) -> None:
        run, deps = self._run, self._run.deps
        WORKER_METRICS.step(run.row.model)
        # Cancel, A1111 interrupt and skip, and whether a client watches previews, in one read (a round trip to
        # Redis per step).
        requests = run.live.call("stop check", lambda: deps.live.stop_requests(run.job_id), default=None, reads=True)
        if requests is not None:
            if requests.cancel:
                raise CancelRequested
            self._apply_stop_requests(requests, progress)
        self.previews.on_step(progress, requests is not None and requests.watched, self.processing)
        now = deps.clock()
        deps.status.record_step(
            progress.job_no * progress.total_steps + progress.step, progress.job_count * progress.total_steps, now
        )
        if now >= run.next_renewal:
            run.renew()
        fraction = progress.fraction
        elapsed = now - self._started_mono
        eta = elapsed / fraction * (1.0 - fraction) if fraction > 0 else None
        last = fraction >= 1.0
        if run.progress_writes == 0 or last or now - self._last_write >= self._interval:
            self._write(progress, fraction, eta)
            self._last_write = now
        draining = deps.stats.draining_since
        if draining is not None and not last:
            deadline = draining + self._soft_shutdown_s * DRAIN_MARGIN
            if eta is None or now + eta > deadline:
                raise Draining

    def stop_warnings(self) -> list[dict[str, Any]]:
        """The `interrupted` / `skipped` warnings of the stops honoured in this render (none without a stop)."""
        return [stop_warning(code, step, self._total_steps) for code, step in self._stops.items()]

    def _apply_stop_requests(self, requests: StopRequests, progress: Progress) -> None:
        """Honour A1111 interrupt / skip like the webui's buttons: p.interrupt() keeps the current batch (decoded
        from its last x0) and runs no further batch, so the job still succeeds; p.skip() ends only this batch."""
        p = self.processing
        if p is None:
            return
        whole_job_step = progress.job_no * progress.total_steps + progress.step
        self._total_steps = progress.job_count * progress.total_steps
        # Recorded only where the stop cuts something: the engine finishes a batch's last step anyway, so a skip
        # there changes nothing, nor does an interrupt at the last step of the last batch.
        steps_left = progress.step + 1 < progress.total_steps
        if requests.interrupt and not p.interrupted:
            p.interrupt()
            if steps_left or progress.job_no + 1 < progress.job_count:
                self._stops[STOP_INTERRUPTED] = whole_job_step
        if requests.skips > self._skips_seen:
            self._skips_seen = requests.skips
            p.skip()
            if steps_left:
                self._stops[STOP_SKIPPED] = whole_job_step

    def _write(self, progress: Progress, fraction: float, eta: float | None) -> None:
        run, deps = self._run, self._run.deps
        run.progress_writes += 1
        record = LiveProgress(
            job_id=str(run.job_id),
            attempt=run.attempt,
            step=progress.step,
            total_steps=progress.total_steps,
            job_no=progress.job_no,
            job_count=progress.job_count,
            fraction=round(fraction, 4),
            eta_s=None if eta is None else round(eta, 3),
            started_at=self._started_wall,
            updated_at=deps.wall_clock(),
            worker=deps.worker_name,
            seq=run.progress_writes,
            preview_id=self.previews.latest_id,
        )
        run.live.call("progress write", lambda: deps.live.set_progress(record))
