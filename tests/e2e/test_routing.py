"""Routing (docs/architecture.md "Routing"): workers announce what they serve, consume every servable model's queues
and pick up new models while they run; the scheduler warns about jobs no live worker serves and lists the workers.

Real parts: the e2e farm's PostgreSQL, Redis, S3 and scheduler process, and `python -m worker.service` processes
started without `--queues`, each on a models folder of its own (so it consumes none of the queues the other e2e tests
keep for themselves), with a heartbeat of half a second so that expiry takes about a second, polled, never slept.
The embedded farm (`renderfarm.embedded.running_farm`) renders a job for every built-in model.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from renderfarm.embedded import running_farm
from scheduler.snapshots import public_worker_name
from shared.config import Settings
from shared.db import Database, WorkerRow
from shared.models import TINY_NAMES
from shared.queueing import make_celery_app, queue_name
from tests.e2e.conftest import (
    JOB_TIMEOUT_S,
    READY_TIMEOUT_S,
    Api,
    FarmEnv,
    Scheduler,
    WorkerPool,
    new_task_id,
    png_bytes,
    unique_hostname,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow]

HEARTBEAT_S = 0.5  # the workers' heartbeat here; announcements expire after HEARTBEAT_MISSES of them
HEARTBEAT_MISSES = 2
UNSERVED = "no_worker_serves_model"
EVERYTHING_STORED = datetime(2000, 1, 1, tzinfo=UTC)  # `live(now=...)` this early lists every row still stored


@pytest.fixture
def db(farm_env: FarmEnv) -> Iterator[Database]:
    database = Database.from_url(farm_env.postgres_url)
    yield database
    database.close()


@pytest.fixture
def celery_control(farm_env: FarmEnv) -> Iterator[Any]:
    app = make_celery_app(farm_env.settings, name="e2e-routing-control")
    yield app
    app.close()


def tiny_model(farm_env: FarmEnv) -> Path:
    """The tiny model the e2e farm built before any worker started (tests/e2e/conftest.py)."""
    return Path(farm_env.env["RENDERFARM_DATA_DIR"]) / "models" / "tiny"


def start_routing_worker(workers: WorkerPool, models_dir: Path, hostname: str, *, misses: int) -> None:
    workers.start(
        hostname,
        None,  # no --queues: every servable model's
        standin_step_s=0.01,
        wait=False,
        env_more={
            "RENDERFARM_MODELS_DIR": str(models_dir),
            "RENDERFARM_WORKER_HEARTBEAT_S": str(HEARTBEAT_S),
            "RENDERFARM_WORKER_HEARTBEAT_MISSES": str(misses),
        },
    )


def announcement(db: Database, hostname: str) -> WorkerRow | None:
    return next((row for row in db.workers.live() if row.hostname == hostname), None)


def consumed_by_celery(control: Any, hostname: str) -> set[str]:
    """The queues the worker's Celery consumer consumes now, as it answers itself (not as it announces)."""
    replies = control.control.inspect(destination=[hostname], timeout=1.0).active_queues() or {}
    return {queue["name"] for queue in replies.get(hostname, [])}


def listed_queues(api: Api, hostname: str) -> set[str]:
    """The queues GET /v1/workers lists for the worker (named as job snapshots name it)."""
    response = api.client.get("/v1/workers")
    assert response.status_code == 200, response.text
    public = public_worker_name(hostname)
    return {queue for item in response.json()["workers"] if item["worker"] == public for queue in item["queues"]}


def codes(snapshot: dict[str, Any]) -> list[str]:
    return [warning["code"] for warning in snapshot["warnings"]]


def test_a_worker_serves_its_models_picks_up_a_new_one_and_the_scheduler_knows(
    farm_env: FarmEnv,
    scheduler: Scheduler,
    workers: WorkerPool,
    alice: Api,
    db: Database,
    celery_control: Any,
    tmp_path: Path,
) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    first, later = f"route-{uuid.uuid4().hex[:6]}", f"route-{uuid.uuid4().hex[:6]}"
    (models_dir / first).symlink_to(tiny_model(farm_env), target_is_directory=True)
    hostname = unique_hostname("routing")
    start_routing_worker(workers, models_dir, hostname, misses=HEARTBEAT_MISSES)
    workers.wait_ready(workers.started[-1])

    row = wait_until(lambda: announcement(db, hostname), READY_TIMEOUT_S, f"{hostname}'s announcement")
    assert {"tiny", "tiny-inpaint", "tiny-edit", first} <= set(row.models)
    first_queues = {queue_name(first, batch=False), queue_name(first, batch=True)}
    assert first_queues <= set(row.queues)
    assert row.queues[0] == queue_name(None, batch=False)  # interactive queues first
    assert set(row.queues) == consumed_by_celery(celery_control, hostname)  # it consumes what it announces
    assert queue_name(later, batch=False) not in set(row.queues)

    # A job for a model no live worker serves is accepted, with the warning naming the model.
    idle = alice.submit(new_task_id("unserved"), model="e2e-idle")
    assert idle["state"] == "queued"
    (warning,) = [w for w in idle["warnings"] if w["code"] == UNSERVED]
    assert warning["field"] == "model"
    assert "'e2e-idle'" in warning["message"]

    # A model added while the worker runs: its queues are consumed without a restart, and announced.
    (models_dir / later).symlink_to(tiny_model(farm_env), target_is_directory=True)
    later_queue = queue_name(later, batch=False)
    wait_until(
        lambda: later_queue in consumed_by_celery(celery_control, hostname),
        JOB_TIMEOUT_S,
        f"{hostname} to consume {later_queue}",
        max_interval=0.5,
    )
    wait_until(lambda: later_queue in listed_queues(alice, hostname), JOB_TIMEOUT_S, "GET /v1/workers to list it")

    served = alice.submit(new_task_id("served"), model=later)
    assert UNSERVED not in codes(served)
    done = alice.wait_state(served["task_id"], "succeeded")
    assert done["worker"] == public_worker_name(hostname)


