"""The reconciler against real databases (SQLite and PostgreSQL) and a real Redis (broker, markers, live status)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery

from scheduler.dispatch import Dispatcher, dispatched_marker
from scheduler.reconciler import (
    DEFAULT_LOST_GRACE_S,
    Reconciler,
    ReconcileReport,
    main_once,
    reset_dispatch_on_startup,
)
from shared.config import Settings
from shared.db import ArtifactRecord, Database, JobError, JobRow
from shared.db.tables import utcnow
from shared.live import LiveProgress, LocalLiveStatus, RedisLiveStatus
from shared.queueing import make_celery_app
from shared.states import JobState
from shared.storage import LocalFolderStorage, artifact_key, asset_key
from tests.clock import FakeClock
from tests.databases import attempt_of, in_flight, open_database
from tests.dispatch import (
    EVENT_TIMEOUT_S,
    LEASE_S,
    QUEUE,
    broker_ids,
    cluster_settings,
    submit,
    take_message,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def live(settings: Settings) -> Iterator[RedisLiveStatus]:
    status = RedisLiveStatus(settings.redis_url or "")
    yield status
    status.close()


@pytest.fixture
def app(settings: Settings, broker: redis.Redis) -> Iterator[Celery]:
    app = make_celery_app(settings)
    yield app
    app.close()


@pytest.fixture
def dispatcher(db: Database, app: Celery, live: RedisLiveStatus, settings: Settings) -> Iterator[Dispatcher]:
    dispatcher = Dispatcher(db, app, live, settings)
    yield dispatcher
    dispatcher.stop()


@pytest.fixture
def reconciler(
    db: Database, app: Celery, live: RedisLiveStatus, settings: Settings, dispatcher: Dispatcher
) -> Iterator[Reconciler]:
    reconciler = Reconciler(db, live, settings, on_requeue=dispatcher.wake)
    yield reconciler
    reconciler.stop()


def reconciler_settings_backoff(reconciler: Reconciler) -> float:
    """How long a job re-queued by the reconciler waits before it is published again."""
    return reconciler._settings.retry_backoff_base_s


def progress_of(job_id: object, attempt: int) -> LiveProgress:
    return LiveProgress(
        job_id=str(job_id),
        attempt=attempt,
        step=1,
        total_steps=4,
        job_no=0,
        job_count=1,
        fraction=0.25,
        eta_s=3.0,
        started_at=0.0,
        updated_at=0.0,
    )


# ----------------------------------------------------------------------------------------------------------------


def test_an_expired_lease_requeues_the_job_and_it_is_published_again(
    db: Database,
    dispatcher: Dispatcher,
    reconciler: Reconciler,
    live: RedisLiveStatus,
    broker: redis.Redis,
    clock: FakeClock,
) -> None:
    (job,) = submit(db, 1)
    assert dispatcher.dispatch_once() == 1
    assert take_message(broker) == f"{job.id}:0"
    assert attempt_of(db.leases.claim(job.id, "gpu-0", LEASE_S)) == 1
    live.set_progress(progress_of(job.id, 1))

    clock.advance(LEASE_S - 1)
    assert reconciler.run_once().changed == 0  # the lease still holds

    clock.advance(2)  # the worker died: no renewal
    report = reconciler.run_once()
    assert report == ReconcileReport(requeued=(job.id,))
    row = db.jobs.get_by_id(job.id)
    assert (row.state, row.attempt, row.dispatched_at, row.worker) == (JobState.QUEUED, 1, None, None)
    assert live.get_progress(job.id) is None  # the dead attempt's progress is gone

    assert dispatcher.dispatch_once() == 0  # not republished at once: it waits for its retry (retry_at)...
    clock.advance(reconciler_settings_backoff(reconciler))
    assert dispatcher.dispatch_once() == 1  # ...and is published when due
    assert broker_ids(broker) == [f"{job.id}:1"]  # a new message id: the attempt it follows


def test_an_expired_lease_on_the_last_attempt_fails_the_job(
    db: Database, dispatcher: Dispatcher, reconciler: Reconciler, broker: redis.Redis, clock: FakeClock
) -> None:
    (job,) = submit(db, 1, max_attempts=1)
    dispatcher.dispatch_once()
    assert attempt_of(db.leases.claim(job.id, "gpu-7", LEASE_S)) == 1
    clock.advance(LEASE_S + 1)

    report = reconciler.run_once()
    assert report == ReconcileReport(failed=(job.id,))
    row = db.jobs.get_by_id(job.id)
    assert row.state is JobState.FAILED
    assert row.error is not None
    assert row.error.code == "attempts_exhausted"
    assert "started 1 times (the limit is 1)" in row.error.message
    assert "gpu-7" not in row.error.message  # error bodies name no worker host (reliability.md "Secrets")
    assert dispatcher.dispatch_once() == 0
    assert reconciler.run_once().changed == 0


def test_an_expired_job_with_a_cancel_request_is_canceled(
    db: Database, dispatcher: Dispatcher, reconciler: Reconciler, clock: FakeClock
) -> None:
    (job,) = submit(db, 1)
    dispatcher.dispatch_once()
    db.leases.claim(job.id, "gpu-0", LEASE_S)
    db.jobs.request_cancel(job.tenant, job.task_id)
    clock.advance(LEASE_S + 1)
    assert reconciler.run_once() == ReconcileReport(canceled=(job.id,))
    assert db.jobs.get_by_id(job.id).state is JobState.CANCELED


def test_messages_lost_with_redis_are_found_after_the_grace_period_and_published_again(
    db: Database, dispatcher: Dispatcher, reconciler: Reconciler, broker: redis.Redis, clock: FakeClock
) -> None:
    jobs = submit(db, 3)
    assert dispatcher.dispatch_once() == 3
    clock.advance(DEFAULT_LOST_GRACE_S + 1)
    assert reconciler.run_once().changed == 0  # markers present: the messages are waiting, not lost

    (late,) = submit(db, 1)
    assert dispatcher.dispatch_once() == 1
    broker.flushdb()  # Redis restarted empty: every message and marker is gone

    report = reconciler.run_once()
    assert set(report.lost) == {job.id for job in jobs}  # `late` was dispatched within the grace period
    assert all(db.jobs.get_by_id(job.id).dispatched_at is None for job in jobs)
    assert dispatcher.dispatch_once() == 3
    assert broker_ids(broker) == [f"{job.id}:0" for job in jobs]
    assert all(broker.exists(dispatched_marker(job.id)) for job in jobs)

    clock.advance(DEFAULT_LOST_GRACE_S + 1)
    assert reconciler.run_once() == ReconcileReport(lost=(late.id,))
    assert dispatcher.dispatch_once() == 1
    assert broker_ids(broker)[-1] == f"{late.id}:0"
    assert reconciler.run_once().changed == 0


def test_the_lost_check_with_no_grace_and_no_redis(
    db: Database,
    app: Celery,
    live: RedisLiveStatus,
    settings: Settings,
    broker: redis.Redis,
    clock: FakeClock,
) -> None:
    jobs = submit(db, 2)
    dispatcher = Dispatcher(db, app, live, settings)
    dispatcher.dispatch_once()
    dispatcher.stop()
    broker.delete(dispatched_marker(jobs[0].id))

    # Grace 0 still needs the dispatch to be in the past: the database's clock moves on.
    clock.advance(0.001)
    eager = Reconciler(db, live, settings, lost_grace_s=0)
    try:
        assert eager.run_once() == ReconcileReport(lost=(jobs[0].id,))
    finally:
        eager.stop()

    embedded = Settings(_env_file=None)
    blind = Reconciler(db, LocalLiveStatus(), embedded, lost_grace_s=0)
    try:
        report = blind.run_once()
        assert report.lost_check_skipped
        assert report.changed == 0
    finally:
        blind.stop()


def test_an_unreadable_redis_skips_the_lost_check(
    db: Database, app: Celery, dispatcher: Dispatcher, settings: Settings, clock: FakeClock
) -> None:
    from tests.processes import free_loopback_port

    submit(db, 2)
    dispatcher.dispatch_once()
    clock.advance(DEFAULT_LOST_GRACE_S + 1)
    down = Reconciler(db, LocalLiveStatus(), settings, redis_url=f"redis://127.0.0.1:{free_loopback_port()}/0")
    try:
        report = down.run_once()
    finally:
        down.stop()
    assert report.lost_check_skipped
    assert report.changed == 0
    assert in_flight(db) == {QUEUE: 2}


def test_reset_dispatch_on_startup_makes_every_queued_job_undispatched(db: Database, dispatcher: Dispatcher) -> None:
    jobs = submit(db, 3)
    dispatcher.dispatch_once()
    db.leases.claim(jobs[0].id, "gpu-0", LEASE_S)
    assert reset_dispatch_on_startup(db) == 2
    assert in_flight(db) == {}
    assert db.jobs.get_by_id(jobs[0].id).state is JobState.RUNNING
    assert reset_dispatch_on_startup(db) == 0


def test_the_loop_requeues_and_wakes_the_dispatcher(
    db: Database, app: Celery, live: RedisLiveStatus, settings: Settings, clock: FakeClock
) -> None:
    (job,) = submit(db, 1)
    assert [claimed.id for claimed in db.outbox.claim_dispatch(job.queue, 1)] == [job.id]
    db.leases.claim(job.id, "gpu-0", LEASE_S)
    clock.advance(LEASE_S + 1)
    woken = threading.Event()
    reconciler = Reconciler(db, live, settings, on_requeue=woken.set)
    thread = reconciler.run_in_thread()
    try:
        assert woken.wait(EVENT_TIMEOUT_S), "the loop did not re-queue the expired job"
        assert db.jobs.get_by_id(job.id).state is JobState.QUEUED
    finally:
        reconciler.stop()
    assert not thread.is_alive()


def test_main_once_reconciles_and_publishes(
    database_url: str, redis_url: str, broker: redis.Redis, tmp_path: Path
) -> None:
    # No backoff: the re-queued job is due at once (the backoff itself is tested with a fake clock above).
    settings = cluster_settings(redis_url, database_url, data_dir=tmp_path / "data", retry_backoff_base_s=0)
    with open_database(database_url) as db:  # the real clock, like the command's
        expired, waiting = submit(db, 2)
        assert [job.id for job in db.outbox.claim_dispatch(expired.queue, 1)] == [expired.id]
        an_hour_ago = utcnow() - timedelta(hours=1)
        assert attempt_of(db.leases.claim(expired.id, "gpu-0", LEASE_S, now=an_hour_ago)) == 1

        started = time.monotonic()
        report = main_once(settings)
        assert time.monotonic() - started < EVENT_TIMEOUT_S
        assert report.requeued == (expired.id,)
        assert report.published == 2
        assert sorted(broker_ids(broker)) == sorted([f"{expired.id}:1", f"{waiting.id}:0"])
        assert in_flight(db) == {QUEUE: 2}


def test_main_once_in_embedded_mode_publishes_nothing(database_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, _env_file=None)
    with open_database(database_url) as db:
        (job,) = submit(db, 1)
        report = main_once(settings)
        assert report.published == 0
        assert report.lost_check_skipped
        assert db.jobs.get_by_id(job.id).dispatched_at is None


# ----------------------------------------------------------------------------------------------------------------
# Issue 15, finding 2: no stranded message


def test_a_message_taken_by_a_worker_that_died_before_its_claim_is_published_again(
    db: Database,
    dispatcher: Dispatcher,
    reconciler: Reconciler,
    broker: redis.Redis,
    clock: FakeClock,
    settings: Settings,
) -> None:
    stranded, waiting = submit(db, 2)
    assert dispatcher.dispatch_once() == 2
    # A worker received the first message (it left the broker's queue; kombu keeps it unacked) and died before its
    # claim. Its dispatch marker is still there, so the lost-message check does not see it.
    assert take_message(broker) == f"{stranded.id}:0"
    assert broker.exists(dispatched_marker(stranded.id))

    clock.advance(settings.dispatch_stranded_s - 1)
    assert reconciler.run_once().changed == 0  # within the bound: the worker may still be claiming

    clock.advance(2)
    # Only the job whose message left the queue: the other one's message still waits for a worker (busy, not dead).
    assert reconciler.run_once() == ReconcileReport(stranded=(stranded.id,))
    assert dispatcher.dispatch_once() == 1
    assert broker_ids(broker) == [f"{waiting.id}:0", f"{stranded.id}:0"]
    assert reconciler.run_once().changed == 0

    # The broker hands the first message back after its visibility timeout: a duplicate delivery, and harmless,
    # because the claim is one conditional UPDATE.
    assert attempt_of(db.leases.claim(stranded.id, "gpu-0", LEASE_S)) == 1
    assert db.leases.claim(stranded.id, "gpu-1", LEASE_S) is None


def test_a_stranded_message_gives_its_dispatch_window_slot_back(
    db: Database,
    app: Celery,
    live: RedisLiveStatus,
    broker: redis.Redis,
    clock: FakeClock,
    settings: Settings,
) -> None:
    dispatcher = Dispatcher(db, app, live, settings, window_per_queue=1)
    reconciler = Reconciler(db, live, settings)
    try:
        first, second = submit(db, 2)
        assert dispatcher.dispatch_once() == 1
        assert take_message(broker) == f"{first.id}:0"  # received by a worker that died before its claim
        assert dispatcher.dispatch_once() == 0  # the window's one slot is held by the stranded message
        assert in_flight(db) == {QUEUE: 1}

        clock.advance(settings.dispatch_stranded_s + 1)
        assert reconciler.run_once().stranded == (first.id,)
        assert dispatcher.dispatch_once() == 1  # the slot is free again; the oldest job takes it
        assert broker_ids(broker) == [f"{first.id}:0"]
        assert attempt_of(db.leases.claim(first.id, "gpu-0", LEASE_S)) == 1
        assert dispatcher.dispatch_once() == 1
        assert broker_ids(broker) == [f"{first.id}:0", f"{second.id}:0"]
    finally:
        reconciler.stop()
        dispatcher.stop()


# ----------------------------------------------------------------------------------------------------------------
# Issue 15, finding 1: requeues wait for their retry; outages are not attempts


def test_a_requeued_job_is_neither_published_nor_claimed_before_its_retry(
    db: Database, dispatcher: Dispatcher, broker: redis.Redis, clock: FakeClock
) -> None:
    (job,) = submit(db, 1)
    assert dispatcher.dispatch_once() == 1
    assert take_message(broker) == f"{job.id}:0"
    assert attempt_of(db.leases.claim(job.id, "gpu-0", LEASE_S)) == 1
    outage = JobError("transient", "storage_unavailable", "S3 is unavailable")

    row = db.leases.requeue(
        job.id, 1, retry_delay_s=10.0, counts_as_attempt=False, outage=outage, outage_deadline_s=3600.0
    )

    assert row is not None
    assert (row.state, row.attempt, row.outage_requeues, row.attempts_used) == (JobState.QUEUED, 1, 1, 0)
    assert (row.retry_at, row.outage_since) == (clock.now + timedelta(seconds=10), clock.now)
    assert db.outbox.outbox_by_queue() == {}  # nothing waits to be published: no busy dispatch rounds meanwhile
    assert dispatcher.dispatch_once() == 0
    assert db.leases.claim(job.id, "gpu-1", LEASE_S) is None  # a duplicate message during the backoff is dropped

    clock.advance(10)
    assert dispatcher.dispatch_once() == 1
    assert broker_ids(broker) == [f"{job.id}:1"]


def test_outage_requeues_do_not_count_against_the_attempts_but_expired_leases_do(
    db: Database, reconciler: Reconciler, clock: FakeClock
) -> None:
    (job,) = submit(db, 1, max_attempts=1)
    outage = JobError("transient", "database_unavailable", "the database is unreachable")
    for attempt in (1, 2, 3):
        assert attempt_of(db.leases.claim(job.id, "gpu-0", LEASE_S)) == attempt
        assert db.leases.requeue(job.id, attempt, retry_delay_s=0.0, counts_as_attempt=False, outage=outage)
    assert attempt_of(db.leases.claim(job.id, "gpu-0", LEASE_S)) == 4  # the first real attempt of one allowed

    clock.advance(LEASE_S + 1)  # its worker died: that is an attempt, the last one
    assert reconciler.run_once() == ReconcileReport(failed=(job.id,))
    failed = db.jobs.get_by_id(job.id)
    assert failed.error is not None
    assert failed.error.code == "attempts_exhausted"


# ----------------------------------------------------------------------------------------------------------------
# Issue 15, finding 7: what attempts that never committed left in storage is swept


def test_uploads_of_attempts_that_never_committed_are_swept_after_the_grace(
    db: Database, live: RedisLiveStatus, settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    store = LocalFolderStorage(tmp_path / "store", "http://127.0.0.1:7860", b"k" * 32)
    reconciler = Reconciler(db, live, settings, storage=store)

    def upload(job: JobRow, attempt: int) -> ArtifactRecord:
        key = artifact_key(job.tenant, job.task_id, attempt, "result", 0)
        stored = store.put(key, f"{job.id}/{attempt}".encode(), "image/png")
        return ArtifactRecord("result", 0, key, stored.sha256, stored.size, 64, 64, None, None)

    retried, failed, clean = submit(db, 3)
    # `retried`: attempt 1 uploaded and died before its commit; attempt 2 committed.
    assert attempt_of(db.leases.claim(retried.id, "gpu-0", LEASE_S)) == 1
    orphan = upload(retried, 1)
    clock.advance(LEASE_S + 1)
    assert db.leases.requeue_expired() != []
    assert attempt_of(db.leases.claim(retried.id, "gpu-2", LEASE_S)) == 2
    committed = upload(retried, 2)
    db.leases.succeed(retried.id, 2, [committed])
    # `failed`: attempt 1 uploaded, then the job failed (its commit was refused, say).
    assert attempt_of(db.leases.claim(failed.id, "gpu-1", LEASE_S)) == 1
    failed_orphan = upload(failed, 1)
    assert db.leases.fail(failed.id, 1, JobError("permanent", "render_failed", "boom"))
    # `clean`: succeeded at its first attempt: nothing to sweep, never listed.
    assert attempt_of(db.leases.claim(clean.id, "gpu-3", LEASE_S)) == 1
    clean_record = upload(clean, 1)
    db.leases.succeed(clean.id, 1, [clean_record])
    asset = asset_key(retried.tenant, "0" * 64)
    store.put(asset, b"an input", "image/png")

    clock.advance(settings.orphan_sweep_grace_s - 1)
    assert reconciler.run_once().swept == ()  # a late upload of a zombie attempt may still land

    clock.advance(2)
    assert set(reconciler.run_once().swept) == {retried.id, failed.id}
    assert sorted(store.list()) == sorted([committed.storage_key, clean_record.storage_key, asset])
    assert not store.exists(orphan.storage_key)
    assert not store.exists(failed_orphan.storage_key)
    assert reconciler.run_once().swept == ()  # each job is swept once
    reconciler.stop()
