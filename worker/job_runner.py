"""Run one delivery of one job: claim, render, upload, commit (docs/farm-design.md, "The worker's run of one job").

`run_job(job_id, delivered_attempt, deps)` is a plain function: the Celery task (`worker.tasks`) only calls it, and the
tests and benchmarks call it directly. Every outcome a job can reach is recorded in the database here; the function
returns a `RunOutcome` describing what happened (and how long each phase took) and raises only when nothing could be
claimed because the database is unreachable (`DatabaseUnavailable`: the message should be delivered again).

Error classification (what the job becomes; docs/reliability.md "Outages and retries"):

    InputError (bad image, unknown model), also     failed at once, with the field: the same input fails the same
    raised by the engine                            way on every worker, so retrying only burns attempts
    TransientError (storage, database outage)       an outage, not an attempt: back to queued, undispatched, not
                                                    before a jittered exponential backoff; failed
                                                    `outage_deadline_exceeded` once outages kept it back for
                                                    `outage_deadline_s`
      ... while uploading a finished render         retried inside the lease (renewed) for `upload_retry_s` first
      ... while recording the end (commit, failure,  the write retried for `commit_retry_s` (fenced by attempt; the
          cancel, requeue)                          commit is idempotent by attempt)
    ConfigError (this worker's storage refuses it)  an attempt: back to queued after a backoff, or failed when
                                                    its attempts are used up (another worker may be set up right)
    worker shutting down (SIGTERM)                  back to queued at once; not an attempt
    out of GPU memory                               retried once with the batch split in two, then `out_of_memory`
    cancel requested (live flag or row)             canceled, no artifacts
    LeaseLost (another attempt owns the job)        nothing written; this attempt's uploads removed
    anything else                                   failed `render_failed` with the exception's message
"""

from __future__ import annotations

import functools
import logging
import types
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image

from shared.backoff import backoff_delay
from shared.db import ArtifactRecord, JobError
from shared.errors import (
    ConfigError,
    DatabaseUnavailable,
    InputError,
    LeaseLost,
    NotFound,
    PermanentError,
    RenderfarmError,
    StorageUnavailable,
    TransientError,
)
from shared.job.seeds import resolved_seeds
from shared.job.spec import Img2ImgJob
from shared.models import find_lora_file
from shared.output_formats import OutputFormat, output_format
from shared.states import JobState
from worker.artifact_upload import delete_quietly, upload_artifacts
from worker.claimed_run import RENEW_FRACTION, CancelRequested, ClaimedRun, LiveGuard, lease_seconds
from worker.deps import WorkerDeps
from worker.engine.models import LoadedModel, ModelNotFound
from worker.engine.processing import Processed, StableDiffusionProcessingImg2Img
from worker.engine.vae_files import external_vae
from worker.inputs import load_inputs
from worker.metrics import WORKER_METRICS
from worker.out_of_memory import free_memory, is_out_of_memory, smaller_batch
from worker.run_outcome import PhaseTimings, RunOutcome
from worker.step_hook import Draining, StepHook
from worker.vae_files import vae_file_for_job

