"""`run_job` called directly (no Celery) against real PostgreSQL, S3 (moto) and Redis, rendering with the tiny model."""

from __future__ import annotations

import hashlib
import io
import itertools
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from shared.db import Database
from shared.db.tables import utcnow
from shared.images import read_png_infotext
from shared.job.seeds import SEED_MODULUS
from shared.states import JobState
from shared.storage import S3Storage, Storage, StoredObject, asset_key
from tests.databases import attempt_of
from tests.processes import free_loopback_port
from tests.services import S3Server
from tests.worker.conftest import SIZE, TENANT, RecordingLive, Submitter, centre_mask, picture, upload_asset
from worker.deps import WorkerDeps
from worker.engine.processing import Processed, Progress, StableDiffusionProcessingImg2Img, process_images
from worker.job_runner import run_job
from worker.run_outcome import PHASES
from worker.standin import StandinEngine
from worker.status import status_provider

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Hook = Callable[[StableDiffusionProcessingImg2Img, Progress], None]


class SpyEngine:
    """The real engine, with a hook called at every progress callback and the outputs kept for comparison."""

    def __init__(self, hook: Hook | None = None, inner: Callable[[Any], Processed] = process_images) -> None:
        self.hook = hook
        self.inner = inner
        self.calls: list[StableDiffusionProcessingImg2Img] = []
        self.results: list[Processed] = []

    def __call__(self, p: StableDiffusionProcessingImg2Img) -> Processed:
        self.calls.append(p)
        farm_callback = p.progress_callback
        assert farm_callback is not None

        def callback(progress: Progress) -> None:
            if self.hook is not None:
                self.hook(p, progress)
            farm_callback(progress)

        p.progress_callback = callback
        processed = self.inner(p)
        self.results.append(processed)
        return processed


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def task_keys(storage: Storage, row_tenant: str, task_id: str) -> list[str]:
    return list(storage.list(f"{row_tenant}/{task_id}/"))


def take_over(db: Database, job_id: uuid.UUID) -> int:
    """What the reconciler and another worker do after this worker's lease expired: requeue, then claim."""
    db.leases.requeue_expired(now=utcnow() + timedelta(days=1))
    claimed = db.leases.claim(job_id, "other-worker", 60.0)
    assert claimed is not None
    return claimed.attempt


# ---------------------------------------------------------------------------------------------------------------


def test_inpaint_job_succeeds_with_result_overlay_and_mask_artifacts(
    deps: WorkerDeps, db: Database, storage: S3Storage, live: RecordingLive, submit: Submitter
) -> None:
    mask = upload_asset(db, storage, centre_mask())
    row = submit(mask=mask, batch_size=2, seed=1234)

    outcome = run_job(row.id, 0, deps)

    assert (outcome.state, outcome.attempt, outcome.artifacts) == ("succeeded", 1, 6)
    assert set(outcome.timings_ms) == set(PHASES)
    assert all(value >= 0 for value in outcome.timings_ms.values())
    done = db.jobs.get_by_id(row.id)
    assert done.state is JobState.SUCCEEDED
    artifacts = db.jobs.artifacts_of(row.id)
    assert sorted((a.kind, a.index) for a in artifacts) == sorted(
        (kind, i) for kind in ("result", "overlay", "mask") for i in (0, 1)
    )
    for artifact in artifacts:
        data = storage.get(artifact.storage_key)
        assert artifact.storage_key == f"{TENANT}/{row.task_id}/1/{artifact.kind}-{artifact.index}.png"
        assert hashlib.sha256(data).hexdigest() == artifact.sha256
        assert len(data) == artifact.bytes
        assert storage.head(artifact.storage_key).content_type == "image/png"
        assert (artifact.width, artifact.height) == (SIZE, SIZE)
        assert artifact.seed == 1234 + artifact.index
        if artifact.kind == "result":
            infotext = read_png_infotext(data)
            assert infotext == artifact.infotext
            assert infotext is not None
            assert f"Seed: {1234 + artifact.index}" in infotext
    # Live progress: written (first and last always, seq counting the writes), then cleared at the end.
    assert 2 <= outcome.progress_writes == len(live.writes)
    assert [w.seq for w in live.writes] == list(range(1, len(live.writes) + 1))
    assert live.writes[-1].fraction == 1.0
    assert live.get_progress(row.id) is None


