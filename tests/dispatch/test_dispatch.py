"""The dispatcher against real databases (SQLite and PostgreSQL) and a real Redis broker. No Celery worker runs:
the tests read the broker's Redis list and simulate a worker's claim through the database."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from scheduler.dispatch import DEFAULT_WINDOW_PER_QUEUE, Dispatcher, dispatched_marker, marker_ttl_s
from shared.config import Settings
from shared.db import Database
from shared.live import LocalLiveStatus, RedisLiveStatus
from shared.queueing import RENDER_TASK, make_celery_app
from shared.states import JobState
from tests.clock import FakeClock
from tests.databases import in_flight, open_database
from tests.dispatch import (
    EVENT_TIMEOUT_S,
    LEASE_S,
    OTHER_QUEUE,
    QUEUE,
    broker_ids,
    broker_messages,
    cluster_settings,
    submit,
    take_message,
)
from tests.processes import free_loopback_port
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def make_dispatcher(db: Database, settings: Settings, broker: redis.Redis) -> Iterator[Callable[..., Dispatcher]]:
    """Build dispatchers on the test's database and broker; all are stopped and their apps closed afterwards."""
    made: list[tuple[Dispatcher, object]] = []
    live = RedisLiveStatus(settings.redis_url or "")

    def build(window: int | None = None, *, on_db: Database | None = None, **kwargs: object) -> Dispatcher:
        app = make_celery_app(settings)
        dispatcher = Dispatcher(on_db or db, app, live, settings, window_per_queue=window, **kwargs)  # type: ignore[arg-type]
        made.append((dispatcher, app))
        return dispatcher

    yield build
    for dispatcher, app in made:
        dispatcher.stop()
        app.close()  # type: ignore[attr-defined]
    live.close()


def worker_takes(broker: redis.Redis, db: Database, queue: str = QUEUE) -> uuid.UUID:
    """What a worker does first: take the oldest message and claim its job. Returns the job's id."""
    task_id = take_message(broker, queue)
    assert task_id is not None, "the broker queue is empty"
    job_id = uuid.UUID(task_id.split(":", 1)[0])
    assert db.leases.claim(job_id, "gpu-0", LEASE_S) is not None
    return job_id


def job_of(task_id: str) -> uuid.UUID:
    return uuid.UUID(task_id.split(":", 1)[0])


# ----------------------------------------------------------------------------------------------------------------


def test_each_undispatched_job_is_published_once_with_its_message_id(
    db: Database, make_dispatcher, broker: redis.Redis, settings: Settings, clock: FakeClock
) -> None:
    jobs = submit(db, 3)
    dispatcher = make_dispatcher()
    assert dispatcher.window_per_queue == DEFAULT_WINDOW_PER_QUEUE

    assert dispatcher.dispatch_once() == 3
    messages = broker_messages(broker)
    assert [m["headers"]["id"] for m in messages] == [f"{job.id}:0" for job in jobs]
    assert {m["headers"]["task"] for m in messages} == {RENDER_TASK}
    for job in jobs:
        row = db.jobs.get_by_id(job.id)
        assert row.state is JobState.QUEUED
        assert row.dispatched_at == clock.now
        assert broker.get(dispatched_marker(job.id)) == f"{job.id}:0".encode()
        assert 0 < int(broker.ttl(dispatched_marker(job.id))) <= marker_ttl_s(settings)  # type: ignore[arg-type]

    assert dispatcher.dispatch_once() == 0
    assert len(broker_ids(broker)) == 3
    assert in_flight(db) == {QUEUE: 3}


def test_the_window_caps_messages_in_flight_per_queue_and_refills(
    db: Database, make_dispatcher, broker: redis.Redis
) -> None:
    jobs = submit(db, 5)
    others = submit(db, 3, queue=OTHER_QUEUE)
    dispatcher = make_dispatcher(2)

    assert dispatcher.dispatch_once() == 4  # two per queue
    assert broker_ids(broker) == [f"{job.id}:0" for job in jobs[:2]]
    assert broker_ids(broker, OTHER_QUEUE) == [f"{job.id}:0" for job in others[:2]]
    assert dispatcher.dispatch_once() == 0  # both windows are full
    assert in_flight(db) == {QUEUE: 2, OTHER_QUEUE: 2}

    assert worker_takes(broker, db) == jobs[0].id  # a claimed job leaves `queued`: one slot frees
    assert dispatcher.dispatch_once() == 1
    assert broker_ids(broker) == [f"{job.id}:0" for job in jobs[1:3]]

    worker_takes(broker, db)
    worker_takes(broker, db)
    assert dispatcher.dispatch_once() == 2
    assert broker_ids(broker) == [f"{job.id}:0" for job in jobs[3:5]]
    assert dispatcher.dispatch_once() == 0
    assert in_flight(db) == {QUEUE: 2, OTHER_QUEUE: 2}


