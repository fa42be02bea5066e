"""A Redis server of the fault suite's own (a `redis-server` process on a free port), so a case can flush it, stop
it and start it again on the same port without touching the Redis that other tests share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis

from tests.processes import Proc, free_loopback_port, spawn
from tests.waiting import wait_until

START_TIMEOUT_S = 30.0


class OwnRedis:
    """`redis-server` on 127.0.0.1:`port`, without persistence: a restart comes back empty, as a cache node that
    lost its memory does (the harder case for the farm: every message and marker is gone)."""

    def __init__(self, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("the fault suite needs the redis-server binary (scripts/ensure-services.sh installs it)")
        self.binary = binary
        self.log_dir = log_dir
        self.port = free_loopback_port()
        self.proc: Proc | None = None
        self.restarts = 0
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = spawn("redis", argv, {"PATH": "/usr/bin:/bin"}, self.log_dir)

        def answers() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise AssertionError(f"redis-server exited:\n{self.proc.log_tail()}")
            try:
                with self.client() as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, START_TIMEOUT_S, "the suite's redis-server to answer")

    def stop(self) -> None:
        """Kill the server (no save, no goodbye): clients see their connections die."""
        if self.proc is not None and self.proc.alive():
            self.proc.kill_now()

    def flush_and_restart(self) -> None:
        """FLUSHALL, kill, start again on the same port: every message, marker and live status is gone."""
        with self.client() as client:
            client.flushall()
        self.stop()
        self.start()
        self.restarts += 1

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout_s=5)
