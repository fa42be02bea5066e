"""A real worker process started by `start_workers` (CPU, Redis broker) renders a job and stops on SIGTERM."""

from __future__ import annotations

import signal
import uuid

import pytest

from shared.config import Settings
from shared.db import Database
from shared.queueing import make_celery_app, publish_render
from shared.states import JobState
from tests.worker.conftest import Submitter
from tests.worker.test_celery_task import wait_for_state
from worker.service import start_workers
from worker.standin import STANDIN_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_cpu_worker_process_renders_a_job_and_shuts_down_on_sigterm(
    settings: Settings, redis_url: str, db: Database, submit: Submitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = settings.model_copy(update={"redis_url": redis_url})
    queue = f"rf.test-{uuid.uuid4().hex[:8]}.interactive"  # this test's own queue: no other consumer sees it
    monkeypatch.setenv(STANDIN_ENV, "0.001")  # the whole farm path, without spending CPU on the render
    publisher = make_celery_app(cluster)
    processes = start_workers(cluster, gpus="cpu", queues=[queue])
    try:
        assert len(processes) == 1
        row = submit()
        publish_render(publisher, row.id, row.attempt, queue)

        job = wait_for_state(db, row, {JobState.SUCCEEDED, JobState.FAILED})

        assert job.state is JobState.SUCCEEDED
        assert job.worker is not None
        assert job.worker.startswith("cpu@")
        processes[0].send_signal(signal.SIGTERM)
        assert processes[0].wait(timeout=60) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        publisher.close()


def test_start_workers_refuses_a_gpu_that_is_not_there(settings: Settings) -> None:
    with pytest.raises(ValueError, match="not present"):
        start_workers(settings, gpus="7")


def test_worker_processes_get_no_api_token(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 15, finding 8: API tokens travelled in plain text into every worker's environment, from the settings
    # and from the environment the command inherited. A worker renders; it never authenticates anyone.
    import subprocess

    import worker.service as service

    token = "alice:api-token-for-the-scheduler-only-01"
    monkeypatch.setenv("RENDERFARM_API_TOKENS", token)
    monkeypatch.setenv("RENDERFARM_METRICS_TOKEN", "metrics-token-scheduler-only-01")
    spawned: list[dict[str, str]] = []

    class FakePopen:
        def __init__(self, argv: list[str], env: dict[str, str]) -> None:
            spawned.append(env)

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    service.start_workers(settings.model_copy(update={"api_tokens": token}), gpus="cpu")
    (env,) = spawned
    assert not {"RENDERFARM_API_TOKENS", "RENDERFARM_API_TOKENS_FILE", "RENDERFARM_METRICS_TOKEN"} & set(env)
    assert not any("api-token-for-the-scheduler-only" in value for value in env.values())
    assert env["RENDERFARM_DATABASE_URL"] == settings.resolved_database_url  # what a worker needs still travels
