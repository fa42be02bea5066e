"""Cancel by task id, queued and running, through the scheduler process; the worker stops at its next step."""

from __future__ import annotations

import pytest

from scheduler.snapshots import public_worker_name
from tests.e2e.conftest import Api, FarmEnv, Worker, new_task_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_cancel_a_queued_job(alice: Api, farm_env: FarmEnv) -> None:
    task_id = new_task_id("cancel-queued")
    alice.submit(task_id, model="e2e-idle")

    answer = alice.client.post(f"/v1/jobs/{task_id}/cancel")

    assert answer.status_code == 200
    assert answer.json()["state"] == "canceled"
    snapshot = alice.get(task_id)
    assert snapshot["state"] == "canceled"
    assert snapshot["artifacts"] == []
    assert farm_env.s3_keys(f"alice/{task_id}/") == []


def test_cancel_a_running_job_stops_it_at_the_next_step(
    alice: Api, farm_env: FarmEnv, standin_workers: list[Worker]
) -> None:
    task_id = new_task_id("cancel-running")
    alice.submit(task_id, model="e2e-standin", steps=8, denoising_strength=1.0)  # 8 steps of 0.25 s
    running = alice.wait_for(task_id, lambda s: s["state"] == "running" and s["step"] >= 1, what="running")
    assert running["worker"] in {public_worker_name(worker.hostname) for worker in standin_workers}

    answer = alice.client.post(f"/v1/jobs/{task_id}/cancel")
    assert answer.status_code == 200
    assert answer.json()["state"] in ("running", "canceled")  # running until the worker's next step

    done = alice.wait_state(task_id, "canceled", timeout_s=30.0)
    assert done["step"] < 8  # it stopped early, not at the end of the render
    assert done["artifacts"] == []
    assert done["finished_at"] is not None
    assert farm_env.s3_keys(f"alice/{task_id}/") == []
    # Cancel of a finished job changes nothing and answers 200.
    again = alice.client.post(f"/v1/jobs/{task_id}/cancel")
    assert again.status_code == 200
    assert again.json()["state"] == "canceled"