def test_seed_minus_one_comes_from_the_job_uuid_and_a_retry_renders_the_same_pixels(
    deps: WorkerDeps, db: Database, storage: S3Storage, submit: Submitter
) -> None:
    row = submit(seed=-1)

    def lose_lease_at_the_end(p: StableDiffusionProcessingImg2Img, progress: Progress) -> None:
        if progress.job_no == progress.job_count:  # the render is done; the next lease check sees the takeover
            db.leases.requeue_expired(now=utcnow() + timedelta(days=1))

    first = SpyEngine(lose_lease_at_the_end)
    assert run_job(row.id, 0, replace(deps, engine=first)).state == "lease_lost"
    assert db.jobs.get_by_id(row.id).state is JobState.QUEUED
    assert db.jobs.artifacts_of(row.id) == []

    outcome = run_job(row.id, 1, deps)

    assert (outcome.state, outcome.attempt) == ("succeeded", 2)
    (result,) = db.jobs.artifacts_of(row.id)
    assert result.seed == row.id.int % SEED_MODULUS
    attempt_1 = np.asarray(first.results[0].images[0].convert("RGB"))
    np.testing.assert_array_equal(pixels(storage.get(result.storage_key)), attempt_1)


def test_a_duplicate_delivery_is_skipped(deps: WorkerDeps, db: Database, submit: Submitter) -> None:
    row = submit()
    assert attempt_of(db.leases.claim(row.id, "someone-else", 60.0)) == 1

    outcome = run_job(row.id, 0, deps)

    assert (outcome.state, outcome.attempt) == ("skipped", None)
    job = db.jobs.get_by_id(row.id)
    assert (job.state, job.attempt, job.worker) == (JobState.RUNNING, 1, "someone-else")


def test_an_unknown_job_is_skipped(deps: WorkerDeps) -> None:
    assert run_job(uuid.uuid4(), 0, deps).state == "skipped"


def test_cancel_mid_render_records_canceled_and_writes_no_artifacts(
    deps: WorkerDeps, db: Database, storage: S3Storage, live: RecordingLive, submit: Submitter
) -> None:
    row = submit(steps=8, denoising_strength=1.0)

    def cancel_at_step_2(p: StableDiffusionProcessingImg2Img, progress: Progress) -> None:
        if progress.step == 2:
            db.jobs.request_cancel(TENANT, row.task_id)  # what the API does: the row's flag, then the live one
            live.request_cancel(row.id)

    engine = SpyEngine(cancel_at_step_2)
    outcome = run_job(row.id, 0, replace(deps, engine=engine))

    assert outcome.state == "canceled"
    assert engine.results == []  # the render stopped at the step after the flag went up
    assert db.jobs.get_by_id(row.id).state is JobState.CANCELED
    assert db.jobs.artifacts_of(row.id) == []
    assert task_keys(storage, TENANT, row.task_id) == []
    assert live.get_progress(row.id) is None
    assert not live.cancel_requested(row.id)


def test_an_asset_that_does_not_exist_fails_the_job_naming_the_field(
    deps: WorkerDeps, db: Database, submit: Submitter
) -> None:
    row = submit(init_images=["asset:" + "0" * 64])

    outcome = run_job(row.id, 0, deps)

    assert (outcome.state, outcome.error_code) == ("failed", "image_not_found")
    job = db.jobs.get_by_id(row.id)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert (job.error.code, job.error.field) == ("image_not_found", "init_images.0")


def test_another_tenants_storage_url_is_refused(
    deps: WorkerDeps, db: Database, storage: S3Storage, submit: Submitter
) -> None:
    other = upload_asset(db, storage, picture(3), tenant="other").removeprefix("asset:")
    url = f"s3://{storage.bucket}/farm/{asset_key('other', other)}"
    row = submit(init_images=[picture_ref := url])
    assert picture_ref == url

    outcome = run_job(row.id, 0, deps)

    job = db.jobs.get_by_id(row.id)
    assert (outcome.state, job.error and job.error.field) == ("failed", "init_images.0")


