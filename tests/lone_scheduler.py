"""One scheduler process on services of its own, which a test may stop and start again on the same port.

No worker consumes its queues: jobs stay queued until the test moves them on over the API. For tests about the
API process itself (its shutdown, what one request does to the others), with real processes and services.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from shared.db import upgrade
from tests import processes, services
from tests.processes import Proc
from tests.services import S3Server

READY_TIMEOUT_S = 120.0  # seconds a scheduler may take to answer /readyz on two busy cores


@dataclass
class LoneScheduler:
    """A scheduler process that the test stops and starts again on the same port."""

    url: str
    port: int
    env: dict[str, str]
    log_dir: Path
    proc: Proc | None = None
    logs_of: list[Proc] = field(default_factory=list)

    def start(self) -> None:
        self.proc = processes.spawn("scheduler", processes.scheduler_argv(self.port), self.env, self.log_dir)
        self.logs_of.append(self.proc)
        processes.wait_until_http_ready(
            f"{self.url}/readyz", self.proc.alive, READY_TIMEOUT_S, want=200, log=self.proc.log_tail
        )

    def terminate_and_time(self) -> float:
        """SIGTERM the scheduler (a graceful shutdown) and return the seconds until its process exited."""
        assert self.proc is not None
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.process.wait(timeout=60)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def logs(self) -> str:
        """The tails of the logs of every process this scheduler ran as."""
        return "\n".join(f"--- {proc.name}\n{proc.log_tail()}" for proc in self.logs_of)


@contextmanager
def running_lone_scheduler(
    s3_server: S3Server, tmp_path: Path, api_tokens: str, **more_env: str
) -> Iterator[LoneScheduler]:
    """A started scheduler on a fresh PostgreSQL database, an isolated Redis database and a new bucket; stopped
    (its process group) at the end. `more_env`: further RENDERFARM_* variables."""
    data_dir, log_dir = tmp_path / "data", tmp_path / "logs"
    data_dir.mkdir()
    log_dir.mkdir()
    with services.fresh_postgres_database() as database_url, services.isolated_redis_database() as redis_url:
        upgrade(database_url)
        bucket = s3_server.new_bucket()
        port = processes.free_loopback_port()
        url = f"http://127.0.0.1:{port}"
        env = services.farm_environment(database_url, redis_url, s3_server, bucket, api_tokens, data_dir, **more_env)
        env["RENDERFARM_PUBLIC_URL"] = url
        scheduler = LoneScheduler(url, port, env, log_dir)
        try:
            scheduler.start()
            yield scheduler
        finally:
            scheduler.stop()
