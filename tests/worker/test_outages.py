"""Outages through `run_job` (issue 15, findings 1 and 7): real PostgreSQL, S3 (moto) behind a TCP proxy that can
refuse service, Redis live status; the database's time is a FakeClock and the worker's waits advance a ManualClock,
so backoffs and deadlines are checked exactly and nothing sleeps."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import pytest

from shared.backoff import JITTER_LOW, nominal_delay
from shared.config import Settings
from shared.db import Database, JobRow, make_engine
from shared.db.leases import Leases
from shared.errors import DatabaseUnavailable, InputError
from shared.job.spec import Img2ImgJob
from shared.queueing import queue_name
from shared.states import JobState
from shared.storage import S3Storage, asset_key
from tests.clock import FakeClock, ManualClock
from tests.fault_proxy import FaultProxy
from tests.services import S3Server
from tests.worker.conftest import TENANT, Submitter, picture
from worker.claimed_run import lease_seconds
from worker.deps import WorkerDeps
from worker.engine.processing import Processed, StableDiffusionProcessingImg2Img, process_images
from worker.job_runner import run_job
from worker.standin import StandinEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUEUE = queue_name(None, batch=False)  # the queue of the jobs `submit` makes


@pytest.fixture
def proxy(s3_env: S3Server) -> Iterator[FaultProxy]:
    endpoint = urlparse(s3_env.endpoint_url)
    assert endpoint.hostname is not None
    assert endpoint.port is not None
    with FaultProxy(endpoint.hostname, endpoint.port, name="s3-proxy") as proxy:
        yield proxy


@pytest.fixture
def flaky_storage(proxy: FaultProxy, s3_env: S3Server, bucket: str) -> Iterator[S3Storage]:
    """The test's bucket through the proxy; one try per call (boto3's own retries would only slow the test)."""
    store = S3Storage(
        bucket,
        prefix="farm",
        endpoint_url=proxy.url,
        region=s3_env.region,
        max_attempts=1,
        connect_timeout_s=2.0,
        read_timeout_s=10.0,
    )
    yield store
    store.close()


@pytest.fixture
def db_clock() -> FakeClock:
    from shared.db.tables import utcnow

    return FakeClock(utcnow())


@pytest.fixture
def timed_db(worker_db_url: str, db_clock: FakeClock) -> Iterator[Database]:
    """The worker's database on the test's clock (lease, retry_at and outage times)."""
    engine = make_engine(worker_db_url)
    yield Database(engine, clock=db_clock)
    engine.dispose()


class Waits:
    """The worker's `sleep`: records each wait and advances the worker's clock and the database's by it."""

    def __init__(self, clock: ManualClock, db_clock: FakeClock) -> None:
        self.clock = clock
        self.db_clock = db_clock
        self.delays: list[float] = []
        self.on_wait: list[Any] = []  # callables run after the n-th wait (index n-1)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)
        self.db_clock.advance(seconds)
        if len(self.delays) <= len(self.on_wait):
            self.on_wait[len(self.delays) - 1]()


def outage_deps(deps: WorkerDeps, storage: S3Storage, db: Database, db_clock: FakeClock, **settings: Any) -> WorkerDeps:
    clock = ManualClock(0.0)
    changed = deps.settings.model_copy(update=settings) if settings else deps.settings
    return replace(deps, storage=storage, db=db, settings=changed, clock=clock, sleep=Waits(clock, db_clock))


def waits_of(deps: WorkerDeps) -> Waits:
    assert isinstance(deps.sleep, Waits)
    return deps.sleep


def assert_backoff(job: JobRow, now: Any, failures: int, settings: Settings) -> float:
    """The job waits for its retry, for a jittered exponential delay; returns the delay in seconds."""
    assert job.retry_at is not None
    delay = (job.retry_at - now).total_seconds()
    nominal = nominal_delay(failures, settings.retry_backoff_base_s, settings.retry_backoff_max_s)
    assert JITTER_LOW * nominal - 1e-3 <= delay <= nominal + 1e-3
    return delay