def test_a_farm_s3_url_of_the_tenant_is_read(
    deps: WorkerDeps, db: Database, storage: S3Storage, submit: Submitter
) -> None:
    sha = upload_asset(db, storage, picture(5)).removeprefix("asset:")
    row = submit(init_images=[f"s3://{storage.bucket}/farm/{asset_key(TENANT, sha)}"])

    assert run_job(row.id, 0, deps).state == "succeeded"


ANY_WINDOW = 1_000_000  # a dispatch window no test fills


def test_storage_unreachable_puts_the_job_back_in_the_queue(
    deps: WorkerDeps, db: Database, s3_env: S3Server, bucket: str, submit: Submitter
) -> None:
    row = submit()
    closed = S3Storage(
        bucket,
        prefix="farm",
        endpoint_url=f"http://127.0.0.1:{free_loopback_port()}",
        max_attempts=1,
        connect_timeout_s=1.0,
    )
    # Published (the database is shared by the module's tests: the window leaves room for all of their jobs).
    assert row.id in {job.id for job in db.outbox.claim_dispatch(row.queue, ANY_WINDOW)}

    outcome = run_job(row.id, 0, replace(deps, storage=closed))

    assert (outcome.state, outcome.error_code) == ("requeued", "storage_unavailable")
    job = db.jobs.get_by_id(row.id)
    assert (job.state, job.attempt, job.dispatched_at, job.worker) == (JobState.QUEUED, 1, None, None)


def test_storage_unreachable_on_the_last_attempt_requeues_without_using_it(
    deps: WorkerDeps, db: Database, bucket: str, submit: Submitter
) -> None:
    # Issue 15, finding 1: an outage is a wait, not an attempt (it used to fail the job for good here).
    row = submit(max_attempts=1)
    closed = S3Storage(bucket, endpoint_url=f"http://127.0.0.1:{free_loopback_port()}", max_attempts=1)

    outcome = run_job(row.id, 0, replace(deps, storage=closed))

    job = db.jobs.get_by_id(row.id)
    assert (outcome.state, outcome.error_code) == ("requeued", "storage_unavailable")
    assert (job.state, job.attempt, job.attempts_used, job.error) == (JobState.QUEUED, 1, 0, None)


def test_a_job_past_its_attempts_fails_as_exhausted(deps: WorkerDeps, db: Database, submit: Submitter) -> None:
    row = submit(max_attempts=1)
    take_over(db, row.id)
    db.leases.requeue_expired(now=utcnow() + timedelta(days=2))  # attempt 1 of 1 expired: not re-queued...
    db.leases.transition(row.id, JobState.QUEUED, from_states=frozenset({JobState.RUNNING}))  # ...but say it was

    outcome = run_job(row.id, 1, deps)

    job = db.jobs.get_by_id(row.id)
    assert (outcome.state, outcome.attempt, job.error and job.error.code) == ("failed", 2, "attempts_exhausted")


def test_lease_lost_mid_render_stops_without_writing(
    deps: WorkerDeps, db: Database, storage: S3Storage, submit: Submitter
) -> None:
    row = submit(steps=8, denoising_strength=1.0)
    ticks = itertools.count(step=1000.0)  # a clock where a third of the lease passes between steps

    def takeover_at_step_2(p: StableDiffusionProcessingImg2Img, progress: Progress) -> None:
        if progress.step == 2:
            take_over(db, row.id)

    engine = SpyEngine(takeover_at_step_2)
    outcome = run_job(row.id, 0, replace(deps, engine=engine, clock=lambda: float(next(ticks))))

    assert outcome.state == "lease_lost"
    assert engine.results == []  # stopped at the renewal of step 3
    job = db.jobs.get_by_id(row.id)
    assert (job.state, job.attempt, job.worker) == (JobState.RUNNING, 2, "other-worker")
    assert task_keys(storage, TENANT, row.task_id) == []


class TakeoverOnFirstPut(S3Storage):
    """Storage whose first artifact upload coincides with another worker taking the job over."""

    def __init__(self, base: S3Storage, takeover: Callable[[], object]) -> None:
        super().__init__(base.bucket, "farm", endpoint_url=base.endpoint_url, region=base.region)
        self._takeover: Callable[[], object] | None = takeover

    def put(self, key: str, data: bytes, content_type: str, sha256: str | None = None) -> StoredObject:
        if self._takeover is not None and "/~assets/" not in key:
            takeover, self._takeover = self._takeover, None
            takeover()
        return super().put(key, data, content_type, sha256)


