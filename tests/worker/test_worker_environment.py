"""No API token in a worker process's environment, read where anything running as the worker's user can read it:
/proc/<pid>/environ (issue 15, finding 8: "API tokens travel in plain text into every worker's environment").

Both ways a worker starts: spawned by `renderfarm worker` (`start_workers`), and started directly, as deploy/ does
(`python -m worker.service`), by a supervisor whose environment holds the tokens by mistake.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shared.config import API_SECRET_VARIABLES, Settings
from shared.secret_box import new_key
from tests.waiting import wait_until
from worker.service import start_workers, worker_command, worker_environment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_TOKEN = f"alice:scheduler-only-token-{uuid.uuid4().hex}"
METRICS_TOKEN = f"metrics-only-token-{uuid.uuid4().hex}"
WEBHOOK_SECRETS_KEY = new_key()  # seals the tenants' webhook secrets: the scheduler's alone
TOKENS_FILE = "/run/secrets/renderfarm-api-tokens"


def process_environment(pid: int) -> dict[str, str]:
    """The kernel's copy of the process's environment: what it was exec'd with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


def after_exec(pid: int) -> dict[str, str]:
    """The environment of `pid` once its exec is complete. Popen may return a moment before the kernel has set
    it up (a vfork'ed child lets its parent go on during the exec), when /proc still shows the parent's."""

    def exec_done() -> dict[str, str] | None:
        environ = process_environment(pid)
        return environ if "RENDERFARM_DATABASE_URL" in environ else None

    return wait_until(exec_done, 30, f"process {pid} to run with the farm's environment")


def holds_a_secret(environ: dict[str, str]) -> bool:
    text = "\0".join(f"{name}={value}" for name, value in environ.items())
    return any(name in environ for name in API_SECRET_VARIABLES) or any(
        secret in text for secret in (API_TOKEN, METRICS_TOKEN, TOKENS_FILE, WEBHOOK_SECRETS_KEY)
    )


@pytest.fixture
def secrets_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENDERFARM_API_TOKENS", API_TOKEN)
    monkeypatch.setenv("RENDERFARM_API_TOKENS_FILE", TOKENS_FILE)
    monkeypatch.setenv("RENDERFARM_METRICS_TOKEN", METRICS_TOKEN)
    monkeypatch.setenv("RENDERFARM_WEBHOOK_SECRETS_KEY", WEBHOOK_SECRETS_KEY)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


@pytest.mark.usefixtures("secrets_in_environment")
def test_a_worker_spawned_by_the_farm_never_receives_a_token(settings: Settings, redis_url: str) -> None:
    cluster = settings.model_copy(update={"redis_url": redis_url, "api_tokens": API_TOKEN})
    assert holds_a_secret(process_environment(os.getpid()) | dict(os.environ))  # the spawner has them
    queue = f"rf.test-{uuid.uuid4().hex[:8]}.interactive"
    processes = start_workers(cluster, gpus="cpu", queues=[queue])
    try:
        environ = after_exec(processes[0].pid)
        assert environ["RENDERFARM_DATABASE_URL"] == cluster.resolved_database_url  # the settings did travel
        assert not holds_a_secret(environ)
    finally:
        for process in processes:
            stop(process)


@pytest.mark.usefixtures("secrets_in_environment")
def test_a_worker_started_with_tokens_in_its_environment_starts_again_without_them(
    settings: Settings, redis_url: str
) -> None:
    cluster = settings.model_copy(update={"redis_url": redis_url})
    environ = worker_environment(cluster, os.environ)
    environ |= {name: os.environ[name] for name in API_SECRET_VARIABLES}  # a supervisor's shared environment file
    queue = f"rf.test-{uuid.uuid4().hex[:8]}.interactive"
    argv = worker_command([queue], "cpu", f"cpu-{uuid.uuid4().hex[:6]}@test")
    assert argv[:3] == [sys.executable, "-m", "worker.service"]
    process = subprocess.Popen(argv, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert holds_a_secret(after_exec(process.pid))  # as started (the exec takes a second or two to repeat)

        def restarted_clean() -> dict[str, str] | None:
            assert process.poll() is None, "the worker exited"
            current = process_environment(process.pid)
            return None if holds_a_secret(current) else current

        # The same process (pid), exec'd again by itself before it does anything else.
        current = wait_until(restarted_clean, 60, "the worker to start again without the API's secrets")
        assert current["RENDERFARM_DATABASE_URL"] == cluster.resolved_database_url
    finally:
        stop(process)