__all__ = ["deterministic_seeds", "run_job"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


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
        logger.info("job %s: not queued (duplicate or canceled delivery %s); skipped", row.task_id, delivered_attempt)
        return RunOutcome(
            job_id, "skipped", None, timings_ms=types.MappingProxyType(dict(timings.ms)), task_id=row.task_id
        )
    attempt = claimed.attempt
    if attempt != delivered_attempt + 1:
        logger.info("job %s: message of attempt %s runs as attempt %s", row.task_id, delivered_attempt, attempt)
    # The claimed row: its attempt, and the outages counted so far (attempts_used, outage_since).
    run = ClaimedRun(job_id, attempt, claimed, lease_s, deps, timings, live)
    run.next_renewal = deps.clock() + lease_s * RENEW_FRACTION
    live.call("notify", lambda: deps.live.notify(job_id))
    WORKER_METRICS.job_started()
    deps.status.job_started(row.task_id)
    try:
        outcome = _run_claimed(run, job, spec_error)
    finally:
        deps.status.job_ended()
    WORKER_METRICS.record_outcome(outcome, row.model)
    return outcome


def _run_claimed(run: ClaimedRun, job: Img2ImgJob | None, spec_error: InputError | None) -> RunOutcome:
    """Everything after a successful claim; returns how the delivery ended."""
    row, deps = run.row, run.deps
    if row.attempts_used > row.max_attempts:
        outages = f" (and {row.outage_requeues} more that ended in an outage)" if row.outage_requeues else ""
        error = JobError(
            type="permanent",
            code="attempts_exhausted",
            message=f"the job was started {row.attempts_used} times{outages}; the limit is {row.max_attempts} attempts",
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
        logger.warning("job %s: %s; stopping without writing anything", run.name, exc)
        return run.outcome("lease_lost", error_code="lease_lost")
    except Draining:
        logger.info("job %s: worker shutting down; returning the job to the queue", run.name)
        return _requeue(run, None, counts_as_attempt=False)
    except _OutOfMemory as exc:
        return _fail(run, JobError("permanent", "out_of_memory", str(exc)))
    except ModelNotFound as exc:
        return _fail(run, JobError("invalid_request", exc.code, exc.message, field="model"))
    except InputError as exc:
        return _fail(run, JobError.from_exception(exc))
    except TransientError as exc:
        # An outage of storage or the database: the job did nothing wrong, so this claim is not an attempt.
        logger.warning("job %s: %s: %s; waiting for the service", run.name, type(exc).__name__, exc.message)
        return _requeue(run, exc, counts_as_attempt=False)
    except ConfigError as exc:
        # The worker's own setup (storage refusing us): another worker may be set up right, so it is an attempt.
        logger.warning("job %s: %s: %s", run.name, type(exc).__name__, exc.message)
        return _requeue(run, exc, counts_as_attempt=True)
    except PermanentError as exc:
        return _fail(run, JobError.from_exception(exc))
    except Exception as exc:  # never leave a job running: anything unexpected fails it with its message
        logger.exception("job %s: render failed", run.name)
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
        records = _upload_with_retries(run, processed, output_format(job.override_settings.get("samples_format")))
    with run.timings.phase("commit"):
        try:
            _commit_with_retries(run, records, warnings)
        except LeaseLost as exc:
            logger.warning("job %s: commit refused (%s); removing this attempt's uploads", run.name, exc)
            delete_quietly(deps.storage, [record.storage_key for record in records])
            return run.outcome("lease_lost", error_code="lease_lost")
        except DatabaseUnavailable as exc:
            # The uploads stay: no row points to them, and the reconciler's sweep removes them once the job ends.
            logger.error("job %s: cannot record success (%s); the reconciler will retry the job", run.name, exc)
            return run.outcome("unrecorded", error_code=exc.code)
    run.finished()
    return run.outcome("succeeded", artifacts=len(records))


def _upload_with_retries(run: ClaimedRun, processed: Processed, result_format: OutputFormat) -> list[ArtifactRecord]:
    """Upload the render; while storage is unavailable, wait (backoff) and try again for `upload_retry_s`,
    renewing the lease before each try, instead of throwing the finished render away.

    The keys are deterministic per attempt, so a retry overwrites what a failed try left half done. Raises the
    last StorageUnavailable once `upload_retry_s` has passed; LeaseLost / CancelRequested from a renewal.
    """
    deps = run.deps
    settings = deps.settings
    give_up_at = deps.clock() + settings.upload_retry_s
    failures = 0
    while True:
        try:
            return upload_artifacts(
                deps.storage, run.row.tenant, run.row.task_id, run.attempt, processed, result_format
            )
        except StorageUnavailable as exc:
            failures += 1
            delay = backoff_delay(failures, settings.retry_backoff_base_s, settings.retry_backoff_max_s)
            if deps.clock() + delay > give_up_at:
                raise
            logger.warning(
                "job %s: upload failed (%s); try %d again in %.1f s", run.name, exc.message, failures + 1, delay
            )
            deps.sleep(delay)
            run.renew()  # the lease outlives the waits; a takeover or a cancel stops them


def _commit_with_retries(run: ClaimedRun, records: list[ArtifactRecord], warnings: list[dict[str, Any]]) -> None:
    """Commit the uploaded render, through a database blip too (`_with_db_retries`).

    `succeed` is fenced and idempotent by attempt: a retry after a commit whose reply was lost is a no-op, and a
    retry after another attempt took the job raises LeaseLost.
    """
    _with_db_retries(run, "commit", lambda: run.deps.db.leases.succeed(run.job_id, run.attempt, records, warnings))


def _with_db_retries(run: ClaimedRun, what: str, write: Callable[[], _T]) -> _T:
    """`write()` (one fenced write that ends this attempt); while the database is unavailable, wait (backoff) and
    try again for `commit_retry_s`. Raises the last DatabaseUnavailable after that.

    Every such write is fenced by the attempt, so a retry can never change a job another attempt owns; a retry of a
    write that went in but whose reply was lost finds the job moved on (succeed: the same success, a no-op).
    """
    deps = run.deps
    settings = deps.settings
    give_up_at = deps.clock() + settings.commit_retry_s
    failures = 0
    while True:
        try:
            return write()
        except DatabaseUnavailable as exc:
            failures += 1
            delay = backoff_delay(failures, settings.retry_backoff_base_s, settings.retry_backoff_max_s)
            if deps.clock() + delay > give_up_at:
                raise
            logger.warning("job %s: %s failed (%s); try %d again in %.1f s", run.name, what, exc, failures + 1, delay)
            deps.sleep(delay)


def _render(
    run: ClaimedRun,
    job: Img2ImgJob,
    model: LoadedModel,
    inputs: tuple[list[Image.Image], Image.Image | None, Image.Image | None],
) -> tuple[Processed, list[dict[str, Any]]]:
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
            return processed, notes + warnings + hook.previews.warnings() + hook.stop_warnings()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            oom_message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Outside the except block: the traceback (and the tensors its frames hold) is gone, so memory can be freed.
        run.deps.stats.record_oom()
        WORKER_METRICS.oom(run.row.model)
        free_memory()
        logger.warning("job %s: out of GPU memory (try %d): %s", run.name, try_no, oom_message)
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
    p.lora_files = functools.partial(
        find_lora_file, models_dir=deps.settings.models_dir, data_dir=deps.settings.data_dir
    )
    p.progress_callback = hook
    hook.processing = p  # so that A1111 interrupt / skip requests reach this render
    # An `sd_vae` file is swapped in for this job only; the checkpoint's own VAE is back afterwards.
    model_name = job.resolved_model or deps.settings.model
    vae = vae_file_for_job(job.override_settings, model_name, deps.settings.models_dir, deps.settings.data_dir)
    with external_vae(model, vae):
        return deps.engine(p)


# ----------------------------------------------------------------------------------------------------------------
# Recording the end


def _fail(run: ClaimedRun, error: JobError) -> RunOutcome:
    try:
        row = _with_db_retries(
            run, "recording the failure", lambda: run.deps.db.leases.fail(run.job_id, run.attempt, error)
        )
    except DatabaseUnavailable as exc:
        logger.error("job %s: cannot record failure %s (%s)", run.name, error.code, exc)
        return run.outcome("unrecorded", error_code=error.code)
    if row is None:
        logger.warning("job %s: attempt %s no longer owns the job; not failed", run.name, run.attempt)
        return run.outcome("lease_lost", error_code="lease_lost")
    logger.info("job %s: failed (%s): %s", run.name, error.code, error.message)
    run.finished()
    return run.outcome("failed", error_code=error.code)


def _cancel(run: ClaimedRun) -> RunOutcome:
    db = run.deps.db

    def record_cancel() -> bool:
        if db.leases.cancel_running(run.job_id, run.attempt) is not None:
            return True
        # Only the live flag was up (the row's flag is set first by the API, so this is rare): honour the user's
        # cancel all the same, fenced by the attempt.
        return db.leases.transition(
            run.job_id,
            JobState.CANCELED,
            expected_attempt=run.attempt,
            from_states=frozenset({JobState.RUNNING}),
            cancel_requested=True,
        )

    try:
        canceled = _with_db_retries(run, "recording the cancel", record_cancel)
    except DatabaseUnavailable as exc:
        logger.error("job %s: cannot record the cancel (%s)", run.name, exc)
        return run.outcome("unrecorded", error_code="canceled")
    if not canceled:
        return run.outcome("lease_lost", error_code="lease_lost")
    logger.info("job %s: canceled at the user's request", run.name)
    run.finished()
    return run.outcome("canceled")


def _requeue(run: ClaimedRun, exc: RenderfarmError | None, *, counts_as_attempt: bool) -> RunOutcome:
    """Back to queued and undispatched for a new delivery, not before a backoff (docs/reliability.md "Outages and
    retries").

    `counts_as_attempt=False` (an outage, a shutdown) gives the claim back; an outage fails the job only once
    outages have kept it back for `outage_deadline_s`. A counted requeue on the last attempt fails the job.
    """
    row, settings = run.row, run.deps.settings
    if counts_as_attempt and exc is not None and row.attempts_used >= row.max_attempts:
        return _fail(
            run,
            JobError(
                exc.type,
                exc.code,
                f"{exc.message} (attempt {row.attempts_used} of {row.max_attempts}; no attempts left)",
            ),
        )
    if exc is None:
        delay = 0.0  # a worker shutting down: another worker may take the job at once
    else:
        failures = row.attempts_used if counts_as_attempt else row.outage_requeues + 1
        delay = backoff_delay(max(1, failures), settings.retry_backoff_base_s, settings.retry_backoff_max_s)
    outage = JobError.from_exception(exc) if isinstance(exc, TransientError) else None
    try:
        moved = _with_db_retries(
            run,
            "returning the job to the queue",
            lambda: run.deps.db.leases.requeue(
                run.job_id,
                run.attempt,
                retry_delay_s=delay,
                counts_as_attempt=counts_as_attempt,
                outage=outage,
                outage_deadline_s=settings.outage_deadline_s if outage is not None else None,
            ),
        )
    except DatabaseUnavailable as db_exc:
        logger.error("job %s: cannot return the job to the queue (%s)", run.name, db_exc)
        return run.outcome("unrecorded", error_code=None if exc is None else exc.code)
    if moved is None:
        return run.outcome("lease_lost", error_code="lease_lost")
    run.finished()
    if moved.state is JobState.FAILED:
        logger.warning("job %s: failed: %s", run.name, moved.error.message if moved.error else "")
        return run.outcome("failed", error_code=moved.error.code if moved.error else None)
    logger.info("job %s: re-queued, not before %.1f s from now", run.name, delay)
    return run.outcome("requeued", error_code=None if exc is None else exc.code)
