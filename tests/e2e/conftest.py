"""The end-to-end harness: the farm as it runs in production, as separate processes, driven over HTTP.

- PostgreSQL (a fresh database, migrated here), Redis (an isolated database number), moto's S3 server (a fresh bucket).
- One scheduler process for the session: `python -m renderfarm.cli scheduler` (API, dispatcher, reconciler).
- Celery worker processes, started by the tests: `renderfarm worker --gpus cpu` for the real engine on the default
  queue, and `python -m worker.service` with the stand-in engine (`RENDERFARM_STANDIN_STEP_S`) where a test is
  about the job system rather than pixels, each with its own hostname (so a test can tell which one ran a job) and
  its own queues.
- Queues isolate the tests from one another: a job's queue follows its model (`rf.<model>.interactive`), and
  `RENDERFARM_MODELS_DIR` holds links named after the tests (`e2e-standin`, `e2e-kill`, ...) to the one tiny model,
  built once before any worker starts. A queue that no worker consumes (`e2e-idle`) keeps jobs queued.
- Short reconcile, grace and lease settings, so recovery happens in seconds.

Readiness is polled, never slept for: the scheduler by `/readyz`, a worker by a Celery `ping` to its hostname
(answered once it consumes). Job states are polled with deadlines. Every process runs in its own session and its
whole process group is killed at teardown; logs go to files under the session's temporary folder.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from shared.config import Settings
from shared.db import upgrade
from shared.queueing import make_celery_app
from tests.processes import (
    Proc,
    free_loopback_port,
    scheduler_argv,
    spawn,
    wait_celery_workers_ready,
    wait_until_http_ready,
    worker_argv,
)
from tests.services import (
    S3Server,
    farm_environment,
    farm_settings,
    fast_recovery_environment,
    fresh_postgres_database,
    isolated_redis_database,
)
from tests.waiting import wait_until

ALICE_TOKEN = "e2e-alice-token-0123456789"
BOB_TOKEN = "e2e-bob-token-0123456789ab"
TOKENS = f"alice:{ALICE_TOKEN},bob:{BOB_TOKEN}"
E2E_METRICS_TOKEN = "e2e-metrics-token-5Hq2Lw9x"
E2E_DB_PASSWORD = "e2e-db-password-Zq81Vb"
E2E_S3_ACCESS_KEY = "AKIAE2EFARMKEY7Q3ZX1"
E2E_S3_SECRET_KEY = "e2e-s3-secret-key-Kx4rT9mP"
# What only the scheduler gets, as in deploy/ (a worker renders; it never authenticates anyone).
SCHEDULER_ONLY = ("RENDERFARM_API_TOKENS", "RENDERFARM_API_TOKENS_FILE", "RENDERFARM_METRICS_TOKEN")

READY_TIMEOUT_S = 120.0  # seconds a process may take to become ready (torch import and model load on 2 busy cores)
JOB_TIMEOUT_S = 90.0  # seconds a job may take to reach an expected state
TEST_MODELS = ("e2e-standin", "e2e-kill", "e2e-flush", "e2e-idle")  # model names, hence queues, of the tests
SIZE = 64  # pixels: the smallest side the spec allows

# Settings of every farm process. The lease is long enough that a slow first render on two busy cores keeps it; the
# SIGKILL test gives its doomed worker a short one (`WorkerPool.start(lease_base_s=...)`): a worker's own settings
# decide its lease.
FAST_SETTINGS = fast_recovery_environment(lost_grace_s=1, lease_base_s=60, progress_interval_s=0.1)


def queue_of(model: str) -> str:
    return f"rf.{model}.interactive"


# ------------------------------------------------------------------------------------------------------------------
# The farm's environment


@dataclass
class FarmEnv:
    """Where the farm's processes find everything, as the RENDERFARM_* environment they all share."""

    env: dict[str, str]
    settings: Settings  # the same settings, for the test process's own clients (database, Redis, Celery)
    postgres_url: str
    redis_url: str
    s3: S3Server
    bucket: str
    log_dir: Path

    def s3_keys(self, prefix: str) -> list[str]:
        """Every object key in the farm's bucket under `farm/{prefix}`."""
        client = self.s3.client()
        try:
            listing = client.list_objects_v2(Bucket=self.bucket, Prefix=f"farm/{prefix}")
            return sorted(item["Key"] for item in listing.get("Contents", []))
        finally:
            client.close()


@pytest.fixture(scope="session")
def e2e_databases() -> Iterator[tuple[str, str]]:
    """A PostgreSQL database and a Redis database of the e2e farm's own.

    The farm's scheduler and workers live until the end of the test session; on the session's shared databases
    its dispatcher would publish, and its workers render, jobs that later test folders create for themselves.
    """
    with fresh_postgres_database() as postgres_url, isolated_redis_database() as redis_url:
        yield postgres_url, redis_url


