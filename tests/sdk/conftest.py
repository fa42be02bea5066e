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

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from renderfarm import Client
from shared.config import Settings
from shared.db import upgrade
from shared.queueing import make_celery_app
from tests.sdk.clients import CLIENT_KINDS, ClientMaker
from tests.services import (
    S3Server,
    free_loopback_port,
    fresh_postgres_database,
    isolated_redis_database,
)

MODEL = "sdk-standin"  # the model name of these tests' jobs, hence their queues
QUEUES = (f"rf.{MODEL}.interactive", f"rf.{MODEL}.batch")
ALICE_TOKEN = "sdk-alice-token-0123456789"
BOB_TOKEN = "sdk-bob-token-0123456789abc"
TOKENS = f"alice:{ALICE_TOKEN},bob:{BOB_TOKEN}"
STANDIN_STEP_S = 0.02  # seconds per sampling step in the workers
READY_TIMEOUT_S = 180.0  # torch import and model load of two workers on two busy cores
STOP_TIMEOUT_S = 15.0
SIZE = 64  # pixels: the smallest side the spec allows
FAST_SETTINGS = {
    "RENDERFARM_RECONCILE_INTERVAL_S": "0.5",
    "RENDERFARM_RECONCILE_LOST_GRACE_S": "2",
    "RENDERFARM_LEASE_BASE_S": "10",
    "RENDERFARM_PROGRESS_INTERVAL_S": "0.05",
    "RENDERFARM_WORKER_SOFT_SHUTDOWN_S": "5",
    "RENDERFARM_METRICS_PORT": "0",
}


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process group (it leads its own), then SIGKILL what is left of it."""
        if self.alive():
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT_S)
        # Children (the Celery worker's pool) may outlive the leader: end the whole group.
        _signal_group(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=STOP_TIMEOUT_S)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log = log_dir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, process, log)


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


def _wait_http_ready(url: str, proc: Proc) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    delay = 0.05
    while True:
        if not proc.alive():
            pytest.fail(f"{proc.name} exited before it was ready:\n{proc.log_tail()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} not ready within {READY_TIMEOUT_S} s:\n{proc.log_tail()}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _wait_workers_ready(settings: Settings, workers: list[tuple[str, Proc]]) -> None:
    control = make_celery_app(settings, name="sdk-test-control")
    try:
        waiting = dict(workers)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while waiting:
            for hostname, proc in waiting.items():
                if not proc.alive():
                    pytest.fail(f"worker {hostname} exited before it was ready:\n{proc.log_tail()}")
            replies = control.control.ping(destination=list(waiting), timeout=0.5)
            for reply in replies:
                for hostname in reply:
                    waiting.pop(hostname, None)
            if waiting and time.monotonic() > deadline:
                pytest.fail(f"workers {sorted(waiting)} not ready within {READY_TIMEOUT_S} s")
    finally:
        control.close()


@pytest.fixture(scope="session")
def live_farm(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFarm]:
    root = tmp_path_factory.mktemp("sdk-farm")
    data_dir, models_dir, log_dir = root / "data", root / "models", root / "logs"
    for folder in (data_dir, models_dir, log_dir):
        folder.mkdir()
    with fresh_postgres_database() as database_url, isolated_redis_database() as redis_url:
        upgrade(database_url)
        bucket = s3_server.new_bucket()
        port = free_loopback_port()
        url = f"http://127.0.0.1:{port}"
        env = {key: value for key, value in os.environ.items() if not key.startswith("RENDERFARM_")}
        env.update(
            {
                "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
                "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
                "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
                "AWS_DEFAULT_REGION": s3_server.region,
                "RENDERFARM_DATABASE_URL": database_url,
                "RENDERFARM_REDIS_URL": redis_url,
                "RENDERFARM_STORAGE_URL": f"s3://{bucket}/farm",
                "RENDERFARM_S3_ENDPOINT_URL": s3_server.endpoint_url,
                "RENDERFARM_API_TOKENS": TOKENS,
                "RENDERFARM_DATA_DIR": str(data_dir),
                "RENDERFARM_MODELS_DIR": str(models_dir),
                "RENDERFARM_MODEL": MODEL,
                "RENDERFARM_PUBLIC_URL": url,
                **FAST_SETTINGS,
            }
        )
        settings = Settings(
            _env_file=None, data_dir=data_dir, database_url=database_url, redis_url=redis_url, api_tokens=TOKENS
        )
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
            scheduler = _spawn(
                "scheduler",
                [sys.executable, "-m", "renderfarm.cli", "scheduler", "--host", "127.0.0.1", "--port", str(port)],
                env,
                log_dir,
            )
            procs.append(scheduler)
            workers: list[tuple[str, Proc]] = []
            worker_env = {**env, "RENDERFARM_STANDIN_STEP_S": str(STANDIN_STEP_S)}
            for i in range(2):
                hostname = f"sdk{i}-{uuid.uuid4().hex[:6]}@test"
                argv = [sys.executable, "-m", "worker.service", "--device", "cpu", "--queues", ",".join(QUEUES)]
                proc = _spawn(f"worker{i}", [*argv, "--hostname", hostname], worker_env, log_dir)
                procs.append(proc)
                workers.append((hostname, proc))
            _wait_http_ready(f"{url}/readyz", scheduler)
            _wait_workers_ready(settings, workers)
            yield LiveFarm(url, tuple(h for h, _ in workers), settings, scheduler, tuple(p for _, p in workers))
        finally:
            for proc in reversed(procs):
                proc.stop()


# --------------------------------------------------------------------------------------------------------------
# Pictures and jobs


def picture(seed: int = 0) -> Image.Image:
    """A 64×64 gradient that differs per seed (so uploads of different seeds are different assets)."""
    image = Image.new("RGB", (SIZE, SIZE))
    image.putdata(
        [((x * 4 + seed) % 256, (y * 4) % 256, (x * y + seed * 7) % 256) for y in range(SIZE) for x in range(SIZE)]
    )
    return image


def mask_picture() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
