"""The fault suite's farm: real processes on services the suite can break.

- Redis: a `redis-server` of the suite's own (`OwnRedis`), so a case can flush it and restart it.
- PostgreSQL: a fresh database on the shared server, reached by the farm through a `FaultProxy` (the shared server
  cannot be restarted by one test run; the proxy refusing and resetting every connection is what a restart looks
  like from the farm's side). The suite's own checks use the direct address.
- S3: moto's server behind another `FaultProxy`, which refuses, hangs or resets.
- One scheduler process (restartable) and a pool of stand-in workers (`tests.fault_suite.faulty_worker`) under a
  supervisor that starts a worker again when one dies, as a process manager (systemd, Kubernetes) does.

Settings are production's except where recovery would take minutes: the reconciler runs every 0.5 s, a lost
message is re-published after 1 s, a render's lease is a few seconds. Celery's visibility timeout stays at its
production value (3 × the job deadline), so a message that only the broker could give back stays lost for hours,
as in production.
"""

from __future__ import annotations

import contextlib
import io
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from shared.db import Database, make_engine, upgrade
from tests.fault_proxy import FaultProxy
from tests.fault_suite.own_redis import OwnRedis
from tests.fault_suite.sizes import Size
from tests.processes import Proc, free_loopback_port, scheduler_argv, spawn, wait_until_http_ready
from tests.services import S3Server, farm_environment
from tests.waiting import wait_until

TENANT = "faults"
TOKEN = "faults-token-0123456789abcdef"
MODEL = "faults"  # a link to the tiny model; jobs name it, so their queue is QUEUE
QUEUE = f"rf.{MODEL}.interactive"
HOLD_MODEL = "faults-hold"  # the receipt-before-claim case's own queue, so that only its held worker receives
HOLD_QUEUE = f"rf.{HOLD_MODEL}.interactive"
READY_TIMEOUT_S = 180.0  # a process's start on two busy cores (torch import, model load)
SIZE = 64


