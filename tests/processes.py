"""Farm processes for the tests and the benchmarks: ports, spawning, readiness, stopping.

Every process is started in its own session, so it leads a process group, and it is stopped by signalling that
group: the children a process starts (a Celery worker's pool) end with it, and nothing is ever ended by name.
Readiness is polled (`tests.waiting.wait_until`), never slept for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.waiting import wait_until

STOP_TIMEOUT_S = 15.0  # seconds a process gets to exit after SIGTERM before its group is killed


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_http_ready(
    url: str,
    alive: Callable[[], bool],
    timeout_s: float,
    *,
    want: int | None = None,
    log: Callable[[], str] = lambda: "",
) -> None:
    """Poll `url` until it answers (with status `want`, if given); fail at once, with `log()`, if `alive()` turns
    false, and after `timeout_s` seconds."""

    def answers() -> bool:
        if not alive():
            raise AssertionError(f"the server of {url} exited before it was ready:\n{log()}")
        try:
            response = httpx.get(url, timeout=2.0)
        except httpx.TransportError:
            return False
        return want is None or response.status_code == want

    wait_until(answers, timeout_s, lambda: f"{url} to answer:\n{log()}", max_interval=0.5)


def stop_process_group(process: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process's group (it leads one), wait, then SIGKILL what is left of the group. Idempotent."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout_s)
    # Children (the Celery worker's pool) may outlive the leader: end the whole group.
    _signal_group(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=timeout_s)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(pid, sig)


@dataclass
class Proc:
    """A process started by `spawn`, in its own process group; its output goes to `log`."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def kill_now(self) -> None:
        """SIGKILL the process itself (not its group): a crash, as a test wants it."""
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        stop_process_group(self.process, timeout_s)


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path, *, cwd: Path | None = None) -> Proc:
    """Start `argv` in a session of its own, output to `log_dir/<name>-<random>.log`."""
    log = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd or Path.cwd(),
        )
    return Proc(name, process, log)


def scheduler_argv(port: int) -> list[str]:
    """The command line of a farm's scheduler process (API, dispatcher, reconciler) on a loopback port."""
    return [sys.executable, "-m", "renderfarm.cli", "scheduler", "--host", "127.0.0.1", "--port", str(port)]


def worker_argv(queues: Sequence[str] | None, hostname: str) -> list[str]:
    """The command line of a farm's CPU worker process (`worker.service`) consuming `queues` as `hostname` (None:
    the queues of every model it can serve, followed as models appear)."""
    command = [sys.executable, "-m", "worker.service", "--device", "cpu"]
    pinned = ["--queues", ",".join(queues)] if queues is not None else []
    return [*command, *pinned, "--hostname", hostname]


def wait_celery_workers_ready(control: Any, workers: Mapping[str, Proc], timeout_s: float) -> None:
    """Celery's own readiness: each worker (by hostname) answers a broadcast ping only once it consumes its queues.
    `control` is a Celery app on the workers' broker; a worker that exits first fails the wait with its log."""
    waiting = dict(workers)

    def all_answered() -> bool:
        for hostname, proc in waiting.items():
            if not proc.alive():
                raise AssertionError(f"worker {hostname} exited before it was ready:\n{proc.log_tail()}")
        for reply in control.control.ping(destination=list(waiting), timeout=0.5):
            for hostname in reply:
                waiting.pop(hostname, None)
        return not waiting

    wait_until(all_answered, timeout_s, lambda: f"workers {sorted(waiting)} to answer a ping")


@dataclass
class ThreadServer:
    """An ASGI app served by uvicorn on a loopback port, in a thread of this process."""

    base_url: str
    server: Any  # uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def serve_in_thread(app: Any, port: int, *, name: str, timeout_s: float = 10.0, **config: Any) -> ThreadServer:
    """Serve `app` on 127.0.0.1:`port` (lifespan on) and return once uvicorn has started."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **config)
    )
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise AssertionError("uvicorn exited before it started")
        return bool(server.started)

    wait_until(started, timeout_s, "uvicorn to start")
    return ThreadServer(f"http://127.0.0.1:{port}", server, thread)