# ---------------------------------------------------------------------------------------------------------------
# Finding 1: a storage outage is a wait, not an attempt


def test_an_s3_outage_uses_no_attempt_backs_off_and_the_job_recovers_when_s3_returns(
    deps: WorkerDeps,
    timed_db: Database,
    db_clock: FakeClock,
    flaky_storage: S3Storage,
    proxy: FaultProxy,
    submit: Submitter,
) -> None:
    row = submit(max_attempts=1)  # one attempt: before the fix, the first outage failed the job for good
    run_deps = outage_deps(deps, flaky_storage, timed_db, db_clock)
    settings = run_deps.settings
    proxy.refuse()

    delays = []
    for delivery in range(1, 5):
        outcome = run_job(row.id, delivery - 1, run_deps)
        assert (outcome.state, outcome.error_code) == ("requeued", "storage_unavailable")
        job = timed_db.jobs.get_by_id(row.id)
        assert (job.state, job.attempt, job.outage_requeues, job.attempts_used) == (
            JobState.QUEUED,
            delivery,
            delivery,
            0,
        )
        assert (job.dispatched_at, job.worker, job.error) == (None, None, None)
        assert job.outage_since is not None
        delays.append(assert_backoff(job, db_clock.now, delivery, settings))
        # Not published, and a duplicate delivery is not claimed, before the backoff has passed.
        assert row.id not in {claimed.id for claimed in timed_db.outbox.claim_dispatch(row.queue, 10_000)}
        assert run_job(row.id, delivery, run_deps).state == "skipped"
        assert job.retry_at is not None
        db_clock.now = job.retry_at
    assert delays[-1] > delays[0]  # exponential: 2, 4, 8, 16 s nominal

    proxy.restore()
    outcome = run_job(row.id, 4, run_deps)

    assert outcome.state == "succeeded"
    job = timed_db.jobs.get_by_id(row.id)
    assert (job.state, job.attempt, job.attempts_used) == (JobState.SUCCEEDED, 5, 1)
    assert len(timed_db.jobs.artifacts_of(row.id)) == 1


def test_a_job_fails_for_an_outage_only_past_the_outage_deadline(
    deps: WorkerDeps,
    timed_db: Database,
    db_clock: FakeClock,
    flaky_storage: S3Storage,
    proxy: FaultProxy,
    submit: Submitter,
) -> None:
    row = submit()
    run_deps = outage_deps(deps, flaky_storage, timed_db, db_clock, outage_deadline_s=600.0)
    proxy.refuse()
    started = db_clock.now

    assert run_job(row.id, 0, run_deps).state == "requeued"
    db_clock.now = started + timedelta(seconds=599)  # still within the deadline (and past the retry)
    assert run_job(row.id, 1, run_deps).state == "requeued"
    retry_at = timed_db.jobs.get_by_id(row.id).retry_at
    assert retry_at is not None
    db_clock.now = max(started + timedelta(seconds=601), retry_at)
    outcome = run_job(row.id, 2, run_deps)

    assert (outcome.state, outcome.error_code) == ("failed", "outage_deadline_exceeded")
    job = timed_db.jobs.get_by_id(row.id)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert "outage_deadline_s = 600 s" in job.error.message
    assert "storage_unavailable" in job.error.message


OUTAGE_S = 20.0  # the outage of the finding: 20 s of S3 refusing every connection
FARM_JOBS = 12
TICK_S = 1.0  # the dispatcher's tick: due jobs are published at most this late