def png_bytes(colour: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def job_fields(prompt: str = "a blue square", **more: Any) -> dict[str, Any]:
    """A small stand-in job's fields (4 steps at strength 1: four stand-in steps)."""
    return {
        "prompt": prompt,
        "model": MODEL,
        "steps": 4,
        "denoising_strength": 1.0,
        "width": SIZE,
        "height": SIZE,
        "seed": 11,
        **more,
    }


def new_task_id(label: str) -> str:
    return f"f-{label}-{uuid.uuid4().hex[:10]}"


@dataclass
class WorkerSlot:
    """One supervised worker: the process now in it, and how many it has had."""

    index: int
    proc: Proc | None = None
    hostname: str = ""
    generation: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    queues: str = ""  # comma-separated; empty: the suite's QUEUE


class Farm:
    """The farm under fault. Build with `start()`, end with `close()`."""

    def __init__(self, root: Path, s3: S3Server, size: Size) -> None:
        self.root = root
        self.size = size
        self.s3 = s3
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis = OwnRedis(self.log_dir)
        self.postgres_url = ""  # direct: the suite's own checks
        self.postgres_proxy: FaultProxy | None = None
        self.s3_proxy: FaultProxy | None = None
        self.bucket = ""
        self.env: dict[str, str] = {}
        self.scheduler: Proc | None = None
        self.scheduler_port = free_loopback_port()
        self.slots: list[WorkerSlot] = []
        self.worker_logs: list[Path] = []  # every worker process's log, the killed ones' too
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._engine: Any = None
        self.db: Database | None = None

    # ------------------------------------------------------------------------------------------------------------
    # Start and stop

    def start(self, postgres_url: str) -> None:
        from worker.engine.models import build_tiny_model

        self.postgres_url = postgres_url
        upgrade(postgres_url)
        self._engine = make_engine(postgres_url)
        self.db = Database(self._engine)
        pg_host, pg_port = _host_port(postgres_url)
        self.postgres_proxy = FaultProxy(pg_host, pg_port, name="postgres-proxy")
        s3_host, s3_port = _host_port(self.s3.endpoint_url)
        self.s3_proxy = FaultProxy(s3_host, s3_port, name="s3-proxy")
        proxied_s3 = S3Server(f"http://127.0.0.1:{self.s3_proxy.port}")
        self.bucket = self.s3.new_bucket("rf-faults")
        data_dir, models_dir = self.root / "data", self.root / "models"
        data_dir.mkdir(exist_ok=True)
        models_dir.mkdir(exist_ok=True)
        tiny = build_tiny_model(data_dir / "models" / "tiny")
        for name in (MODEL, HOLD_MODEL):
            (models_dir / name).symlink_to(tiny, target_is_directory=True)
        farm_db_url = _with_port(postgres_url, self.postgres_proxy.port)
        self.env = farm_environment(
            farm_db_url,
            self.redis.url,
            proxied_s3,
            self.bucket,
            f"{TENANT}:{TOKEN}",
            data_dir,
            RENDERFARM_MODELS_DIR=str(models_dir),
            **self.size.farm_settings(),
        )
        self.start_scheduler()
        for index in range(self.size.workers):
            self.slots.append(WorkerSlot(index))
            self._spawn_worker(self.slots[-1])
        self.wait_workers_ready()
        self._supervising.set()
        self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        self._supervisor.start()

    def close(self) -> None:
        self._supervising.clear()
        if self._supervisor is not None:
            self._supervisor.join(5)
        for slot in self.slots:
            if slot.proc is not None:
                slot.proc.stop(timeout_s=10)
        if self.scheduler is not None:
            self.scheduler.stop()
        for proxy in (self.postgres_proxy, self.s3_proxy):
            if proxy is not None:
                proxy.close()
        self.redis.close()
        if self._engine is not None:
            self._engine.dispose()

    # ------------------------------------------------------------------------------------------------------------
    # The scheduler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.scheduler_port}"

    def start_scheduler(self) -> None:
        self.scheduler = spawn("scheduler", scheduler_argv(self.scheduler_port), self.env, self.log_dir)
        proc = self.scheduler
        wait_until_http_ready(f"{self.url}/readyz", proc.alive, READY_TIMEOUT_S, want=200, log=proc.log_tail)

    def restart_scheduler(self, *, graceful: bool = True) -> float:
        """Stop the scheduler (SIGTERM, or SIGKILL when not `graceful`) and start it again on the same port;
        returns the seconds it was away."""
        assert self.scheduler is not None
        began = time.monotonic()
        if graceful:
            self.scheduler.stop()
        else:
            self.scheduler.kill_now()
            self.scheduler.stop(timeout_s=5)  # its group, if anything is left
        self.start_scheduler()
        return time.monotonic() - began

    # ------------------------------------------------------------------------------------------------------------
    # Workers

    def _spawn_worker(self, slot: WorkerSlot) -> None:
        import sys

        slot.generation += 1
        slot.hostname = f"w{slot.index}g{slot.generation}-{uuid.uuid4().hex[:4]}@faults"
        env = {**self.env, "RENDERFARM_STANDIN_STEP_S": str(self.size.step_s), **slot.extra_env}
        queues = slot.queues or QUEUE
        argv = [sys.executable, "-m", "tests.fault_suite.faulty_worker", "--device", "cpu", "--queues", queues]
        argv += ["--hostname", slot.hostname]
        slot.proc = spawn(f"worker{slot.index}", argv, env, self.log_dir)
        self.worker_logs.append(slot.proc.log)

    def _supervise(self) -> None:
        """Start a worker again when its process has died (as systemd or Kubernetes would)."""
        while self._supervising.is_set():
            with self._lock:
                for slot in self.slots:
                    if slot.proc is not None and not slot.proc.alive():
                        self._spawn_worker(slot)
            time.sleep(0.2)

    def ready(self, slot: WorkerSlot) -> bool:
        """The worker consumes its queue (its log says Celery is ready)."""
        return slot.proc is not None and slot.proc.alive() and "ready." in slot.proc.log_text()

    def wait_workers_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        def all_ready() -> bool:
            return all(self.ready(slot) for slot in self.slots)

        wait_until(all_ready, timeout_s, lambda: "every worker to be ready:\n" + self._logs_tail(), max_interval=0.5)

    def kill_worker(self, slot: WorkerSlot) -> None:
        """SIGKILL the worker process (the supervisor starts another)."""
        with self._lock:
            if slot.proc is not None and slot.proc.alive():
                slot.proc.kill_now()

    def terminate_worker(self, slot: WorkerSlot, timeout_s: float = 30.0) -> None:
        """SIGTERM the worker (a graceful shutdown) and wait for it to exit; the supervisor starts another."""
        with self._lock:
            proc = slot.proc
        assert proc is not None
        proc.stop(timeout_s=timeout_s)

    @contextlib.contextmanager
    def extra_worker(self, queues: str, **env: str) -> Iterator[WorkerSlot]:
        """One more worker on `queues` with `env` on top, outside the supervisor (it is not restarted); stopped
        afterwards."""
        slot = WorkerSlot(100 + len(self.worker_logs), extra_env=dict(env), queues=queues)
        self._spawn_worker(slot)
        try:
            yield slot
        finally:
            if slot.proc is not None:
                slot.proc.stop(timeout_s=10)

    def running_jobs(self) -> dict[str, tuple[uuid.UUID, int]]:
        """Worker hostname → (job id, attempt) of the jobs running now."""
        assert self.db is not None
        import sqlalchemy as sa

        from shared.db.tables import Job

        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(Job.worker, Job.id, Job.attempt).where(Job.state == "running")).all()
        return {str(worker): (job_id, attempt) for worker, job_id, attempt in rows if worker}

    # ------------------------------------------------------------------------------------------------------------
    # Clients

    def client(self, **options: Any) -> Any:
        """An SDK client of the farm's tenant."""
        from renderfarm import Client

        return Client(self.url, token=TOKEN, **options)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30.0)

    def s3_keys(self, prefix: str = "") -> list[str]:
        """Every object key under the farm's prefix (`farm/`), read directly from S3 (not through the proxy)."""
        client = self.s3.client()
        keys: list[str] = []
        try:
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"farm/{prefix}"):
                keys.extend(item["Key"].removeprefix("farm/") for item in page.get("Contents", []))
        finally:
            client.close()
        return sorted(keys)

    def worker_log_texts(self) -> list[str]:
        return [path.read_text(errors="replace") for path in self.worker_logs if path.exists()]

    def _logs_tail(self) -> str:
        return "\n".join(f"--- {slot.hostname}\n{slot.proc.log_tail(1500)}" for slot in self.slots if slot.proc)


