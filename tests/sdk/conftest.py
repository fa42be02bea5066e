"""A live farm for the SDK and batch tests: a scheduler process and two Celery worker processes (stand-in engine),
on their own PostgreSQL database, Redis database and S3 bucket, so nothing else in the test session can touch their
jobs or take their messages.

- The jobs of these tests name the model `sdk-standin` (a link to the tiny model in RENDERFARM_MODELS_DIR), so they
  go to the queues `rf.sdk-standin.interactive` and `rf.sdk-standin.batch`, which only these workers consume.
- The workers sleep `STANDIN_STEP_S` per sampling step instead of rendering (worker/standin.py): the whole job path
  runs (claim, inputs from S3, progress, cancel checks, upload, fenced commit) in a fraction of a second.
- Readiness is polled: the scheduler by `/readyz`, each worker by a Celery ping to its hostname. Never a sleep.
- Two tenants: alice and bob, with their own tokens.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from renderfarm import Client
from shared.config import Settings
from shared.db import upgrade
from shared.queueing import make_celery_app
from tests import processes, services
from tests.pictures import centre_mask, png_bytes
from tests.pictures import picture as picture
from tests.processes import Proc
from tests.sdk.clients import CLIENT_KINDS, ClientMaker
from tests.services import S3Server

MODEL = "sdk-standin"  # the model name of these tests' jobs, hence their queues
QUEUES = (f"rf.{MODEL}.interactive", f"rf.{MODEL}.batch")
ALICE_TOKEN = "sdk-alice-token-0123456789"
BOB_TOKEN = "sdk-bob-token-0123456789abc"
TOKENS = f"alice:{ALICE_TOKEN},bob:{BOB_TOKEN}"
STANDIN_STEP_S = 0.02  # seconds per sampling step in the workers
READY_TIMEOUT_S = 180.0  # torch import and model load of two workers on two busy cores
SIZE = 64  # pixels: the smallest side the spec allows
FAST_SETTINGS = services.fast_recovery_environment(lost_grace_s=2, lease_base_s=10, progress_interval_s=0.05)


@dataclass
class LiveFarm:
    """The running farm: its URL, the workers' hostnames, the settings the test process uses to look inside."""

    url: str
    workers: tuple[str, ...]
    settings: Settings
    scheduler: Proc
    worker_procs: tuple[Proc, ...]

    def logs(self) -> str:
        return "\n".join(f"--- {proc.name}\n{proc.log_tail()}" for proc in (self.scheduler, *self.worker_procs))


@pytest.fixture(scope="session")
def live_farm(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFarm]:
    root = tmp_path_factory.mktemp("sdk-farm")
    data_dir, models_dir, log_dir = root / "data", root / "models", root / "logs"
    for folder in (data_dir, models_dir, log_dir):
        folder.mkdir()
    with services.fresh_postgres_database() as database_url, services.isolated_redis_database() as redis_url:
        upgrade(database_url)
        bucket = s3_server.new_bucket()
        port = processes.free_loopback_port()
        url = f"http://127.0.0.1:{port}"
        env = services.farm_environment(database_url, redis_url, s3_server, bucket, TOKENS, data_dir, **FAST_SETTINGS)
        env.update(RENDERFARM_MODELS_DIR=str(models_dir), RENDERFARM_MODEL=MODEL, RENDERFARM_PUBLIC_URL=url)
        settings = services.farm_settings(database_url, redis_url, s3_server, bucket, TOKENS, data_dir)
        # The tiny model is built once, before the workers start (two building it at once would race); it runs in
        # a process of its own so that this test process never imports torch.
        tiny = data_dir / "models" / "tiny"
        build = subprocess.run(
            [sys.executable, "-m", "renderfarm.cli", "model", "build-tiny", str(tiny)],
            env=env,
            capture_output=True,
            timeout=READY_TIMEOUT_S,
            check=False,
        )
        assert build.returncode == 0, build.stderr.decode(errors="replace")[-4000:]
        (models_dir / MODEL).symlink_to(tiny, target_is_directory=True)
        procs: list[Proc] = []
        try:
            scheduler = processes.spawn("scheduler", processes.scheduler_argv(port), env, log_dir)
            procs.append(scheduler)
            workers: list[tuple[str, Proc]] = []
            worker_env = {**env, "RENDERFARM_STANDIN_STEP_S": str(STANDIN_STEP_S)}
            for i in range(2):
                hostname = f"sdk{i}-{uuid.uuid4().hex[:6]}@test"
                proc = processes.spawn(f"worker{i}", processes.worker_argv(QUEUES, hostname), worker_env, log_dir)
                procs.append(proc)
                workers.append((hostname, proc))
            processes.wait_until_http_ready(
                f"{url}/readyz", scheduler.alive, READY_TIMEOUT_S, want=200, log=scheduler.log_tail
            )
            control = make_celery_app(settings, name="sdk-test-control")
            try:
                processes.wait_celery_workers_ready(control, dict(workers), READY_TIMEOUT_S)
            finally:
                control.close()
            yield LiveFarm(url, tuple(h for h, _ in workers), settings, scheduler, tuple(p for _, p in workers))
        finally:
            for proc in reversed(procs):
                proc.stop()


# --------------------------------------------------------------------------------------------------------------
# Pictures and jobs


mask_picture = centre_mask  # the names these tests use for the shared pictures
png = png_bytes


def job_fields(**overrides: Any) -> dict[str, Any]:
    """A small job of these tests' model: 6 steps at 0.75 strength = 4 stand-in steps."""
    return {"model": MODEL, "prompt": "a red square", "steps": 6, "width": SIZE, "height": SIZE, **overrides}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def alice_token() -> str:
    return ALICE_TOKEN


@pytest.fixture
def bob_token() -> str:
    return BOB_TOKEN


@pytest.fixture(params=CLIENT_KINDS)
def make_client(request: pytest.FixtureRequest) -> Iterator[ClientMaker]:
    """Runs the test once with `Client` and once with `AsyncClient` (driven through `tests.sdk.clients`)."""
    maker = ClientMaker(request.param)
    yield maker
    maker.close_all()


@pytest.fixture
def farm(live_farm: LiveFarm, alice_token: str, make_client: ClientMaker) -> Client:
    """Alice's client of the live farm: `Client`, then `AsyncClient` (see `make_client`)."""
    return make_client(live_farm.url, token=alice_token)
