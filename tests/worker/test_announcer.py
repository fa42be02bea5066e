"""What a worker can serve (worker/servable.py) and its announcement's heartbeat (worker/announcer.py), on a real
models folder and a real SQLite database."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from shared.config import Settings
from shared.db import Database, upgrade
from shared.models import TINY_NAMES
from shared.queueing import queue_name
from tests.waiting import wait_until
from worker.announcer import Announcer
from worker.servable import queues_for_models, servable_model_names
from worker.status import JobStatus, status_provider


def settings_for(tmp_path: Path, models_dir: Path | None, **more: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", models_dir=models_dir, **more)  # type: ignore[arg-type]


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "diffusers-model").mkdir()  # a diffusers folder
    (folder / "single.safetensors").write_bytes(b"not read: the listing is names only")
    (folder / "old.ckpt").write_bytes(b"x")
    (folder / "notes.txt").write_text("not a model")
    (folder / ".hidden").mkdir()
    (folder / "embeddings").mkdir()  # textual inversions, not a model
    return folder


def test_servable_models_are_the_default_the_tiny_ones_and_the_folder(tmp_path: Path, models_dir: Path) -> None:
    names = servable_model_names(settings_for(tmp_path, models_dir))
    # Canonical names (shared.models): a checkpoint file's name keeps its extension, as the reference's `name` does.
    tiny = [n for n in TINY_NAMES if n != "tiny"]
    assert names == ["tiny", *tiny, "diffusers-model", "old.ckpt", "single.safetensors"]
    assert servable_model_names(settings_for(tmp_path, None)) == ["tiny", *tiny]
    assert "tiny-inpaint" in names
    assert "tiny-edit" in names


def test_queues_are_interactive_first_and_the_default_model_serves_jobs_without_a_model(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, None)
    queues = queues_for_models(["tiny", "tiny-inpaint", "Tiny Inpaint"], settings)  # the last shares a family
    assert queues == [
        queue_name(None, batch=False),
        queue_name("tiny", batch=False),
        queue_name("tiny-inpaint", batch=False),
        queue_name(None, batch=True),
        queue_name("tiny", batch=True),
        queue_name("tiny-inpaint", batch=True),
    ]
    assert queue_name(None, batch=False) not in queues_for_models(["other"], settings)
    # A pool per tier (deploy/k8s: `--tier`): one tier's queues of the same models, in the same order.
    assert queues_for_models(["tiny", "tiny-inpaint"], settings, "interactive") == queues[:3]
    assert queues_for_models(["tiny", "tiny-inpaint"], settings, "batch") == queues[3:]


def test_a_tier_s_worker_consumes_only_that_tier_of_a_new_model(tmp_path: Path, models_dir: Path) -> None:
    settings = settings_for(tmp_path, models_dir, worker_heartbeat_s=3600.0)
    db = migrated(tmp_path)
    added: list[str] = []
    start = queues_for_models(servable_model_names(settings), settings, "batch")
    announcer = Announcer(
        db, settings, hostname="gpu1@a", device="cuda", consuming=start, add_queue=added.append, tier="batch"
    )
    try:
        announcer.start()
        (models_dir / "fresh.safetensors").write_bytes(b"x")
        announcer.beat()
        assert added == [queue_name("fresh.safetensors", batch=True)]
        (row,) = db.workers.live()
        assert all(queue.endswith(".batch") for queue in row.queues)
    finally:
        announcer.stop()
        db.close()


def migrated(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'db' / 'renderfarm.db'}"
    upgrade(url)
    return Database.from_url(url)


def test_a_new_model_file_gets_its_queues_consumed_and_announced(tmp_path: Path, models_dir: Path) -> None:
    settings = settings_for(tmp_path, models_dir, worker_heartbeat_s=3600.0)  # beats are driven by the test
    db = migrated(tmp_path)
    added: list[str] = []
    start = queues_for_models(servable_model_names(settings), settings)
    announcer = Announcer(db, settings, hostname="gpu0@a", device="cuda", consuming=start, add_queue=added.append)
    try:
        announcer.start()  # announces before it returns
        (row,) = db.workers.live()
        assert (row.hostname, row.device, list(row.queues)) == ("gpu0@a", "cuda", start)
        assert "diffusers-model" in row.models
        assert added == []

        (models_dir / "fresh.safetensors").write_bytes(b"x")
        announcer.beat()
        fresh = "fresh.safetensors"  # its canonical name: what a job for it stores after submission
        assert added == [queue_name(fresh, batch=False), queue_name(fresh, batch=True)]
        (row,) = db.workers.live()
        assert row.queues[-1] == queue_name(fresh, batch=True)
        assert fresh in row.models

        announcer.beat()
        assert len(added) == 2  # nothing new: nothing added again
    finally:
        announcer.stop()
    assert db.workers.live() == []  # withdrawn
    db.close()


def test_pinned_queues_stay_pinned_while_models_are_still_announced(tmp_path: Path, models_dir: Path) -> None:
    settings = settings_for(tmp_path, models_dir, worker_heartbeat_s=3600.0)
    db = migrated(tmp_path)
    announcer = Announcer(db, settings, hostname="cpu@a", device="cpu", consuming=["rf.only.interactive"])
    try:
        announcer.start()
        (models_dir / "fresh").mkdir()
        announcer.beat()
        (row,) = db.workers.live()
        assert row.queues == ("rf.only.interactive",)
        assert "fresh" in row.models
    finally:
        announcer.stop()
        db.close()


def test_a_database_error_is_logged_and_retried_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The database exists but has no tables yet (a migration still running): announcing fails like an outage
    (OperationalError), the worker carries on, and the heartbeat succeeds once the table is there."""
    url = f"sqlite:///{tmp_path / 'late.db'}"
    db = Database.from_url(url)
    settings = settings_for(tmp_path, None, worker_heartbeat_s=0.05, worker_heartbeat_misses=1000)
    announcer = Announcer(db, settings, hostname="cpu@late", device="cpu", consuming=["rf.default.interactive"])
    try:
        with caplog.at_level(logging.WARNING, logger="worker.announcer"):
            announcer.start()  # does not raise
        assert not announcer.announced.is_set()
        assert "announcing failed" in caplog.text
        upgrade(url)
        wait_until(announcer.announced.is_set, 30.0, "the retried announcement")
        assert [row.hostname for row in db.workers.live()] == ["cpu@late"]
    finally:
        announcer.stop()
        db.close()