class Killer:
    """SIGKILLs workers at random moments while it runs, in a thread, and counts its kills.

    A kill picks a random live, ready worker; `between_receipt_and_claim` is counted apart (the hold fault). A
    worker whose job has used all but one of its attempts is spared, so that kills (not the job) never exhaust it:
    the jobs of a kill case must all succeed.
    """

    def __init__(self, farm: Farm, *, kills: int, interval_s: tuple[float, float], seed: int = 15) -> None:
        self.farm = farm
        self.target = kills
        self.interval_s = interval_s
        self.random = random.Random(seed)
        self.kills = 0
        self.mid_render = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)

    def start(self) -> Killer:
        self._thread.start()
        return self

    def _run(self) -> None:
        max_attempts = self.farm.size.max_attempts
        while self.kills < self.target and not self.done.is_set():
            time.sleep(self.random.uniform(*self.interval_s))  # the moment is random by design
            candidates = [slot for slot in self.farm.slots if self.farm.ready(slot)]
            running = self.farm.running_jobs()
            spare = [s for s in candidates if running.get(s.hostname, (None, 0))[1] < max_attempts - 1]
            if not spare:
                continue
            slot = self.random.choice(spare)
            if slot.hostname in running:
                self.mid_render += 1
            self.farm.kill_worker(slot)
            self.kills += 1
        self.done.set()

    def stop(self) -> None:
        self.done.set()
        self._thread.join(10)

    def wait(self, timeout_s: float) -> None:
        wait_until(self.done.is_set, timeout_s, lambda: f"{self.target} kills (made {self.kills})", max_interval=0.5)


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    assert parsed.hostname is not None, url
    assert parsed.port is not None, url
    return parsed.hostname, parsed.port


def _with_port(url: str, port: int) -> str:
    from urllib.parse import urlparse, urlunparse

    parsed = urlparse(url)
    netloc = parsed.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunparse(parsed._replace(netloc=netloc))


def timed(action: Callable[[], None]) -> float:
    began = time.monotonic()
    action()
    return time.monotonic() - began
