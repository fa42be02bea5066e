"""Delivery under failure: many jobs on two workers, a worker killed mid-render, Redis losing every message."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from scheduler.dispatch import dispatched_marker
from scheduler.snapshots import public_worker_name
from shared.db import ArtifactRecord, Database, make_engine
from shared.errors import LeaseLost
from tests.e2e.conftest import Api, FarmEnv, Worker, WorkerPool, new_task_id, queue_of, unique_hostname
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def db(farm_env: FarmEnv) -> Iterator[Database]:
    engine = make_engine(farm_env.postgres_url)
    yield Database(engine)
    engine.dispose()


@pytest.fixture
def redis_client(farm_env: FarmEnv) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(farm_env.redis_url)
    yield client
    client.close()


def test_forty_jobs_on_two_workers_each_run_exactly_once(
    alice: Api, farm_env: FarmEnv, db: Database, standin_workers: list[Worker]
) -> None:
    task_ids = [new_task_id(f"many{i}") for i in range(40)]
    for task_id in task_ids:
        alice.submit(task_id, model="e2e-standin", steps=1)

    done = [alice.wait_state(task_id, "succeeded") for task_id in task_ids]

    assert {snapshot["attempt"] for snapshot in done} == {1}
    assert {snapshot["worker"] for snapshot in done} == {public_worker_name(w.hostname) for w in standin_workers}
    for task_id, snapshot in zip(task_ids, done, strict=True):
        assert [a["kind"] for a in snapshot["artifacts"]] == ["result"]
        assert farm_env.s3_keys(f"alice/{task_id}/") == [f"farm/alice/{task_id}/1/result-0.png"]
    # The workers' own record: every job rendered once, by one worker (a duplicate delivery would be "skipped").
    # Their log lines name a job by its task id.
    runs = [
        match.group(1)
        for worker in standin_workers
        for match in re.finditer(r"job (\S+) attempt \d+: succeeded", worker.proc.log_tail(10**7))
    ]
    assert sorted(run for run in runs if run in task_ids) == sorted(task_ids)


def test_a_worker_killed_mid_render_is_replaced_and_cannot_overwrite_the_result(
    alice: Api, farm_env: FarmEnv, db: Database, workers: WorkerPool
) -> None:
    queue = queue_of("e2e-kill")
    # A short lease for the doomed worker: how long the farm waits before it takes a silent worker's job back.
    first = workers.start(unique_hostname("doomed"), [queue], standin_step_s=0.5, lease_base_s=5)
    task_id = new_task_id("sigkill")
    alice.submit(task_id, model="e2e-kill", steps=8, denoising_strength=1.0)  # 8 steps of 0.5 s on the first
    running = alice.wait_for(task_id, lambda s: s["state"] == "running" and s["step"] >= 1, what="running")
    assert (running["worker"], running["attempt"]) == (public_worker_name(first.hostname), 1)

    first.proc.kill_now()
    second = workers.start(unique_hostname("rescuer"), [queue], standin_step_s=0.05)
    # The lease (5 s) expires, the reconciler re-queues the job, the dispatcher publishes it again.
    done = alice.wait_state(task_id, "succeeded", timeout_s=60.0)

    assert done["attempt"] == 2
    assert done["worker"] == public_worker_name(second.hostname)
    assert [a["kind"] for a in done["artifacts"]] == ["result"]
    assert farm_env.s3_keys(f"alice/{task_id}/") == [f"farm/alice/{task_id}/2/result-0.png"]
    # The first worker comes back late and tries to commit attempt 1: the fence refuses it, nothing changes.
    row = db.jobs.get("alice", task_id)
    before = db.jobs.artifacts_of(row.id)
    late = ArtifactRecord(
        kind="result",
        index=0,
        storage_key=f"alice/{task_id}/1/result-0.png",
        sha256="0" * 64,
        bytes=1,
        width=64,
        height=64,
    )
    with pytest.raises(LeaseLost):
        db.leases.succeed(row.id, 1, [late])
    assert db.jobs.artifacts_of(row.id) == before
    after = alice.get(task_id)
    assert (after["state"], after["attempt"]) == ("succeeded", 2)
    assert [a["sha256"] for a in after["artifacts"]] == [a["sha256"] for a in done["artifacts"]]


def test_jobs_queued_when_redis_is_flushed_are_restored_and_finish(
    alice: Api, farm_env: FarmEnv, db: Database, redis_client: redis.Redis, workers: WorkerPool
) -> None:
    queue = queue_of("e2e-flush")  # no worker consumes it until the end
    task_ids = [new_task_id(f"flush{i}") for i in range(3)]
    for task_id in task_ids:
        alice.submit(task_id, model="e2e-flush", steps=2)
    job_ids = [db.jobs.get("alice", task_id).id for task_id in task_ids]

    def published() -> bool:
        return redis_client.llen(queue) == len(job_ids) and all(
            redis_client.exists(dispatched_marker(job_id)) for job_id in job_ids
        )

    wait_until(published, 30.0, "the jobs' messages and markers in Redis")
    redis_client.flushdb()  # Redis restarted empty: every message and marker is gone
    assert redis_client.llen(queue) == 0
    # The reconciler sees queued, dispatched jobs without markers and has them published again.
    wait_until(published, 30.0, "the jobs re-published after the flush")

    workers.start(unique_hostname("after-flush"), [queue], standin_step_s=0.05)
    done = [alice.wait_state(task_id, "succeeded") for task_id in task_ids]
    assert {snapshot["attempt"] for snapshot in done} == {1}


def test_reconcile_once_runs_against_the_cluster(farm_env: FarmEnv) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "renderfarm.cli", "reconcile", "--once"],
        env=farm_env.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "reconciled:" in result.stdout