def test_every_heartbeat_writes_the_status_the_provider_gives(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, None, worker_heartbeat_s=3600.0)
    db = migrated(tmp_path)
    status: dict[str, Any] = {"gpu": "cpu", "loaded_models": [], "current_job": None, "oom_count": 0}
    announcer = Announcer(
        db, settings, hostname="cpu@s", device="cpu", consuming=["rf.default.interactive"], status=lambda: status
    )
    try:
        announcer.start()
        (row,) = db.workers.live()
        assert row.status == status
        status = {**status, "loaded_models": ["tiny"], "current_job": "t-1", "step": 3, "total_steps": 8}
        status.update(steps_per_s=2.5, oom_count=1)
        announcer.beat()
        (row,) = db.workers.live()
        assert row.status == status
    finally:
        announcer.stop()
        db.close()


def test_a_status_provider_that_raises_costs_the_status_not_the_heartbeat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, None, worker_heartbeat_s=3600.0)
    db = migrated(tmp_path)
    calls: list[int] = []

    def broken() -> dict[str, Any]:
        calls.append(1)
        raise RuntimeError("no status today")

    announcer = Announcer(
        db, settings, hostname="cpu@b", device="cpu", consuming=["rf.default.interactive"], status=broken
    )
    try:
        with caplog.at_level(logging.WARNING, logger="worker.announcer"):
            announcer.start()
            first = db.workers.live()[0].seen_at
            announcer.beat()
        (row,) = db.workers.live()
        assert row.status is None
        assert row.seen_at >= first
        assert len(calls) == 2
        assert caplog.text.count("no status today") == 1  # logged once, not every heartbeat
    finally:
        announcer.stop()
        db.close()


def test_the_status_provider_works_before_the_worker_built_its_deps() -> None:
    """A Celery worker builds its deps in its first task or warm-up; its heartbeats before that say what it can."""
    before = status_provider(lambda: None, "cpu")()
    assert (before["gpu"], before["loaded_models"], before["oom_count"], before["current_job"]) == ("cpu", [], 0, None)


def test_the_step_speed_counts_from_the_first_step_and_restarts_with_a_retry() -> None:
    """Steps per second from the render's first step (the set-up before it not counted); a render that starts again
    (the batch split after an out-of-memory error) measures afresh; the last job's speed stays after it."""
    status = JobStatus()
    status.job_started("t-1")
    status.record_step(1, 10, now=100.0)  # the first step: no speed yet
    assert status.snapshot()["steps_per_s"] is None
    status.record_step(5, 10, now=102.0)
    assert status.snapshot() == {"current_job": "t-1", "step": 5, "total_steps": 10, "steps_per_s": 2.0}
    status.record_step(1, 20, now=110.0)  # started again, split in two batches
    status.record_step(11, 20, now=111.0)
    assert status.snapshot()["steps_per_s"] == 10.0
    status.job_ended()
    assert status.snapshot() == {"current_job": None, "step": None, "total_steps": None, "steps_per_s": 10.0}
