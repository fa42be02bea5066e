"""Run one delivery of one job: claim, render, upload, commit (docs/farm-design.md, "The worker's run of one job").

`run_job(job_id, delivered_attempt, deps)` is a plain function: the Celery task (`worker.tasks`) only calls it, and the
tests and benchmarks call it directly. Every outcome a job can reach is recorded in the database here; the function
returns a `RunOutcome` describing what happened (and how long each phase took) and raises only when nothing could be
claimed because the database is unreachable (`DatabaseUnavailable`: the message should be delivered again).

Error classification (what the job becomes):

    InputError (bad image, unknown model)        failed at once, with the field
    TransientError (storage, database), ConfigError   back to queued and undispatched (a new delivery), or failed
                                                       when its attempts are used up
    out of GPU memory                             retried once with the batch split in two, then failed `out_of_memory`
    cancel requested (live flag or row)           canceled, no artifacts
    LeaseLost (another attempt owns the job)      nothing written at all
    anything else                                 failed `render_failed` with the exception's message
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import torch
from PIL import Image

from shared.config import Settings
from shared.db import ArtifactRecord, Database, JobError, JobRow
from shared.errors import (
    ConfigError,
    DatabaseUnavailable,
    InputError,
    LeaseLost,
    NotFound,
    PermanentError,
    RenderfarmError,
    TransientError,
)
from shared.images import ImageLimits, encode_png
from shared.job.spec import Img2ImgJob
from shared.live import LiveProgress, LiveStatus, StopRequests
from shared.states import JobState
from shared.storage import Storage, artifact_key
from worker.asset_cache import AssetCache
from worker.engine.models import LoadedModel, ModelNotFound
from worker.engine.processing import Processed, Progress, StableDiffusionProcessingImg2Img, process_images
from worker.inputs import load_inputs
from worker.metrics import WORKER_METRICS

__all__ = [
    "PHASES",
    "Engine",
    "ModelSource",
    "RunOutcome",
    "WorkerDeps",
    "WorkerStats",
    "deterministic_seeds",
    "lease_seconds",
    "run_job",
    "smaller_batch",
]

logger = logging.getLogger(__name__)

PHASES: Final = ("claim", "model", "fetch_inputs", "render", "upload", "commit")
SEED_MODULUS: Final = 4294967294  # farm-design.md "A job's request as stored": seeds from the job's UUID
OOM_UNHEALTHY_AFTER: Final = 3  # consecutive out-of-memory jobs after which a worker should stop taking work
RENEW_FRACTION: Final = 1 / 3  # renew the lease every third of it
RENEW_RETRY_S: Final = 5.0  # after a failed renewal (database blip), try again this much later (seconds)
LIVE_BACKOFF_S: Final = 10.0  # after a live-status error, leave Redis alone this long (seconds) instead of every step
DRAIN_MARGIN: Final = 0.9  # on SIGTERM, stop a render that would not end within this share of the soft shutdown
UPLOAD_THREADS: Final = 8  # parallel artifact uploads (boto3 clients are thread-safe)
PNG_TYPE: Final = "image/png"

Engine = Callable[[StableDiffusionProcessingImg2Img], Processed]


class ModelSource(Protocol):
    """Where models come from (a `worker.engine.models.ModelCache`): `get(name)` returns a loaded model or raises."""

    def get(self, name: str) -> LoadedModel: ...


@dataclass
class WorkerStats:
    """Per-worker counters (mutable, shared by the jobs of one worker process). Thread-safe."""

    jobs: int = 0
    ooms: int = 0
    consecutive_ooms: int = 0
    draining_since: float | None = None  # monotonic seconds when a warm shutdown began (SIGTERM)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_job(self, out_of_memory: bool) -> None:
        with self._lock:
            self.jobs += 1
            self.consecutive_ooms = self.consecutive_ooms + 1 if out_of_memory else 0

    def record_oom(self) -> None:
        with self._lock:
            self.ooms += 1

    def start_draining(self, now: float) -> None:
        with self._lock:
            if self.draining_since is None:
                self.draining_since = now

    @property
    def unhealthy(self) -> bool:
        """True after OOM_UNHEALTHY_AFTER jobs in a row ran out of GPU memory: the worker should stop taking work."""
        return self.consecutive_ooms >= OOM_UNHEALTHY_AFTER


@dataclass(frozen=True)
class WorkerDeps:
    """Everything `run_job` needs, built once per worker process (after fork). `stats` is the one mutable part.

    `clock` is monotonic seconds (throttling, lease renewal); `wall_clock` Unix seconds (live progress times).
    `engine` renders a processing object: `process_images`, or `worker.standin.StandinEngine` for benchmarks.
    """

    settings: Settings
    db: Database
    storage: Storage
    live: LiveStatus
    models: ModelSource
    worker_name: str
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    engine: Engine = process_images
    stats: WorkerStats = field(default_factory=WorkerStats)
    assets: AssetCache = field(default_factory=AssetCache)  # verified input assets, kept between jobs

    @property
    def image_limits(self) -> ImageLimits:
        # Stored inputs were admitted by the API (uploads up to a request body); the worker only guards against
        # decompression bombs and absurd files, so its byte limit is the request limit, not the inline one.
        return ImageLimits(max_pixels=self.settings.max_image_pixels, max_bytes=self.settings.max_request_bytes)


@dataclass(frozen=True)
class RunOutcome:
    """What one delivery did.

    state: "skipped" (not claimed: duplicate, canceled or unknown), "succeeded", "failed", "canceled", "requeued"
    (back to queued for a new delivery), "lease_lost" (another attempt owns the job; nothing written) or
    "unrecorded" (the database failed while recording the end; the lease expires and the reconciler takes over).
    timings_ms: milliseconds per phase of PHASES (0 for phases not reached). progress_writes: live progress writes.
    callbacks_ms: milliseconds spent in the step callback (part of "render": progress writes, stop checks, lease
    renewals), what the farm adds inside the engine's own time.
    """

    job_id: uuid.UUID
    state: str
    attempt: int | None
    artifacts: int = 0
    timings_ms: Mapping[str, float] = field(default_factory=lambda: types.MappingProxyType(dict.fromkeys(PHASES, 0.0)))
    progress_writes: int = 0
    error_code: str | None = None
    callbacks_ms: float = 0.0


# ----------------------------------------------------------------------------------------------------------------
# Pure helpers


def deterministic_seeds(job: Img2ImgJob, job_id: uuid.UUID) -> Img2ImgJob:
    """The job with `seed = -1` / `subseed = -1` resolved from its UUID, so every attempt renders the same pixels."""
    update: dict[str, int] = {}
    if job.seed == -1:
        update["seed"] = job_id.int % SEED_MODULUS
    if job.subseed == -1:
        update["subseed"] = (job_id.int >> 32) % SEED_MODULUS
    return job.model_copy(update=update) if update else job


def lease_seconds(job: Img2ImgJob, settings: Settings) -> float:
    """The job's lease in seconds: base + steps × megapixels × n_iter × factor, capped at the job deadline.

    Megapixels counts the whole batch (width × height × images per batch), since a batch of 8 takes about 8 times as
    long per step as one image.
    """
    megapixels = job.width * job.height * job.effective_batch_size / 1e6
    lease = settings.lease_base_s + job.steps * megapixels * job.n_iter * settings.lease_s_per_step_megapixel
    return min(lease, settings.job_deadline_max_s)


def smaller_batch(job: Img2ImgJob) -> Img2ImgJob | None:
    """The job split into batches of half the size or less (more n_iter, same images and seeds), or None.

    None when the batch cannot be split: one image per batch, or one init image per batch slot (the slots would
    change pictures).
    """
    size = job.batch_size
    if size <= 1 or len(job.init_images) > 1:
        return None
    smaller = max(d for d in range(1, size // 2 + 1) if size % d == 0)
    return job.model_copy(update={"batch_size": smaller, "n_iter": job.n_iter * (size // smaller)})


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError whose message says so (older kernels, other backends)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# Private control flow


class _Canceled(Exception):
    """Raised from the step callback when the job's cancel flag is up."""


