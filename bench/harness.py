"""What every benchmark stands on: real services, farm processes, a light HTTP load generator and statistics.

- `postgres_database()`: a fresh database `renderfarm_bench_<random>` (migrated), dropped afterwards.
- `redis_database()`: a Redis database number of our own, claimed with the same markers the test suite uses
  (`renderfarm-test-db:<n>` in db 0), so a benchmark and a parallel test run never share one; flushed before and after.
- `s3_server()`: moto's S3 server on a free loopback port, with a fresh bucket.
- `Farm`: the three together plus a scheduler process (`python -m bench.harness scheduler`, which serves
  `scheduler.app.create_app` with uvicorn exactly as `renderfarm scheduler` does) and Celery worker processes
  (`python -m worker.service`, the production entry point), each in its own process group, logs in a temp folder.
- `HttpLoad`: keep-alive HTTP/1.1 over raw asyncio streams. A Python HTTP client (httpx) costs more CPU per request
  than the server does, and on a two-core machine the client would then measure itself; this one costs a few
  microseconds per request, so the figures are the server's.

Every process the harness starts is ended by it (SIGTERM to its group, then SIGKILL), never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.processes import Proc, free_loopback_port, spawn, wait_celery_workers_ready, wait_until_http_ready

POSTGRES_ADMIN_URL = os.environ.get(
    "RENDERFARM_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("RENDERFARM_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DBS = range(15, 0, -1)  # claimed from the top: the test suite claims from the bottom
READY_TIMEOUT_S = 180.0  # a worker imports torch and loads a model; 32 of them at once on two cores take a while
STOP_TIMEOUT_S = 20.0
TENANT = "bench"
TOKEN = "bench-token-0123456789abcdef"  # noqa: S105 - a bench-only token for a bench-only database
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AUTH_TOKENS = f"{TENANT}:{TOKEN}"  # RENDERFARM_API_TOKENS of the benchmark's farm
REPO_ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


# ----------------------------------------------------------------------------------------------------------------
# Services


# The services and processes are the test suite's (tests/services.py, tests/processes.py): one harness for both,
# with the benchmarks' own database names, Redis numbers (claimed from the top) and buckets. tests.services is
# imported where it is used, so that the scheduler process this module serves does not import pytest.


@contextlib.contextmanager
def postgres_database(migrate: bool = True) -> Iterator[str]:
    """Create `renderfarm_bench_<random>`, migrate it, yield its URL, drop it (WITH FORCE) afterwards."""
    from shared.db import upgrade
    from tests.services import fresh_postgres_database

    with fresh_postgres_database(POSTGRES_ADMIN_URL, prefix="renderfarm_bench") as url:
        if migrate:
            upgrade(url)
        yield url


@contextlib.contextmanager
def redis_database() -> Iterator[str]:
    """Claim a free Redis database number (1-15), flush it, yield its URL; flush and release it afterwards."""
    from tests.services import isolated_redis_database

    with isolated_redis_database(REDIS_BASE_URL, REDIS_DBS, owner="renderfarm-bench-run") as url:
        yield url


@dataclass
class S3:
    endpoint_url: str
    bucket: str


@contextlib.contextmanager
def s3_server() -> Iterator[S3]:
    """moto's S3 server on a free loopback port with one fresh bucket."""
    from tests.services import running_s3_server

    with running_s3_server(start_timeout_s=60) as server:
        yield S3(server.endpoint_url, server.new_bucket(prefix="rf-bench"))


