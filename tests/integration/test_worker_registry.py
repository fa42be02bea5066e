"""Worker announcements in the database (shared/db/workers.py) and the scheduler's registry over them
(scheduler/worker_registry.py), on SQLite and PostgreSQL, with a clock the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler.worker_registry import WorkerRegistry, unserved_model_warning
from shared.db import Database, make_engine
from shared.errors import DatabaseUnavailable
from shared.job.spec import Img2ImgJob
from tests.clock import FakeClock, ManualClock
from tests.databases import open_database, prepare_database

pytestmark = pytest.mark.integration

TTL_S = 15.0  # seconds an announcement counts in these tests


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    postgres = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return prepare_database(str(request.param), tmp_path, postgres)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(database_url: str, clock: FakeClock) -> Iterator[Database]:
    with open_database(database_url, clock) as database:
        yield database


def announce(db: Database, hostname: str, queues: list[str], models: list[str]) -> None:
    db.workers.announce(hostname, device="cpu", queues=queues, models=models, ttl_s=TTL_S)


def test_an_announcement_is_live_until_it_expires_and_a_heartbeat_extends_it(db: Database, clock: FakeClock) -> None:
    first = db.workers.announce("gpu0@a", device="cuda", queues=["rf.tiny.interactive"], models=["tiny"], ttl_s=TTL_S)
    assert [row.hostname for row in db.workers.live()] == ["gpu0@a"]
    assert (first.device, first.queues, first.models) == ("cuda", ("rf.tiny.interactive",), ("tiny",))

    clock.advance(TTL_S - 1)
    beat = db.workers.announce(
        "gpu0@a",
        device="cuda",
        queues=["rf.tiny.interactive", "rf.new.interactive"],
        models=["tiny", "new"],
        ttl_s=TTL_S,
    )
    assert beat.started_at == first.started_at  # the first announcement's time is kept...
    assert beat.seen_at == clock.now
    assert beat.seen_at > first.seen_at
    assert beat.queues == ("rf.tiny.interactive", "rf.new.interactive")

    clock.advance(TTL_S - 1)  # past the first announcement's expiry, within the heartbeat's
    assert [row.hostname for row in db.workers.live()] == ["gpu0@a"]
    clock.advance(1)  # exactly at the heartbeat's expiry: no longer counts
    assert db.workers.live() == []


def test_expired_rows_are_deleted_by_the_next_announcement_and_withdraw_deletes_at_once(
    db: Database, clock: FakeClock
) -> None:
    announce(db, "dead@a", ["rf.x.interactive"], ["x"])
    announce(db, "leaving@b", ["rf.y.interactive"], ["y"])
    clock.advance(TTL_S)
    assert db.workers.live(now=clock.now.replace(year=2000)) != []  # both rows still stored (seen from the past)

    announce(db, "fresh@c", ["rf.z.interactive"], ["z"])
    past = clock.now.replace(year=2000)
    assert [row.hostname for row in db.workers.live(now=past)] == ["fresh@c"]  # the expired rows are gone

    assert db.workers.withdraw("fresh@c") is True
    assert db.workers.withdraw("fresh@c") is False
    assert db.workers.live(now=past) == []


def test_the_registry_caches_for_a_moment_and_refresh_reads_now(db: Database) -> None:
    monotonic = ManualClock(0.0)
    registry = WorkerRegistry(db, cache_s=2.0, monotonic=monotonic)
    assert registry.served_queues() == frozenset()

    announce(db, "gpu0@a", ["rf.tiny.interactive", "rf.tiny.batch"], ["tiny"])
    assert not registry.serves_queue("rf.tiny.interactive")  # the cached answer, 0 s old
    monotonic.advance(2.0)
    assert registry.serves_queue("rf.tiny.interactive")
    assert registry.loadable_models() == {"tiny"}

    announce(db, "gpu1@b", ["rf.sdxl.interactive"], ["sdxl", "tiny"])
    assert not registry.serves_queue("rf.sdxl.interactive")
    registry.refresh()
    assert registry.served_queues() == {"rf.tiny.interactive", "rf.tiny.batch", "rf.sdxl.interactive"}
    assert registry.loadable_models() == {"tiny", "sdxl"}
    assert [row.hostname for row in registry.workers()] == ["gpu0@a", "gpu1@b"]


def test_the_registry_counts_workers_per_queue_and_remembers_when_a_queue_was_last_served(db: Database) -> None:
    """What waiting reasons and the ETA read (scheduler/waiting.py, scheduler/wait_estimate.py)."""
    monotonic = ManualClock(0.0)
    registry = WorkerRegistry(db, cache_s=2.0, monotonic=monotonic)
    assert registry.last_served_at("rf.tiny.interactive") is None
    announce(db, "gpu0@a", ["rf.tiny.interactive"], ["tiny"])
    assert [row.hostname for row in registry.workers()] == ["gpu0@a"]  # cached for 2 s
    announce(db, "gpu1@b", ["rf.tiny.interactive", "rf.tiny.batch"], ["tiny"])
    # A worker that started within the cache's lifetime is live once the answer is a moment old: its first claimed
    # job must not look orphaned for the rest of the cache's life.
    monotonic.advance(0.5)
    assert registry.is_live("gpu1@b")
    assert not registry.is_live("gpu9@gone")
    assert (registry.workers_serving("rf.tiny.interactive"), registry.workers_serving("rf.tiny.batch")) == (2, 1)
    seen = {row.hostname: row.seen_at for row in db.workers.live()}
    assert registry.last_served_at("rf.tiny.batch") == seen["gpu1@b"]
    db.workers.withdraw("gpu1@b")
    registry.refresh()
    assert registry.workers_serving("rf.tiny.batch") == 0
    assert registry.last_served_at("rf.tiny.batch") == seen["gpu1@b"]  # remembered after the worker left
    assert registry.last_served_at("rf.tiny.interactive") == max(seen.values())


def test_the_warning_names_the_model_and_the_field_that_chose_it(db: Database) -> None:
    announce(db, "gpu0@a", ["rf.tiny.interactive"], ["tiny"])
    registry = WorkerRegistry(db)
    base = {"init_images": ["asset:" + "0" * 64], "prompt": "p"}

    assert unserved_model_warning(registry, Img2ImgJob(**base, model="tiny"), "rf.tiny.interactive", "tiny") is None
    named = unserved_model_warning(registry, Img2ImgJob(**base, model="other"), "rf.other.interactive", "tiny")
    assert named is not None
    assert (named["code"], named["field"]) == ("no_worker_serves_model", "model")
    assert "'other'" in named["message"]
    assert "rf.other.interactive" in named["message"]

    override = Img2ImgJob(**base, override_settings={"sd_model_checkpoint": "ckpt"})
    by_option = unserved_model_warning(registry, override, "rf.ckpt.batch", "tiny")
    assert by_option is not None
    assert by_option["field"] == "override_settings.sd_model_checkpoint"
    default = unserved_model_warning(registry, Img2ImgJob(**base), "rf.default.interactive", "tiny")
    assert default is not None
    assert "'tiny'" in default["message"]


def test_an_unreadable_database_keeps_the_last_answer(tmp_path: Path) -> None:
    url = prepare_database("sqlite", tmp_path, None)
    with open_database(url) as db:
        announce(db, "gpu0@a", ["rf.tiny.interactive"], ["tiny"])
        registry = WorkerRegistry(db, cache_s=0.0)
        assert registry.serves_queue("rf.tiny.interactive")
        engine = make_engine(url)
        try:
            with engine.begin() as conn:  # reads now fail as an unreachable database's do (OperationalError)
                conn.execute(sa.text("DROP TABLE worker_announcements"))
        finally:
            engine.dispose()
        with pytest.raises(DatabaseUnavailable):
            db.workers.live()
        assert registry.serves_queue("rf.tiny.interactive")  # the last answer, not an error


def test_an_unreachable_database_before_any_answer_serves_nothing_and_raises_nothing() -> None:
    unreachable = Database.from_url("postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    try:
        registry = WorkerRegistry(unreachable, cache_s=0.0)
        assert registry.served_queues() == frozenset()
    finally:
        unreachable.close()