class _Draining(Exception):
    """Raised from the step callback when the worker is shutting down and the render would not finish in time."""


class _OutOfMemory(Exception):
    """The render ran out of GPU memory twice (whole batch, then split)."""


class _Timings:
    def __init__(self) -> None:
        self.ms: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] += (time.perf_counter() - start) * 1000.0


class _LiveGuard:
    """Best-effort live status: Redis may lose everything, and the job's durable state never depends on it, so a
    failing live store is logged and then left alone for LIVE_BACKOFF_S instead of slowing every step."""

    def __init__(self, live: LiveStatus, clock: Callable[[], float]) -> None:
        self._live = live
        self._clock = clock
        self._paused_until = float("-inf")

    def call(self, what: str, fn: Callable[[], Any], default: Any = None) -> Any:
        now = self._clock()
        if now < self._paused_until:
            return default
        try:
            return fn()
        except Exception as exc:  # the live store is optional: any failure of it must not fail the job
            logger.warning("live status %s failed (%s); ignoring it for %.0f s", what, exc, LIVE_BACKOFF_S)
            self._paused_until = now + LIVE_BACKOFF_S
            return default


@dataclass
class _Run:
    """One claimed attempt: its identity, lease and the dependencies."""

    job_id: uuid.UUID
    attempt: int
    row: JobRow
    lease_s: float
    deps: WorkerDeps
    timings: _Timings
    live: _LiveGuard
    progress_writes: int = 0
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
        )

    def renew(self) -> None:
        """Extend the lease. Raises LeaseLost when another attempt owns the job, _Canceled when cancel was asked."""
        deps = self.deps
        now = deps.clock()
        try:
            status = deps.db.leases.renew_lease(self.job_id, self.attempt, self.lease_s)
        except DatabaseUnavailable as exc:
            # The lease still has two thirds left; the fenced commit catches a takeover that happens meanwhile.
            logger.warning("job %s: lease renewal failed (%s); retrying in %.0f s", self.job_id, exc, RENEW_RETRY_S)
            self.next_renewal = now + min(RENEW_RETRY_S, self.lease_s * RENEW_FRACTION)
            return
        self.next_renewal = now + self.lease_s * RENEW_FRACTION
        if not status.held:
            raise LeaseLost(f"attempt {self.attempt} of job {self.job_id} lost its lease")
        if status.cancel_requested:
            raise _Canceled

    def finished(self) -> None:
        """After a terminal transition (or a requeue): drop the live record, wake the job's watchers."""
        self.live.call("clear", lambda: self.deps.live.clear(self.job_id))
        self.live.call("notify", lambda: self.deps.live.notify(self.job_id))