def test_a_late_workers_commit_is_refused_and_writes_no_artifact_rows(
    deps: WorkerDeps, db: Database, storage: S3Storage, submit: Submitter
) -> None:
    row = submit()
    late = TakeoverOnFirstPut(storage, lambda: take_over(db, row.id))

    outcome = run_job(row.id, 0, replace(deps, storage=late))

    assert outcome.state == "lease_lost"
    assert db.jobs.artifacts_of(row.id) == []
    job = db.jobs.get_by_id(row.id)
    assert (job.state, job.attempt) == (JobState.RUNNING, 2)
    assert task_keys(storage, TENANT, row.task_id) == []  # the refused attempt's uploads were removed


@pytest.mark.parametrize(("interval_s", "expected"), [(3600.0, 2), (1e-9, 9)])
def test_progress_writes_are_throttled_first_and_last_always(
    deps: WorkerDeps, live: RecordingLive, submit: Submitter, interval_s: float, expected: int
) -> None:
    row = submit(steps=8, denoising_strength=1.0)  # 8 sampling steps, then the final callback
    settings = deps.settings.model_copy(update={"progress_interval_s": interval_s})

    outcome = run_job(row.id, 0, replace(deps, settings=settings))

    assert outcome.state == "succeeded"
    assert outcome.progress_writes == len(live.writes) == expected <= 8 + 2
    assert live.writes[0].step == 0
    assert live.writes[-1].fraction == 1.0
    assert all(w.job_id == str(row.id) and w.attempt == 1 and w.worker == "test-worker" for w in live.writes)


def test_the_standin_engine_runs_the_whole_farm_path(
    deps: WorkerDeps, db: Database, storage: S3Storage, live: RecordingLive, submit: Submitter
) -> None:
    slept: list[float] = []
    row = submit(batch_size=2, n_iter=2, steps=10, denoising_strength=0.5, seed=7)

    outcome = run_job(row.id, 0, replace(deps, engine=StandinEngine(0.002, sleep=slept.append)))

    assert (outcome.state, outcome.artifacts) == ("succeeded", 4)
    assert slept == [0.002] * 12  # 6 steps (Euler at strength 0.5 of 10: t_enc 5, plus one) for each of 2 batches
    results = db.jobs.artifacts_of(row.id)
    assert [a.seed for a in results] == [7, 8, 9, 10]
    for artifact in results:
        image = Image.open(io.BytesIO(storage.get(artifact.storage_key)))
        assert image.size == (SIZE, SIZE)
        assert len(image.getcolors() or []) == 1
        assert artifact.infotext is not None
        assert "Stand-in engine: 0.002" in artifact.infotext
    assert live.writes
    assert live.get_progress(row.id) is None


def test_out_of_memory_is_retried_once_with_the_batch_split(deps: WorkerDeps, db: Database, submit: Submitter) -> None:
    row = submit(batch_size=4, seed=100)
    sizes: list[tuple[int, int]] = []

    def engine(p: StableDiffusionProcessingImg2Img) -> Processed:
        sizes.append((p.batch_size, p.n_iter))
        if p.batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return process_images(p)

    outcome = run_job(row.id, 0, replace(deps, engine=engine))

    assert (outcome.state, outcome.artifacts) == ("succeeded", 4)
    assert sizes == [(4, 1), (2, 2)]
    assert [a.seed for a in db.jobs.artifacts_of(row.id)] == [100, 101, 102, 103]
    job = db.jobs.get_by_id(row.id)
    assert any(w["code"] == "batch_split" for w in job.warnings)
    assert deps.stats.ooms == 1


def test_out_of_memory_twice_fails_with_a_clear_error(deps: WorkerDeps, db: Database, submit: Submitter) -> None:
    row = submit(batch_size=2)

    def engine(p: StableDiffusionProcessingImg2Img) -> Processed:
        raise RuntimeError("CUDA error: out of memory")

    outcome = run_job(row.id, 0, replace(deps, engine=engine))

    job = db.jobs.get_by_id(row.id)
    assert (outcome.state, job.error and job.error.code) == ("failed", "out_of_memory")
    assert job.error is not None
    assert "batch_size" in job.error.message
    assert deps.stats.ooms == 2
    assert deps.stats.consecutive_ooms == 1


