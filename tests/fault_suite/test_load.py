"""Load with kills: many SDK clients at once, each submitting its share of the jobs and waiting for every one,
while workers are SIGKILLed at random moments. Reports throughput and the largest queue wait (created → started).
CI: 200 jobs from 10 clients, 4 kills; nightly: 5,000 jobs from 50 clients, 20 kills (tests/fault_suite/sizes.py).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from shared.db.tables import Job
from tests.fault_suite.cases import PICTURE, assert_invariants, wait_all_finished
from tests.fault_suite.conftest import Report
from tests.fault_suite.farm import TENANT, Farm, Killer, job_fields, new_task_id
from tests.fault_suite.sizes import Size, chosen_size

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.timeout(600 if chosen_size().name == "ci" else 7200),
]


def test_many_clients_with_kills(farm: Farm, size: Size, report: Report) -> None:
    per_client = size.load_jobs // size.load_clients
    plans = [[new_task_id(f"load{c}-{i}-") for i in range(per_client)] for c in range(size.load_clients)]
    task_ids = [task_id for plan in plans for task_id in plan]

    def client_run(plan: list[str]) -> list[str]:
        """One SDK client: submit its jobs, then wait for each; the states it saw."""
        with farm.client() as client:
            for task_id in plan:
                client.submit(image=PICTURE, task_id=task_id, **job_fields(steps=2))
            return [client.wait(task_id, timeout=size.recovery_timeout_s * 4).state.value for task_id in plan]

    began = time.monotonic()
    killer = Killer(farm, kills=size.load_kills, interval_s=(1.0, 4.0), seed=50).start()
    try:
        with ThreadPoolExecutor(size.load_clients) as pool:
            seen = [state for states in pool.map(client_run, plans) for state in states]
        elapsed_s = time.monotonic() - began
    finally:
        killer.stop()
    wait_all_finished(farm, task_ids, size.recovery_timeout_s)

    found = assert_invariants(farm, task_ids)
    assert seen == ["succeeded"] * len(task_ids)
    assert killer.kills > 0, "the load ended before the first kill"
    with farm._engine.connect() as conn:
        waits = conn.execute(
            sa.select(
                sa.func.max(Job.started_at - Job.created_at), sa.func.min(Job.created_at), sa.func.max(Job.finished_at)
            ).where(Job.tenant == TENANT, Job.task_id.in_(task_ids))
        ).one()
    largest_wait, first_created, last_finished = waits
    report.add(
        "load_with_kills",
        jobs=len(task_ids),
        clients=size.load_clients,
        kills=killer.kills,
        client_seconds=round(elapsed_s, 1),
        throughput_jobs_per_s=round(len(task_ids) / (last_finished - first_created).total_seconds(), 2),
        largest_queue_wait_s=round(largest_wait.total_seconds(), 1),
        workers=size.workers,
        **{k: v for k, v in found.figures().items() if k != "jobs"},
    )