def rss_mib(pid: int) -> tuple[float, float]:
    """(RSS, private dirty) of a process in MiB, from /proc (0, 0 where unavailable)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0, 0.0
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            values[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return values.get("Rss", 0.0), values.get("Private_Dirty", 0.0)


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads); gone ones count 0."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def postgres_backends(database_url: str) -> list[int]:
    """The PIDs of the PostgreSQL backends connected to this database now (local server only)."""
    import sqlalchemy as sa

    name = database_url.rsplit("/", 1)[1]
    admin = sa.create_engine(POSTGRES_ADMIN_URL)
    try:
        with admin.connect() as conn:
            query = sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :name")
            return [int(pid) for (pid,) in conn.execute(query, {"name": name})]
    finally:
        admin.dispose()


class CpuMeter:
    """CPU seconds spent by the scheduler process and by its database's PostgreSQL backends over a stretch of time:
    what a request costs, whatever else the (shared) machine is doing at the time."""

    def __init__(self, scheduler_pid: int, database_url: str) -> None:
        self.scheduler_pid = scheduler_pid
        self.database_url = database_url

    def __enter__(self) -> CpuMeter:
        self._backends = postgres_backends(self.database_url)
        self._server0 = cpu_seconds([self.scheduler_pid])
        self._db0 = cpu_seconds(self._backends)
        return self

    def __exit__(self, *_: object) -> None:
        self.server_s = cpu_seconds([self.scheduler_pid]) - self._server0
        # Backends that existed at the start (the pool keeps them), measured again at the end.
        self.database_s = cpu_seconds(self._backends) - self._db0


# ----------------------------------------------------------------------------------------------------------------
# The farm


@dataclass
class Farm:
    """Postgres + Redis + S3 + one scheduler process + worker processes, all of its own.

    `env` is the RENDERFARM_* environment every farm process shares; `settings` the same as a Settings object for
    the benchmark's own clients (database, Celery, Redis).
    """

    env: dict[str, str]
    settings: Any
    database_url: str
    redis_url: str
    s3: S3
    log_dir: Path
    url: str = ""
    scheduler: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    _control: Any = None
    _extra: list[Proc] = field(default_factory=list)
    _scheduler_urls: dict[str, str] = field(default_factory=dict)

    # -- scheduler ------------------------------------------------------------------------------------------------

    def start_scheduler(self, *, background: bool = True) -> str:
        """Start the farm's scheduler process; returns its base URL once `/readyz` answers 200."""
        self.scheduler = self._scheduler_process("scheduler", self.env, background)
        self.url = self._scheduler_urls[self.scheduler.name]
        return self.url

    def start_extra_scheduler(self, env: dict[str, str], *, background: bool = True) -> str:
        """Another scheduler process with some settings changed (e.g. another database); returns its URL."""
        proc = self._scheduler_process(f"scheduler-{len(self._extra)}", {**self.env, **env}, background)
        self._extra.append(proc)
        return self._scheduler_urls[proc.name]

    def _scheduler_process(self, name: str, env: dict[str, str], background: bool) -> Proc:
        port = free_loopback_port()
        argv = [sys.executable, "-m", "bench.harness", "scheduler", "--port", str(port)]
        if not background:
            argv.append("--no-background")
        proc = spawn(name, argv, env, self.log_dir, cwd=REPO_ROOT)
        url = f"http://127.0.0.1:{port}"
        self._scheduler_urls[name] = url
        wait_until_http_ready(f"{url}/readyz", proc.alive, READY_TIMEOUT_S, want=200, log=lambda: proc.log_tail(3000))
        return proc

    # -- workers --------------------------------------------------------------------------------------------------

    def start_workers(
        self,
        count: int,
        queues: Sequence[str],
        *,
        standin_step_s: float | None = None,
        wait: bool = True,
        device: str = "cpu",
    ) -> list[Proc]:
        """Start `count` more `python -m worker.service --device DEVICE` processes on `queues`; wait until each
        answers a Celery ping (it consumes), unless `wait` is false."""
        env = dict(self.env)
        if standin_step_s is not None:
            env["RENDERFARM_STANDIN_STEP_S"] = repr(standin_step_s)
        started = []
        for _ in range(count):
            name = f"w{len(self.workers):02d}-{uuid.uuid4().hex[:4]}@bench"
            argv = [sys.executable, "-m", "worker.service", "--device", device, "--queues", ",".join(queues)]
            argv += ["--hostname", name]
            proc = spawn(name.split("@")[0], argv, env, self.log_dir, cwd=REPO_ROOT)
            proc.name = name
            self.workers.append(proc)
            started.append(proc)
        if wait:
            self.wait_workers(started)
        return started

    def wait_workers(self, procs: Sequence[Proc], timeout_s: float = READY_TIMEOUT_S) -> None:
        from shared.queueing import make_celery_app

        if self._control is None:
            self._control = make_celery_app(self.settings, name="bench-control")
        wait_celery_workers_ready(self._control, {proc.name: proc for proc in procs}, timeout_s)

    def stop_workers(self) -> None:
        for proc in reversed(self.workers):
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.process.pid, signal.SIGTERM)
        for proc in reversed(self.workers):
            proc.stop(STOP_TIMEOUT_S)
        self.workers.clear()

    def close(self) -> None:
        self.stop_workers()
        for proc in [*self._extra, *([self.scheduler] if self.scheduler else [])]:
            proc.stop(STOP_TIMEOUT_S)
        if self._control is not None:
            self._control.close()


