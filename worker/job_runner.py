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

import logging
import types
import uuid

from PIL import Image

from shared.db import JobError
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
from shared.job.seeds import resolved_seeds
from shared.job.spec import Img2ImgJob
from shared.states import JobState
from worker.artifact_upload import delete_quietly, upload_artifacts
from worker.claimed_run import RENEW_FRACTION, CancelRequested, ClaimedRun, LiveGuard, lease_seconds
from worker.deps import WorkerDeps
from worker.engine.models import LoadedModel, ModelNotFound
from worker.engine.processing import Processed, StableDiffusionProcessingImg2Img
from worker.inputs import load_inputs
from worker.metrics import WORKER_METRICS
from worker.out_of_memory import free_memory, is_out_of_memory, smaller_batch
from worker.run_outcome import PhaseTimings, RunOutcome
from worker.step_hook import Draining, StepHook

__all__ = ["deterministic_seeds", "run_job"]

logger = logging.getLogger(__name__)


def deterministic_seeds(job: Img2ImgJob, job_id: uuid.UUID) -> Img2ImgJob:
    """The job with `seed = -1` / `subseed = -1` resolved from its UUID, so every attempt renders the same pixels."""
    seed, subseed = resolved_seeds(job.seed, job.subseed, job_id)
    if (seed, subseed) == (job.seed, job.subseed):
        return job
    return job.model_copy(update={"seed": seed, "subseed": subseed})


class _OutOfMemory(Exception):
    """The render ran out of GPU memory twice (whole batch, then split)."""


def run_job(job_id: uuid.UUID, delivered_attempt: int, deps: WorkerDeps) -> RunOutcome:
    """Run one delivery of job `job_id` (its message said attempt `delivered_attempt`) and record how it ended.

    Returns the outcome; job-level failures are recorded in the database, never raised. Raises DatabaseUnavailable
    only when the job could not be claimed because the database is unreachable (nothing changed; deliver again).
    """
    timings = PhaseTimings()
    live = LiveGuard(deps.live, deps.clock)
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
    run = ClaimedRun(job_id, attempt, row, lease_s, deps, timings, live)
    run.next_renewal = deps.clock() + lease_s * RENEW_FRACTION
    live.call("notify", lambda: deps.live.notify(job_id))
    WORKER_METRICS.job_started()
    outcome = _run_claimed(run, job, spec_error)
    WORKER_METRICS.record_outcome(outcome, row.model)
    return outcome


def _run_claimed(run: ClaimedRun, job: Img2ImgJob | None, spec_error: InputError | None) -> RunOutcome:
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


def _execute(run: ClaimedRun, job: Img2ImgJob) -> RunOutcome:
    """Everything after the claim, with the error classification of the module docstring."""
    try:
        return _render_upload_commit(run, job)
    except CancelRequested:
        return _cancel(run)
    except LeaseLost as exc:
        logger.warning("job %s: %s; stopping without writing anything", run.job_id, exc)
        return run.outcome("lease_lost", error_code="lease_lost")
    except Draining:
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


def _render_upload_commit(run: ClaimedRun, job: Img2ImgJob) -> RunOutcome:
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
        records = upload_artifacts(deps.storage, run.row.tenant, run.row.task_id, run.attempt, processed)
    with run.timings.phase("commit"):
        try:
            deps.db.leases.succeed(run.job_id, run.attempt, records, warnings=warnings)
        except LeaseLost as exc:
            logger.warning("job %s: commit refused (%s); removing this attempt's uploads", run.job_id, exc)
            delete_quietly(deps.storage, [record.storage_key for record in records])
            return run.outcome("lease_lost", error_code="lease_lost")
        except DatabaseUnavailable as exc:
            logger.error("job %s: cannot record success (%s); the reconciler will retry the job", run.job_id, exc)
            return run.outcome("unrecorded", error_code=exc.code)
    run.finished()
    return run.outcome("succeeded", artifacts=len(records))


def _render(
    run: ClaimedRun,
    job: Img2ImgJob,
    model: LoadedModel,
    inputs: tuple[list[Image.Image], Image.Image | None, Image.Image | None],
) -> tuple[Processed, list[dict[str, str]]]:
    """Render the job; on out of GPU memory free memory and retry once with a smaller batch. Raises _OutOfMemory."""
    init_images, mask, latent_mask = inputs
    hook = StepHook(run)
    current = job
    notes: list[dict[str, str]] = []
    oom_message = ""
    for try_no in (1, 2):
        try:
            processed = _render_once(run, current, model, init_images, mask, latent_mask, hook)
            warnings = [{"code": w.code, "message": w.message} for w in processed.warnings]
            return processed, notes + warnings + hook.previews.warnings()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            oom_message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Outside the except block: the traceback (and the tensors its frames hold) is gone, so memory can be freed.
        run.deps.stats.record_oom()
        WORKER_METRICS.oom(run.row.model)
        free_memory()
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
    run: ClaimedRun,
    job: Img2ImgJob,
    model: LoadedModel,
    init_images: list[Image.Image],
    mask: Image.Image | None,
    latent_mask: Image.Image | None,
    hook: StepHook,
) -> Processed:
    # Its own function so that the processing object and its tensors die with this frame when the render fails.
    deps = run.deps
    p = StableDiffusionProcessingImg2Img.from_job(
        job, sd_model=model, init_images=init_images, mask=mask, latent_mask=latent_mask
    )
    p.embeddings = deps.embeddings.for_job(model, deps.settings.models_dir)
    p.progress_callback = hook
    hook.processing = p  # so that A1111 interrupt / skip requests reach this render
    return deps.engine(p)


# ----------------------------------------------------------------------------------------------------------------
# Recording the end


def _fail(run: ClaimedRun, error: JobError) -> RunOutcome:
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


def _cancel(run: ClaimedRun) -> RunOutcome:
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


def _requeue(run: ClaimedRun, exc: RenderfarmError | None) -> RunOutcome:
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