def test_announcements_are_withdrawn_on_sigterm_and_expire_after_kill_9(
    farm_env: FarmEnv, scheduler: Scheduler, workers: WorkerPool, alice: Api, db: Database, tmp_path: Path
) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    killed, stopped = unique_hostname("killed"), unique_hostname("stopped")
    start_routing_worker(workers, models_dir, killed, misses=HEARTBEAT_MISSES)
    # The stopped worker's announcement would count for minutes: only its withdrawal can make it vanish at once.
    start_routing_worker(workers, models_dir, stopped, misses=1000)
    for worker in workers.started:
        workers.wait_ready(worker)
    wait_until(lambda: announcement(db, killed) and announcement(db, stopped), READY_TIMEOUT_S, "both announcements")
    wait_until(lambda: listed_queues(alice, killed), JOB_TIMEOUT_S, "GET /v1/workers to list the doomed worker")

    doomed = next(worker for worker in workers.started if worker.hostname == killed)
    doomed.proc.kill_now()  # SIGKILL: no withdrawal, its heartbeats just stop
    wait_until(lambda: announcement(db, killed) is None, JOB_TIMEOUT_S, f"{killed}'s announcement to expire")
    wait_until(lambda: not listed_queues(alice, killed), JOB_TIMEOUT_S, "GET /v1/workers to forget it")

    leaving = next(worker for worker in workers.started if worker.hostname == stopped)
    leaving.proc.stop()  # SIGTERM: a warm shutdown withdraws the announcement
    assert leaving.proc.process.returncode is not None
    stored = {row.hostname for row in db.workers.live(now=EVERYTHING_STORED)}
    assert stopped not in stored, leaving.proc.log_tail()


# ----------------------------------------------------------------------------------------------------------------
# The embedded farm


def mask_png() -> bytes:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_embedded_farm_renders_every_built_in_model(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")
    assert settings.embedded
    with running_farm(settings) as farm, httpx.Client(base_url=farm.url, timeout=30.0) as client:
        listed = client.get("/v1/workers").json()
        for model in TINY_NAMES:
            assert queue_name(model, batch=False) in listed["queues"]
            assert model in listed["models"]
        assert [item["worker"] for item in listed["workers"]] == [public_worker_name(farm.worker.controller.hostname)]

        def upload(data: bytes) -> str:
            response = client.post("/v1/assets", content=data, headers={"Content-Type": "image/png"})
            assert response.status_code in (200, 201), response.text
            return str(response.json()["asset_id"])

        image, mask = upload(png_bytes()), upload(mask_png())
        inpainting = {"mask": mask, "inpainting_fill": 1, "denoising_strength": 0.75}
        jobs: dict[str, dict[str, Any]] = {
            "tiny": {},
            "tiny-inpaint": inpainting,
            "tiny-edit": {},
            "tiny-xl": {},
            "tiny-xl-inpaint": inpainting,
        }
        assert set(jobs) == set(TINY_NAMES)  # a new built-in model gets a job here
        for model, fields in jobs.items():
            body = {"init_images": [image], "prompt": "a red square", "steps": 4, "width": 64, "height": 64}
            created = client.put(f"/v1/jobs/{model}-1", json={**body, **fields, "model": model})
            assert created.status_code == 201, created.text
            assert UNSERVED not in codes(created.json())

            def finished(task_id: str = f"{model}-1") -> dict[str, Any] | None:
                snapshot: dict[str, Any] = client.get(f"/v1/jobs/{task_id}").json()
                return snapshot if snapshot["state"] in ("succeeded", "failed", "canceled") else None

            snapshot = wait_until(finished, JOB_TIMEOUT_S, f"the {model} job to finish")
            assert snapshot["state"] == "succeeded", snapshot
            assert snapshot["worker"].startswith("embedded@")