def test_an_unexpected_error_fails_the_job_with_its_message(
    deps: WorkerDeps, db: Database, live: RecordingLive, submit: Submitter
) -> None:
    row = submit()

    def engine(p: StableDiffusionProcessingImg2Img) -> Processed:
        raise ValueError("the sampler exploded")

    outcome = run_job(row.id, 0, replace(deps, engine=engine))

    job = db.jobs.get_by_id(row.id)
    assert outcome.state == "failed"
    assert job.error is not None
    assert (job.error.code, job.error.message) == ("render_failed", "ValueError: the sampler exploded")


def test_an_unknown_model_fails_naming_the_model_field(deps: WorkerDeps, db: Database, submit: Submitter) -> None:
    row = submit(model="no-such-model")

    assert run_job(row.id, 0, deps).state == "failed"
    job = db.jobs.get_by_id(row.id)
    assert job.error is not None
    assert (job.error.code, job.error.field) == ("model_not_found", "model")


def test_a_lora_from_the_models_folder_reaches_the_render_and_its_infotext(
    deps: WorkerDeps, db: Database, storage: S3Storage, submit: Submitter, tmp_path: Any
) -> None:
    from safetensors.torch import save_file

    from worker.engine.networks import deactivate_networks

    models = tmp_path / "models"
    (models / "Lora").mkdir(parents=True)
    key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    generator = torch.Generator().manual_seed(0)
    up, down = torch.randn(32, 2, generator=generator), torch.randn(2, 32, generator=generator)
    save_file({f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down}, str(models / "Lora" / "ink.safetensors"))
    lora_deps = replace(deps, settings=deps.settings.model_copy(update={"models_dir": models}))
    try:
        row = submit(prompt="a cat <lora:ink:0.5>")
        outcome = run_job(row.id, 0, lora_deps)
        assert outcome.state == "succeeded"
        (result,) = [a for a in db.jobs.artifacts_of(row.id) if a.kind == "result"]
        assert result.infotext is not None
        assert result.infotext.startswith("a cat <lora:ink:0.5>")
        assert 'Lora hashes: "ink: ' in result.infotext

        missing = submit(prompt="a cat <lora:absent:0.5>")
        outcome = run_job(missing.id, 0, lora_deps)
        assert (outcome.state, outcome.error_code) == ("failed", "lora_not_found")
        job = db.jobs.get_by_id(missing.id)
        assert job.error is not None
        assert job.error.field == "prompt"
    finally:
        deactivate_networks(deps.models.get("tiny"))  # the session's tiny model is shared


def test_the_worker_status_follows_the_job_its_steps_and_its_out_of_memory_errors(
    deps: WorkerDeps, submit: Submitter
) -> None:
    """What the announcer writes (worker/status.py), read from inside the render as the heartbeat thread would: the
    job being rendered, its whole-job step, the step speed, and the OOM of the first try; after the job, no current
    job and the last job's speed."""
    row = submit(batch_size=2, seed=5)
    provider = status_provider(lambda: deps, "cpu")
    assert provider()["current_job"] is None
    seen: list[tuple[dict[str, Any], int, int]] = []

    def engine(p: StableDiffusionProcessingImg2Img) -> Processed:
        if p.batch_size > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        farm_callback = p.progress_callback
        assert farm_callback is not None

        def callback(progress: Progress) -> None:
            farm_callback(progress)
            done = progress.job_no * progress.total_steps + progress.step
            seen.append((provider(), done, progress.job_count * progress.total_steps))

        p.progress_callback = callback
        return process_images(p)

    outcome = run_job(row.id, 0, replace(deps, engine=engine))

    assert outcome.state == "succeeded"
    assert len(seen) >= 2
    for status, done, total in seen:
        assert (status["current_job"], status["step"], status["total_steps"]) == (row.task_id, done, total)
        assert (status["gpu"], status["oom_count"]) == ("cpu", 1)
    assert seen[-1][0]["steps_per_s"] > 0
    after = provider()
    assert (after["current_job"], after["step"], after["total_steps"]) == (None, None, None)
    assert after["steps_per_s"] == seen[-1][0]["steps_per_s"]  # the last job's speed
    assert after["loaded_models"] == []  # this model source is no ModelCache: it lists nothing