def test_a_20_s_s3_outage_fails_no_job_and_every_job_recovers_by_itself(
    deps: WorkerDeps,
    timed_db: Database,
    db_clock: FakeClock,
    flaky_storage: S3Storage,
    proxy: FaultProxy,
    submit: Submitter,
) -> None:
    """Finding 1 end to end, on fake time: the dispatcher's round (claim_dispatch) publishes what is due every tick
    and each published job is delivered to a worker at once. Before the fix 38 of 40 jobs failed and the requeues
    came back at once (114 deliveries in 14 s)."""
    mine = {submit(seed=i).id for i in range(FARM_JOBS)}
    run_deps = replace(outage_deps(deps, flaky_storage, timed_db, db_clock), engine=StandinEngine(0.0))
    started = db_clock.now
    proxy.refuse()
    deliveries_in_outage = 0
    recovered_after_s = None
    while db_clock.now < started + timedelta(seconds=600):
        if db_clock.now >= started + timedelta(seconds=OUTAGE_S):
            proxy.restore()
        published = [job for job in timed_db.outbox.claim_dispatch(QUEUE, 10_000) if job.id in mine]
        for job in published:
            run_job(job.id, job.attempt, run_deps)
            deliveries_in_outage += db_clock.now < started + timedelta(seconds=OUTAGE_S)
        states = {timed_db.jobs.get_by_id(job_id).state for job_id in mine}
        if states <= {JobState.SUCCEEDED, JobState.FAILED}:
            recovered_after_s = (db_clock.now - started).total_seconds()
            break
        db_clock.advance(TICK_S)

    finished = [timed_db.jobs.get_by_id(job_id) for job_id in mine]
    assert [job.state for job in finished] == [JobState.SUCCEEDED] * FARM_JOBS
    assert all(job.attempts_used == 1 for job in finished)
    # The n-th delivery of a job waits at least half of 2 + 4 + ... + 2^(n-1) s after the first: at 0, ≥ 1, ≥ 3, ≥ 7,
    # ≥ 15, ≥ 31 s. So at most 5 deliveries per job fall into the 20 s, not one a tick...
    assert deliveries_in_outage <= 5 * FARM_JOBS
    # ...and the wait after the last of them (the 5th at most) is at most 2^5 = 32 s: every job is back by then.
    assert recovered_after_s is not None
    assert recovered_after_s <= OUTAGE_S + 32.0 + TICK_S


# ---------------------------------------------------------------------------------------------------------------
# A finished render whose upload meets an outage waits inside its lease