@pytest.fixture(scope="session")
def farm_env(e2e_databases: tuple[str, str], s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> FarmEnv:
    from worker.engine.models import build_tiny_model

    postgres_url, redis_url = e2e_databases
    root = tmp_path_factory.mktemp("e2e")
    data_dir, models_dir, log_dir = root / "data", root / "models", root / "logs"
    for folder in (data_dir, models_dir, log_dir):
        folder.mkdir()
    upgrade(postgres_url)
    # Built once, before any worker starts: two workers building it at once would race on the folder.
    tiny = build_tiny_model(data_dir / "models" / "tiny")
    for name in TEST_MODELS:
        (models_dir / name).symlink_to(tiny, target_is_directory=True)
    bucket = s3_server.new_bucket()
    # Secrets of the farm's own, recognisable in its logs (tests/e2e/test_secrets.py greps for them): S3 keys
    # (moto takes any) and a database password (the test server trusts local connections and never asks for it).
    farm_s3 = dataclasses.replace(s3_server, access_key_id=E2E_S3_ACCESS_KEY, secret_access_key=E2E_S3_SECRET_KEY)
    database_url = postgres_url.replace("://postgres@", f"://postgres:{E2E_DB_PASSWORD}@", 1)
    env = farm_environment(database_url, redis_url, farm_s3, bucket, TOKENS, data_dir, **FAST_SETTINGS)
    env["RENDERFARM_MODELS_DIR"] = str(models_dir)
    env["RENDERFARM_METRICS_TOKEN"] = E2E_METRICS_TOKEN
    settings = farm_settings(postgres_url, redis_url, s3_server, bucket, TOKENS, data_dir)
    return FarmEnv(env, settings, postgres_url, redis_url, s3_server, bucket, log_dir)


# ------------------------------------------------------------------------------------------------------------------
# The scheduler


@dataclass
class Scheduler:
    url: str
    proc: Proc


def wait_ready(url: str, proc: Proc, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200; fail early, with the process's log, if it exits."""
    wait_until_http_ready(url, proc.alive, timeout_s, want=200, log=proc.log_tail)


@pytest.fixture(scope="session")
def scheduler(farm_env: FarmEnv) -> Iterator[Scheduler]:
    port = free_loopback_port()
    proc = spawn("scheduler", scheduler_argv(port), farm_env.env, farm_env.log_dir)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/readyz", proc)
        yield Scheduler(url, proc)
    finally:
        proc.stop()


# ------------------------------------------------------------------------------------------------------------------
# Workers


@dataclass
class Worker:
    hostname: str
    proc: Proc


class WorkerPool:
    """Starts worker processes and stops every one it started."""

    def __init__(self, farm: FarmEnv) -> None:
        self.farm = farm
        self.started: list[Worker] = []
        self._control: Any = None

    def start(
        self,
        hostname: str,
        queues: Sequence[str] | None,
        *,
        standin_step_s: float | None = None,
        lease_base_s: float | None = None,
        wait: bool = True,
        env_more: Mapping[str, str] | None = None,
    ) -> Worker:
        """`python -m worker.service` on `queues` as `hostname` (unique per test run), ready when returned.

        `queues` None: every queue of the models it can serve (give it a RENDERFARM_MODELS_DIR of its own in
        `env_more`, or it consumes the queues the other tests keep for themselves).
        `standin_step_s`: the stand-in engine with this many seconds per step, instead of rendering.
        `lease_base_s`: this worker's lease base (seconds), which is how soon its jobs are recovered if it dies.
        `env_more`: further variables of its environment.
        """
        env = {**self.worker_env(), **(env_more or {})}
        if standin_step_s is not None:
            env["RENDERFARM_STANDIN_STEP_S"] = str(standin_step_s)
        if lease_base_s is not None:
            env["RENDERFARM_LEASE_BASE_S"] = str(lease_base_s)
        argv = worker_argv(queues, hostname)
        worker = Worker(hostname, spawn(hostname.split("@", 1)[0], argv, env, self.farm.log_dir))
        self.started.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def worker_env(self) -> dict[str, str]:
        """The farm's environment without what only the scheduler gets."""
        return {key: value for key, value in self.farm.env.items() if key not in SCHEDULER_ONLY}

    def start_cli(self, queues: Sequence[str]) -> Worker:
        """`renderfarm worker --gpus cpu --queues ...`: the command line's CPU worker (hostname `cpu@<host>`)."""
        import socket

        argv = [sys.executable, "-m", "renderfarm.cli", "worker", "--gpus", "cpu", "--queues", ",".join(queues)]
        worker = Worker(f"cpu@{socket.gethostname()}", spawn("cli-worker", argv, self.worker_env(), self.farm.log_dir))
        self.started.append(worker)
        self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Celery's own readiness: the worker answers a broadcast ping only once it consumes its queues."""
        if self._control is None:
            self._control = make_celery_app(self.farm.settings, name="e2e-control")
        wait_celery_workers_ready(self._control, {worker.hostname: worker.proc}, timeout_s)

    def stop_all(self) -> None:
        for worker in reversed(self.started):
            worker.proc.stop()
        self.started.clear()
        if self._control is not None:
            self._control.close()
            self._control = None


def unique_hostname(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:6]}@e2e"


@pytest.fixture
def workers(farm_env: FarmEnv) -> Iterator[WorkerPool]:
    """Workers for one test; all stopped after it."""
    pool = WorkerPool(farm_env)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="session")
