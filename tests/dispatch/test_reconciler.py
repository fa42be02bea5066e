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
from shared.db import Database
from shared.db.tables import utcnow
from shared.live import LiveProgress, LocalLiveStatus, RedisLiveStatus
from shared.queueing import make_celery_app
from shared.states import JobState
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
    assert "gpu-7" in row.error.message
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