class _StepHook:
    """The progress callback: cancel check every step, lease renewal every third of it, throttled progress writes."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        deps = run.deps
        self._interval = deps.settings.progress_interval_s
        self._started_mono = deps.clock()
        self._started_wall = deps.wall_clock()
        self._last_write = float("-inf")
        self._soft_shutdown_s = deps.settings.worker_soft_shutdown_s
        # A1111 interrupt / skip (scheduler/a1111): the processing object to stop, set by _render_once, and how
        # many skip requests have been honoured (the live skip count only grows; each new one ends one batch).
        self.processing: StableDiffusionProcessingImg2Img | None = None
        self._skips_seen = 0

    def __call__(self, progress: Progress) -> None:
        started = time.perf_counter()
        try:
            self._step(progress)
        finally:
            self._run.callbacks_s += time.perf_counter() - started

    def _step(self, progress: Progress) -> None:
        run, deps = self._run, self._run.deps
        WORKER_METRICS.step(run.row.model)
        # Cancel, A1111 interrupt and skip in one read (a round trip to Redis per step).
        requests = run.live.call("stop check", lambda: deps.live.stop_requests(run.job_id), default=None)
        if requests is not None:
            if requests.cancel:
                raise _Canceled
            self._apply_stop_requests(requests)
        now = deps.clock()
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
                raise _Draining

    def _apply_stop_requests(self, requests: StopRequests) -> None:
        """Honour A1111 interrupt / skip like the webui's buttons: p.interrupt() keeps the current batch (decoded
        from its last x0) and runs no further batch, so the job still succeeds; p.skip() ends only this batch."""
        p = self.processing
        if p is None:
            return
        if requests.interrupt and not p.interrupted:
            p.interrupt()
        if requests.skips > self._skips_seen:
            self._skips_seen = requests.skips
            p.skip()

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
        )
        run.live.call("progress write", lambda: deps.live.set_progress(record))


# ----------------------------------------------------------------------------------------------------------------
# The run


def run_job(job_id: uuid.UUID, delivered_attempt: int, deps: WorkerDeps) -> RunOutcome:
    """Run one delivery of job `job_id` (its message said attempt `delivered_attempt`) and record how it ended.

    Returns the outcome; job-level failures are recorded in the database, never raised. Raises DatabaseUnavailable
    only when the job could not be claimed because the database is unreachable (nothing changed; deliver again).
    """
    timings = _Timings()
    live = _LiveGuard(deps.live, deps.clock)
    with timings.phase("claim"):
        try:
            row = deps.db.jobs.get_by_id(job_id)
        except NotFound:
            logger.warning("job %s: unknown job; acking its message", job_id)
            return RunOutcome(job_id, "skipped", None, timings_ms=types.MappingProxyType(timings.ms))
        job: Img2ImgJob | None = None
        spec_error: InputError | None = None
        try:
            job = Img2ImgJob.from_request_json(row.request)
        except InputError as exc:
            spec_error = exc  # claimed below all the same, so that the failure is recorded under an attempt
        lease_s = lease_seconds(job, deps.settings) if job is not None else deps.settings.lease_base_s
        claimed = deps.db.leases.claim(job_id, deps.worker_name, lease_s)
    if claimed is None:
        logger.info("job %s: not queued (duplicate or canceled delivery %s); skipped", job_id, delivered_attempt)
        return RunOutcome(job_id, "skipped", None, timings_ms=types.MappingProxyType(dict(timings.ms)))
    attempt = claimed.attempt
    if attempt != delivered_attempt + 1:
        logger.info("job %s: message of attempt %s runs as attempt %s", job_id, delivered_attempt, attempt)
    run = _Run(job_id, attempt, row, lease_s, deps, timings, live)
    run.next_renewal = deps.clock() + lease_s * RENEW_FRACTION
    live.call("notify", lambda: deps.live.notify(job_id))
    WORKER_METRICS.job_started()
    outcome = _run_claimed(run, job, spec_error)
    WORKER_METRICS.record_outcome(outcome, row.model)
    return outcome


def _run_claimed(run: _Run, job: Img2ImgJob | None, spec_error: InputError | None) -> RunOutcome:
    """Everything after a successful claim; returns how the delivery ended."""
    attempt, row, deps = run.attempt, run.row, run.deps
    if attempt > row.max_attempts:
        error = JobError(
            type="permanent",
            code="attempts_exhausted",
            message=f"the job was delivered {attempt} times; the limit is {row.max_attempts} attempts",
        )
        return _fail(run, error)
    if spec_error is not None or job is None:
        assert spec_error is not None
        return _fail(run, JobError.from_exception(spec_error))
    outcome = _execute(run, deterministic_seeds(job, run.job_id))
    deps.stats.record_job(out_of_memory=outcome.error_code == "out_of_memory")
    return outcome


def _execute(run: _Run, job: Img2ImgJob) -> RunOutcome:
    """Everything after the claim, with the error classification of the module docstring."""
    try:
        return _render_upload_commit(run, job)
    except _Canceled:
        return _cancel(run)
    except LeaseLost as exc:
        logger.warning("job %s: %s; stopping without writing anything", run.job_id, exc)
        return run.outcome("lease_lost", error_code="lease_lost")
    except _Draining:
        logger.info("job %s: worker shutting down; returning the job to the queue", run.job_id)
        return _requeue(run, None)
    except _OutOfMemory as exc:
        return _fail(run, JobError("permanent", "out_of_memory", str(exc)))
    except ModelNotFound as exc:
        return _fail(run, JobError("invalid_request", exc.code, exc.message, field="model"))
    except InputError as exc:
        return _fail(run, JobError.from_exception(exc))
    except (TransientError, ConfigError) as exc:
        # ConfigError here is the worker's own setup (storage refusing us): another worker may be set up right.
        logger.warning("job %s: %s: %s", run.job_id, type(exc).__name__, exc.message)
        return _requeue(run, exc)
    except PermanentError as exc:
        return _fail(run, JobError.from_exception(exc))
    except Exception as exc:  # never leave a job running: anything unexpected fails it with its message
        logger.exception("job %s: render failed", run.job_id)
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return _fail(run, JobError("permanent", "render_failed", message))


def _render_upload_commit(run: _Run, job: Img2ImgJob) -> RunOutcome:
    deps = run.deps
    with run.timings.phase("model"):
        model = deps.models.get(job.resolved_model or deps.settings.model)
    with run.timings.phase("fetch_inputs"):
        inputs = load_inputs(
            job,
            run.row.tenant,
            deps.storage,
            deps.image_limits,
            public_url=deps.settings.public_url,
            cache=deps.assets,
        )
    with run.timings.phase("render"):
        processed, warnings = _render(run, job, model, inputs)
    # A takeover during the render's last third, or a cancel at the very end, is caught here before any upload.
    run.renew()
    with run.timings.phase("upload"):
        records = _upload(run, processed)
    with run.timings.phase("commit"):
        try:
            deps.db.leases.succeed(run.job_id, run.attempt, records, warnings=warnings)
        except LeaseLost as exc:
            logger.warning("job %s: commit refused (%s); removing this attempt's uploads", run.job_id, exc)
            _delete_quietly(deps.storage, [record.storage_key for record in records])
            return run.outcome("lease_lost", error_code="lease_lost")
        except DatabaseUnavailable as exc:
            logger.error("job %s: cannot record success (%s); the reconciler will retry the job", run.job_id, exc)
            return run.outcome("unrecorded", error_code=exc.code)
    run.finished()
    return run.outcome("succeeded", artifacts=len(records))


def _render(
    run: _Run,
    job: Img2ImgJob,
    model: LoadedModel,
    inputs: tuple[list[Image.Image], Image.Image | None, Image.Image | None],
) -> tuple[Processed, list[dict[str, str]]]:
    """Render the job; on out of GPU memory free memory and retry once with a smaller batch. Raises _OutOfMemory."""
    init_images, mask, latent_mask = inputs
    hook = _StepHook(run)
    current = job
    notes: list[dict[str, str]] = []
    oom_message = ""
    for try_no in (1, 2):
        try:
            processed = _render_once(run.deps.engine, current, model, init_images, mask, latent_mask, hook)
            warnings = [{"code": w.code, "message": w.message} for w in processed.warnings]
            return processed, notes + warnings
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            oom_message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Outside the except block: the traceback (and the tensors its frames hold) is gone, so memory can be freed.
        run.deps.stats.record_oom()
        WORKER_METRICS.oom(run.row.model)
        _free_memory()
        logger.warning("job %s: out of GPU memory (try %d): %s", run.job_id, try_no, oom_message)
        if try_no == 2:
            break
        split = smaller_batch(current)
        if split is not None:
            notes.append(
                {
                    "code": "batch_split",
                    "message": f"out of GPU memory with batch_size {current.batch_size}; rendered as "
                    f"{split.n_iter} batches of {split.batch_size} (same images and seeds)",
                }
            )
            current = split
    raise _OutOfMemory(
        f"the render ran out of GPU memory twice (batch_size {job.batch_size}, then {current.batch_size}, "
        f"{job.width}×{job.height}): {oom_message}; use a smaller batch_size or size"
    )


def _render_once(
    engine: Engine,
    job: Img2ImgJob,
    model: LoadedModel,
    init_images: list[Image.Image],
    mask: Image.Image | None,
    latent_mask: Image.Image | None,
    hook: _StepHook,
) -> Processed:
    # Its own function so that the processing object and its tensors die with this frame when the render fails.
    p = StableDiffusionProcessingImg2Img.from_job(
        job, sd_model=model, init_images=init_images, mask=mask, latent_mask=latent_mask
    )
    p.progress_callback = hook
    hook.processing = p  # so that A1111 interrupt / skip requests reach this render
    return engine(p)


def _upload(run: _Run, processed: Processed) -> list[ArtifactRecord]:
    """Encode and upload every output under its deterministic key; returns the artifact records (in order)."""
    deps, row = run.deps, run.row
    items: list[tuple[str, int, Image.Image, str | None, int | None]] = []
    for i, image in enumerate(processed.images):
        seed = processed.seeds[i] if i < len(processed.seeds) else None
        items.append(("result", i, image, processed.infotexts[i] if i < len(processed.infotexts) else None, seed))
        overlay = processed.overlay_images[i] if i < len(processed.overlay_images) else None
        if overlay is not None:
            items.append(("overlay", i, overlay, None, seed))
        mask = processed.masks[i] if i < len(processed.masks) else None
        if mask is not None:
            items.append(("mask", i, mask, None, seed))

    def put(item: tuple[str, int, Image.Image, str | None, int | None]) -> ArtifactRecord:
        kind, index, image, infotext, seed = item
        data = encode_png(image, infotext)
        key = artifact_key(row.tenant, row.task_id, run.attempt, kind, index)
        stored = deps.storage.put(key, data, PNG_TYPE)
        return ArtifactRecord(
            kind=kind,
            index=index,
            storage_key=key,
            sha256=stored.sha256,
            bytes=stored.size,
            width=image.width,
            height=image.height,
            seed=seed,
            infotext=infotext,
        )

    if len(items) <= 1:
        return [put(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(items)), thread_name_prefix="rf-upload") as pool:
        return list(pool.map(put, items))


def _delete_quietly(storage: Storage, keys: Sequence[str]) -> None:
    for key in keys:
        try:
            storage.delete(key)
        except Exception as exc:  # orphans under an old attempt's keys are harmless; never fail over them
            logger.warning("cannot delete %s: %s", key, exc)


# ----------------------------------------------------------------------------------------------------------------
# Recording the end


def _fail(run: _Run, error: JobError) -> RunOutcome:
    try:
        row = run.deps.db.leases.fail(run.job_id, run.attempt, error)
    except DatabaseUnavailable as exc:
        logger.error("job %s: cannot record failure %s (%s)", run.job_id, error.code, exc)
        return run.outcome("unrecorded", error_code=error.code)
    if row is None:
        logger.warning("job %s: attempt %s no longer owns the job; not failed", run.job_id, run.attempt)
        return run.outcome("lease_lost", error_code="lease_lost")
    logger.info("job %s: failed (%s): %s", run.job_id, error.code, error.message)
    run.finished()
    return run.outcome("failed", error_code=error.code)


def _cancel(run: _Run) -> RunOutcome:
    db = run.deps.db
    try:
        canceled = db.leases.cancel_running(run.job_id, run.attempt) is not None
        if not canceled:
            # Only the live flag was up (the row's flag is set first by the API, so this is rare): honour the user's
            # cancel all the same, fenced by the attempt.
            canceled = db.leases.transition(
                run.job_id,
                JobState.CANCELED,
                expected_attempt=run.attempt,
                from_states=frozenset({JobState.RUNNING}),
                cancel_requested=True,
            )
    except DatabaseUnavailable as exc:
        logger.error("job %s: cannot record the cancel (%s)", run.job_id, exc)
        return run.outcome("unrecorded", error_code="canceled")
    if not canceled:
        return run.outcome("lease_lost", error_code="lease_lost")
    logger.info("job %s: canceled at the user's request", run.job_id)
    run.finished()
    return run.outcome("canceled")


def _requeue(run: _Run, exc: RenderfarmError | None) -> RunOutcome:
    """Back to queued and undispatched for a new delivery; failed instead when this was the last attempt."""
    if exc is not None and run.attempt >= run.row.max_attempts:
        return _fail(
            run,
            JobError(
                exc.type,
                exc.code,
                f"{exc.message} (attempt {run.attempt} of {run.row.max_attempts}; no attempts left)",
            ),
        )
    try:
        moved = run.deps.db.leases.transition(
            run.job_id, JobState.QUEUED, expected_attempt=run.attempt, from_states=frozenset({JobState.RUNNING})
        )
    except DatabaseUnavailable as db_exc:
        logger.error("job %s: cannot return the job to the queue (%s)", run.job_id, db_exc)
        return run.outcome("unrecorded", error_code=None if exc is None else exc.code)
    if not moved:
        return run.outcome("lease_lost", error_code="lease_lost")
    run.finished()
    return run.outcome("requeued", error_code=None if exc is None else exc.code)