def render_worker(farm_env: FarmEnv, scheduler: Scheduler) -> Iterator[Worker]:
    """The real engine on the default queue, started by `renderfarm worker --gpus cpu`."""
    pool = WorkerPool(farm_env)
    try:
        yield pool.start_cli([queue_of("default")])
    finally:
        pool.stop_all()


STANDIN_STEP_S = 0.25  # seconds per step of the shared stand-in workers: 8 steps last 2 s, long enough to watch


@pytest.fixture(scope="session")
def standin_workers(farm_env: FarmEnv, scheduler: Scheduler) -> Iterator[list[Worker]]:
    """Two stand-in workers sharing the `e2e-standin` queue."""
    pool = WorkerPool(farm_env)
    try:
        started = [
            pool.start(unique_hostname(f"standin{i}"), [queue_of("e2e-standin")], standin_step_s=STANDIN_STEP_S)
            for i in range(2)
        ]
        yield started
    finally:
        pool.stop_all()


# ------------------------------------------------------------------------------------------------------------------
# The API


def png_bytes(color: tuple[int, int, int] = (200, 60, 40)) -> bytes:
    image = Image.new("RGB", (SIZE, SIZE), color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Api:
    """One tenant's HTTP client of the scheduler, with the helpers the tests share."""

    client: httpx.Client
    _image: str | None = field(default=None, repr=False)

    def image(self) -> str:
        """An uploaded input picture's reference (uploaded once per client)."""
        if self._image is None:
            response = self.client.post("/v1/assets", content=png_bytes(), headers={"Content-Type": "image/png"})
            assert response.status_code in (200, 201), response.text
            self._image = response.json()["asset_id"]
        return self._image

    def body(self, *, model: str | None = None, **fields: Any) -> dict[str, Any]:
        """A small valid job; `model` picks its queue (`rf.<model>.interactive`)."""
        job: dict[str, Any] = {
            "init_images": [self.image()],
            "prompt": "a red square",
            "steps": 8,
            "width": SIZE,
            "height": SIZE,
            "seed": 7,
            **fields,
        }
        if model is not None:
            job["model"] = model
        return job

    def submit(self, task_id: str | None = None, *, model: str | None = None, **fields: Any) -> dict[str, Any]:
        """PUT (with `task_id`) or POST a job; returns the 201 snapshot."""
        body = self.body(model=model, **fields)
        if task_id is None:
            response = self.client.post("/v1/jobs", json=body)
        else:
            response = self.client.put(f"/v1/jobs/{task_id}", json=body)
        assert response.status_code == 201, response.text
        snapshot: dict[str, Any] = response.json()
        return snapshot

    def get(self, task_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{task_id}")
        assert response.status_code == 200, response.text
        snapshot: dict[str, Any] = response.json()
        return snapshot

    def wait_for(
        self,
        task_id: str,
        done: Callable[[dict[str, Any]], bool],
        *,
        timeout_s: float = JOB_TIMEOUT_S,
        what: str = "the expected state",
    ) -> dict[str, Any]:
        """Poll the job until `done(snapshot)`; fail at the deadline with the last snapshot."""
        last: list[dict[str, Any]] = [{}]

        def reached() -> dict[str, Any] | None:
            last[0] = self.get(task_id)
            return last[0] if done(last[0]) else None

        return wait_until(reached, timeout_s, lambda: f"job {task_id} to reach {what}; last snapshot: {last[0]}")

    def wait_state(self, task_id: str, state: str, *, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        terminal = {"succeeded", "failed", "canceled"}
        snapshot = self.wait_for(
            task_id, lambda s: s["state"] == state or s["state"] in terminal, timeout_s=timeout_s, what=state
        )
        assert snapshot["state"] == state, f"job {task_id}: expected {state}, got {snapshot}"
        return snapshot


def _api(scheduler: Scheduler, token: str) -> Iterator[Api]:
    with httpx.Client(base_url=scheduler.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0) as client:
        yield Api(client)


@pytest.fixture
def alice(scheduler: Scheduler) -> Iterator[Api]:
    yield from _api(scheduler, ALICE_TOKEN)


@pytest.fixture
def bob(scheduler: Scheduler) -> Iterator[Api]:
    yield from _api(scheduler, BOB_TOKEN)


def new_task_id(label: str) -> str:
    return f"e2e-{label}-{uuid.uuid4().hex[:10]}"