class OutageAfterRender:
    """The real engine; S3 goes down the moment the render is done (before the upload)."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.renders = 0

    def __call__(self, p: StableDiffusionProcessingImg2Img) -> Processed:
        processed = process_images(p)
        self.renders += 1
        self.proxy.refuse()
        return processed


def test_an_upload_during_an_outage_is_retried_in_the_lease_and_the_render_is_kept(
    deps: WorkerDeps,
    timed_db: Database,
    db_clock: FakeClock,
    flaky_storage: S3Storage,
    proxy: FaultProxy,
    submit: Submitter,
    storage: S3Storage,
) -> None:
    row = submit()
    engine = OutageAfterRender(proxy)
    run_deps = replace(outage_deps(deps, flaky_storage, timed_db, db_clock), engine=engine)
    waits = waits_of(run_deps)
    waits.on_wait = [lambda: None, proxy.restore]  # S3 is back after the second wait

    outcome = run_job(row.id, 0, run_deps)

    assert (outcome.state, outcome.attempt) == ("succeeded", 1)
    assert engine.renders == 1  # rendered once: nothing thrown away
    assert len(waits.delays) == 2
    assert waits.delays[1] > waits.delays[0]
    job = timed_db.jobs.get_by_id(row.id)
    assert job.state is JobState.SUCCEEDED
    # The lease was renewed across the waits: it ends a full lease after the last wait, not after the claim.
    assert job.started_at is not None
    assert job.lease_until is not None
    lease_s = lease_seconds(Img2ImgJob.from_request_json(row.request), run_deps.settings)
    held_s = (job.lease_until - job.started_at).total_seconds()
    assert held_s == pytest.approx(lease_s + sum(waits.delays), abs=1e-3)
    (artifact,) = timed_db.jobs.artifacts_of(row.id)
    assert storage.exists(artifact.storage_key)


def test_an_upload_outage_longer_than_upload_retry_s_requeues_without_using_an_attempt(
    deps: WorkerDeps,
    timed_db: Database,
    db_clock: FakeClock,
    flaky_storage: S3Storage,
    proxy: FaultProxy,
    submit: Submitter,
) -> None:
    row = submit(max_attempts=1)
    engine = OutageAfterRender(proxy)
    run_deps = replace(outage_deps(deps, flaky_storage, timed_db, db_clock, upload_retry_s=30.0), engine=engine)

    outcome = run_job(row.id, 0, run_deps)

    assert (outcome.state, outcome.error_code) == ("requeued", "storage_unavailable")
    waits = waits_of(run_deps)
    assert waits.delays
    assert sum(waits.delays) <= 30.0
    job = timed_db.jobs.get_by_id(row.id)
    assert (job.state, job.attempts_used, job.outage_requeues) == (JobState.QUEUED, 0, 1)


def test_a_takeover_during_an_upload_wait_stops_the_retries_and_removes_nothing_of_the_new_owner(
    deps: WorkerDeps,
    timed_db: Database,
    db_clock: FakeClock,
    flaky_storage: S3Storage,
    proxy: FaultProxy,
    submit: Submitter,
) -> None:
    row = submit()
    engine = OutageAfterRender(proxy)
    run_deps = replace(outage_deps(deps, flaky_storage, timed_db, db_clock), engine=engine)

    def take_over() -> None:
        db_clock.advance(3600)
        timed_db.leases.requeue_expired()
        db_clock.advance(3600)
        assert timed_db.leases.claim(row.id, "other-worker", 60.0) is not None

    waits_of(run_deps).on_wait = [take_over]

    outcome = run_job(row.id, 0, run_deps)

    assert outcome.state == "lease_lost"
    job = timed_db.jobs.get_by_id(row.id)
    assert (job.state, job.attempt, job.worker) == (JobState.RUNNING, 2, "other-worker")


# ---------------------------------------------------------------------------------------------------------------
# Finding 7: a commit lost in a database blip is retried, not rendered again


class BlipLeases(Leases):
    """The real repository, whose first calls of one method (`succeed`, `fail`, `requeue`) meet a database blip:
    before the write (nothing written) or after it (written, the reply lost)."""

    def __init__(self, base: Database, *, blips: int, reply_lost: bool, method: str = "succeed") -> None:
        super().__init__(base._tx)
        self.blips = blips
        self.reply_lost = reply_lost
        self.method = method
        self.calls = 0

    def _blip(self, method: str, write: Any) -> Any:
        if method != self.method:
            return write()
        self.calls += 1
        if self.calls <= self.blips:
            if self.reply_lost:
                write()
            raise DatabaseUnavailable("connection to the database lost (injected)")
        return write()

    def succeed(self, *args: Any, **kwargs: Any) -> Any:
        return self._blip("succeed", lambda: super(BlipLeases, self).succeed(*args, **kwargs))

    def fail(self, *args: Any, **kwargs: Any) -> Any:
        return self._blip("fail", lambda: super(BlipLeases, self).fail(*args, **kwargs))

    def requeue(self, *args: Any, **kwargs: Any) -> Any:
        return self._blip("requeue", lambda: super(BlipLeases, self).requeue(*args, **kwargs))


@pytest.mark.parametrize("reply_lost", [False, True])
def test_a_commit_lost_in_a_database_blip_is_retried_and_the_render_kept(
    deps: WorkerDeps,
    timed_db: Database,
    db_clock: FakeClock,
    storage: S3Storage,
    submit: Submitter,
    reply_lost: bool,
) -> None:
    row = submit()
    leases = BlipLeases(timed_db, blips=2, reply_lost=reply_lost)
    timed_db.leases = leases
    renders: list[int] = []

    def counting_engine(p: StableDiffusionProcessingImg2Img) -> Processed:
        renders.append(1)
        return process_images(p)

    run_deps = replace(outage_deps(deps, storage, timed_db, db_clock), engine=counting_engine)

    outcome = run_job(row.id, 0, run_deps)

    assert (outcome.state, outcome.attempt) == ("succeeded", 1)
    assert leases.calls == 3
    assert len(renders) == 1
    assert len(waits_of(run_deps).delays) == 2
    job = timed_db.jobs.get_by_id(row.id)
    assert job.state is JobState.SUCCEEDED
    artifacts = timed_db.jobs.artifacts_of(row.id)
    assert len(artifacts) == 1
    # The committed upload is still there (a lost reply must not be taken for a refused commit).
    assert storage.exists(artifacts[0].storage_key)
    assert list(storage.list(f"{TENANT}/{row.task_id}/")) == [artifacts[0].storage_key]


def test_a_failure_and_an_outage_requeue_are_recorded_through_a_database_blip(
    deps: WorkerDeps,
    timed_db: Database,
    db_clock: FakeClock,
    flaky_storage: S3Storage,
    proxy: FaultProxy,
    submit: Submitter,
) -> None:
    def refusing_engine(p: StableDiffusionProcessingImg2Img) -> Processed:
        raise InputError("init_images.0: the image cannot be used", code="invalid_image", field="init_images.0")

    poison = submit()
    timed_db.leases = BlipLeases(timed_db, blips=1, reply_lost=False, method="fail")
    poison_deps = replace(outage_deps(deps, flaky_storage, timed_db, db_clock), engine=refusing_engine)
    outcome = run_job(poison.id, 0, poison_deps)
    assert (outcome.state, timed_db.jobs.get_by_id(poison.id).state) == ("failed", JobState.FAILED)

    waiting = submit()
    timed_db.leases = BlipLeases(timed_db, blips=2, reply_lost=False, method="requeue")
    proxy.refuse()
    outcome = run_job(waiting.id, 0, outage_deps(deps, flaky_storage, timed_db, db_clock))
    job = timed_db.jobs.get_by_id(waiting.id)
    assert (outcome.state, job.state, job.outage_requeues) == ("requeued", JobState.QUEUED, 1)


# ---------------------------------------------------------------------------------------------------------------
# Finding 7: a poison input fails at once


def test_an_input_error_raised_in_the_engine_fails_the_job_at_once(
    deps: WorkerDeps, db: Database, submit: Submitter
) -> None:
    row = submit(max_attempts=3)

    def refusing_engine(p: StableDiffusionProcessingImg2Img) -> Processed:
        raise InputError("init_images.0: the image cannot be used", code="invalid_image", field="init_images.0")

    outcome = run_job(row.id, 0, replace(deps, engine=refusing_engine))

    assert (outcome.state, outcome.attempt, outcome.error_code) == ("failed", 1, "invalid_image")
    job = db.jobs.get_by_id(row.id)
    assert (job.state, job.attempt) == (JobState.FAILED, 1)
    assert job.error is not None
    assert job.error.field == "init_images.0"


def test_a_stored_image_that_only_the_worker_decodes_and_that_is_broken_fails_at_once(
    deps: WorkerDeps, db: Database, storage: S3Storage, submit: Submitter
) -> None:
    good = io.BytesIO()
    picture().save(good, format="PNG")
    broken = good.getvalue()[:60]  # a PNG cut short: a valid header, no image data
    sha = hashlib.sha256(broken).hexdigest()
    key = asset_key(TENANT, sha)
    storage.put(key, broken, "image/png", sha256=sha)
    db.assets.add(TENANT, sha, storage_key=key, size_bytes=len(broken), mime="image/png", width=64, height=64)
    row = submit(init_images=[f"asset:{sha}"], max_attempts=3)

    outcome = run_job(row.id, 0, deps)

    assert (outcome.state, outcome.attempt) == ("failed", 1)
    job = db.jobs.get_by_id(row.id)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.type == "invalid_request"
    assert job.error.field is not None
    assert job.error.field.startswith("init_images")