def test_a_canceled_job_frees_its_slot_and_is_never_published(
    db: Database, make_dispatcher, broker: redis.Redis
) -> None:
    first, second, third = submit(db, 3)
    db.jobs.request_cancel(second.tenant, second.task_id)
    dispatcher = make_dispatcher(1)
    assert dispatcher.dispatch_once() == 1
    db.jobs.request_cancel(first.tenant, first.task_id)  # canceled while its message waits
    assert dispatcher.dispatch_once() == 1
    assert broker_ids(broker) == [f"{first.id}:0", f"{third.id}:0"]


def test_higher_priority_is_dispatched_first(
    db: Database, make_dispatcher, broker: redis.Redis, clock: FakeClock
) -> None:
    low = submit(db, 2, priority=0)
    clock.advance(1)
    high = submit(db, 2, priority=5)
    clock.advance(1)
    middle = submit(db, 1, priority=2)
    dispatcher = make_dispatcher(1)
    order: list[uuid.UUID] = []
    for _ in range(5):
        assert dispatcher.dispatch_once() == 1
        order.append(worker_takes(broker, db))
    assert order == [job.id for job in (*high, *middle, *low)]


def test_tenants_take_turns_within_a_priority(
    db: Database, make_dispatcher, broker: redis.Redis, clock: FakeClock
) -> None:
    flood = submit(db, 50, tenant="alice")
    clock.advance(1)
    few = submit(db, 2, tenant="bob")
    dispatcher = make_dispatcher(4)
    assert dispatcher.dispatch_once() == 4
    ids = [job_of(task_id) for task_id in broker_ids(broker)]
    assert ids == [flood[0].id, few[0].id, flood[1].id, few[1].id]


def test_a_late_tenant_is_not_starved_when_the_window_refills_one_slot_at_a_time(
    db: Database, make_dispatcher, broker: redis.Redis, clock: FakeClock
) -> None:
    """alice's flood fills the window first; bob arrives later. Every refill gives the free slot to the tenant with
    the fewest active jobs, not to the one whose waiting job is oldest (which would always be alice)."""
    flood = submit(db, 50, tenant="alice")
    dispatcher = make_dispatcher(2)
    assert dispatcher.dispatch_once() == 2
    clock.advance(1)
    few = submit(db, 2, tenant="bob")

    worker_takes(broker, db)  # alice's first runs; her second waits in the broker
    assert dispatcher.dispatch_once() == 1
    assert job_of(broker_ids(broker)[-1]) == few[0].id
    worker_takes(broker, db)
    assert dispatcher.dispatch_once() == 1
    assert job_of(broker_ids(broker)[-1]) == few[1].id
    worker_takes(broker, db)
    assert dispatcher.dispatch_once() == 1
    assert job_of(broker_ids(broker)[-1]) == flood[2].id


def test_priority_beats_fairness(db: Database, make_dispatcher, broker: redis.Redis, clock: FakeClock) -> None:
    urgent = submit(db, 3, tenant="alice", priority=9)
    clock.advance(1)
    normal = submit(db, 1, tenant="bob", priority=0)
    dispatcher = make_dispatcher(4)
    assert dispatcher.dispatch_once() == 4
    assert [job_of(task_id) for task_id in broker_ids(broker)] == [job.id for job in (*urgent, *normal)]