@contextlib.contextmanager
def farm(extra_env: dict[str, str] | None = None, *, keep_logs: bool = False) -> Iterator[Farm]:
    """A whole farm of its own (no scheduler or workers started yet: call `start_scheduler` / `start_workers`)."""
    from shared.config import Settings
    from tests.services import S3Server, farm_environment

    log_dir = Path(tempfile.mkdtemp(prefix="renderfarm-bench-"))
    data_dir = log_dir / "data"
    data_dir.mkdir()
    with postgres_database() as database_url, redis_database() as redis_url, s3_server() as s3:
        env = farm_environment(database_url, redis_url, S3Server(s3.endpoint_url), s3.bucket, AUTH_TOKENS, data_dir)
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
        env["RENDERFARM_METRICS_PORT"] = "0"  # many workers on one host must not compete for one port
        env.update(extra_env or {})
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            os.environ.setdefault(key, env[key])  # the benchmark's own boto3 clients
        values: dict[str, Any] = {
            k[len("RENDERFARM_") :].lower(): v for k, v in env.items() if k.startswith("RENDERFARM_")
        }
        settings = Settings(_env_file=None, **values)
        the_farm = Farm(env, settings, database_url, redis_url, s3, log_dir)
        try:
            yield the_farm
        finally:
            the_farm.close()
            if not keep_logs:
                import shutil

                shutil.rmtree(log_dir, ignore_errors=True)


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A noisy gradient PNG (the kind of picture a VAE sees; solid colours compress unrealistically well)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 1 - (x + y) / (width + height)], axis=-1) * 200 + 20
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def upload_asset(base_url: str, data: bytes) -> str:
    import httpx

    response = httpx.post(
        f"{base_url}/v1/assets", content=data, headers={**AUTH, "Content-Type": "image/png"}, timeout=30
    )
    response.raise_for_status()
    return str(response.json()["asset_id"])


# ----------------------------------------------------------------------------------------------------------------
# Load generation


@dataclass
class Request:
    method: str
    path: str
    body: bytes = b""


def gets(paths: Sequence[str]) -> Callable[[int], Request]:
    """Request maker: the i-th request GETs `paths[i % len(paths)]`."""
    return lambda i: Request("GET", paths[i % len(paths)])


def same(method: str, path: str, body: bytes = b"") -> Callable[[int], Request]:
    """Request maker: every request is the same."""
    request = Request(method, path, body)
    return lambda _i: request


@dataclass
class LoadResult:
    """What `HttpLoad.run` measured: per-request latencies (s), status counts and the wall time."""

    latencies: list[float]
    statuses: dict[int, int]
    wall_s: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s > 0 else math.nan


class HttpLoad:
    """`concurrency` keep-alive connections that each send requests one after another (closed-loop clients)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        host_port = base_url.removeprefix("http://").rstrip("/")
        host, _, port = host_port.partition(":")
        self.host, self.port = host, int(port or 80)
        self.headers = {**AUTH, **(headers or {})}

    def _encode(self, request: Request) -> bytes:
        lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if request.body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(request.body)}"]
        elif request.method in ("POST", "PUT"):
            lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + request.body

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> tuple[int, bytes]:
        writer.write(data)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            lowered = name.strip().lower()
            if lowered == "content-length":
                length = int(value.strip())
            elif lowered == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
            return status, body
        return status, await reader.readexactly(length)

    def run(
        self,
        make_request: Callable[[int], Request],
        count: int,
        concurrency: int,
        *,
        check: Callable[[int, bytes], None] | None = None,
    ) -> LoadResult:
        """Send `count` requests (`make_request(i)` builds the i-th) over `concurrency` connections."""
        return asyncio.run(self._run(make_request, count, concurrency, check))

    async def _run(
        self,
        make_request: Callable[[int], Request],
        count: int,
        concurrency: int,
        check: Callable[[int, bytes], None] | None,
    ) -> LoadResult:
        encoded = [self._encode(make_request(i)) for i in range(count)]  # built before the clock starts
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        next_index = 0

        async def client() -> None:
            nonlocal next_index
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                while next_index < count:
                    index = next_index
                    next_index += 1
                    start = time.perf_counter()
                    status, body = await self._one(reader, writer, encoded[index])
                    latencies.append(time.perf_counter() - start)
                    statuses[status] = statuses.get(status, 0) + 1
                    if check is not None:
                        check(status, body)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(min(concurrency, count))))
        return LoadResult(latencies, statuses, time.perf_counter() - start)


def job_body(image_ref: str, size: int = 64, steps: int = 10, **fields: Any) -> dict[str, Any]:
    return {
        "init_images": [image_ref],
        "prompt": "a red cube on a table",
        "steps": steps,
        "width": size,
        "height": size,
        "seed": 1234,
        **fields,
    }


# ----------------------------------------------------------------------------------------------------------------
# `python -m bench.harness scheduler --port N`: the API as `renderfarm scheduler` serves it


def _serve_scheduler(port: int, background: bool) -> None:
    import logging

    import uvicorn

    from scheduler.app import create_app
    from shared.config import Settings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings().check()
    app = create_app(settings, start_background=background)
    # Access log off: a benchmark's thousands of lines would measure the terminal. Everything else as the CLI.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=10
    )
    uvicorn.Server(config).run()


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.harness")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("scheduler")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--no-background", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "scheduler":
        _serve_scheduler(args.port, not args.no_background)


if __name__ == "__main__":
    main()


__all__ = [
    "AUTH",
    "TENANT",
    "Farm",
    "HttpLoad",
    "LoadResult",
    "Request",
    "farm",
    "job_body",
    "median",
    "percentile",
    "png_bytes",
    "postgres_database",
    "redis_database",
    "rss_mib",
    "s3_server",
    "upload_asset",
]