@pytest.mark.parametrize("window", [5, 1000])
def test_two_dispatchers_racing_publish_each_job_once_and_respect_the_window(
    database_url: str, make_dispatcher, broker: redis.Redis, window: int
) -> None:
    """Two scheduler processes (each its own engine) dispatch the same table at the same time."""
    with open_database(database_url) as first_db, open_database(database_url) as second_db:
        jobs = submit(first_db, 60, tenant="alice") + submit(first_db, 20, tenant="bob")
        dispatchers = [make_dispatcher(window, on_db=first_db), make_dispatcher(window, on_db=second_db)]
        start = threading.Barrier(len(dispatchers))
        errors: list[BaseException] = []

        def race(dispatcher: Dispatcher) -> None:
            try:
                start.wait(EVENT_TIMEOUT_S)
                for _ in range(5):
                    dispatcher.dispatch_once()
            except BaseException as exc:  # surfaced in the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(d,)) for d in dispatchers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(EVENT_TIMEOUT_S)
        assert not errors
        ids = broker_ids(broker)
        assert len(ids) == len(set(ids)) == min(window, len(jobs))
        assert set(ids) <= {f"{job.id}:0" for job in jobs}
        assert in_flight(first_db) == {QUEUE: min(window, len(jobs))}


def test_a_failed_publish_leaves_the_job_undispatched_and_a_later_round_publishes_it(
    db: Database, make_dispatcher, broker: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = submit(db, 3)
    dead_broker = cluster_settings(f"redis://127.0.0.1:{free_loopback_port()}/0")  # nothing listens there
    dead_app = make_celery_app(dead_broker)
    dead_app.conf.broker_connection_timeout = 1
    dead_app.conf.broker_transport_options = {
        **dead_app.conf.broker_transport_options,
        "socket_connect_timeout": 1,
        "socket_timeout": 1,
    }
    try:
        # Markers go to the working Redis, so a marker set for an unpublished job would show up below.
        down = Dispatcher(db, dead_app, LocalLiveStatus(), dead_broker, redis_url=redis_url)
        assert down.dispatch_once() == 0
        down.stop()
    finally:
        dead_app.close()
    assert "left undispatched" in caplog.text
    for job in jobs:
        row = db.jobs.get_by_id(job.id)
        assert (row.state, row.dispatched_at) == (JobState.QUEUED, None)
    assert in_flight(db) == {}
    assert not any(broker.exists(dispatched_marker(job.id)) for job in jobs)

    assert make_dispatcher().dispatch_once() == 3
    assert broker_ids(broker) == [f"{job.id}:0" for job in jobs]


def test_the_loop_runs_on_wake_and_survives_a_failing_round(
    db: Database, make_dispatcher, broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = threading.Event()
    # A tick far longer than the test: only wake() can make the loop run.
    dispatcher = make_dispatcher(tick_s=3600.0)
    real_outbox = db.outbox.outbox_by_queue

    def failing_once() -> dict[str, object]:
        failed.set()
        monkeypatch.setattr(db.outbox, "outbox_by_queue", real_outbox)
        raise RuntimeError("the database went away for a moment")

    monkeypatch.setattr(db.outbox, "outbox_by_queue", failing_once)
    thread = dispatcher.run_in_thread()
    assert dispatcher.run_in_thread() is thread
    assert failed.wait(EVENT_TIMEOUT_S), "the loop did not run its first round"

    (job,) = submit(db, 1)
    dispatcher.wake()
    wait_until(lambda: broker_ids(broker), EVENT_TIMEOUT_S, "wake() to make the loop publish")
    assert thread.is_alive()
    assert broker_ids(broker) == [f"{job.id}:0"]

    dispatcher.stop()
    assert not thread.is_alive()


def test_embedded_dispatch_needs_no_redis(database_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, _env_file=None)
    app = make_celery_app(settings)  # memory:// transport
    with open_database(database_url) as db:
        jobs = submit(db, 2)
        dispatcher = Dispatcher(db, app, LocalLiveStatus(), settings)
        try:
            assert dispatcher.dispatch_once() == 2
            assert all(db.jobs.get_by_id(job.id).dispatched_at is not None for job in jobs)
            with app.connection_for_read() as conn, conn.SimpleQueue(QUEUE, no_ack=True) as queue:
                received = {queue.get(timeout=EVENT_TIMEOUT_S).headers["id"] for _ in jobs}
            assert received == {f"{job.id}:0" for job in jobs}
        finally:
            dispatcher.stop()
            app.close()


def test_bad_arguments_are_refused(db: Database, settings: Settings) -> None:
    app = make_celery_app(settings)
    try:
        with pytest.raises(ValueError, match="window"):
            Dispatcher(db, app, LocalLiveStatus(), settings, window_per_queue=0)
        with pytest.raises(ValueError, match="tick"):
            Dispatcher(db, app, LocalLiveStatus(), settings, tick_s=0)
    finally:
        app.close()
