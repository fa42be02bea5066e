"""`GET /metrics` of the scheduler process, scraped before and after a few jobs: the counters move by what happened."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import E2E_METRICS_TOKEN, Api, Scheduler, Worker, new_task_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(scheduler: Scheduler) -> Samples:
    # The e2e farm sets RENDERFARM_METRICS_TOKEN, as deploy/ does: a scrape without it is refused.
    assert httpx.get(f"{scheduler.url}/metrics", timeout=30.0).status_code == 401
    headers = {"Authorization": f"Bearer {E2E_METRICS_TOKEN}"}
    answer = httpx.get(f"{scheduler.url}/metrics", headers=headers, timeout=30.0)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_the_jobs_that_ran(alice: Api, scheduler: Scheduler, standin_workers: list[Worker]) -> None:
    before = scrape(scheduler)

    done = [alice.submit(new_task_id("metrics-ok"), model="e2e-standin", steps=2)["task_id"] for _ in range(3)]
    canceled = alice.submit(new_task_id("metrics-cancel"), model="e2e-idle")["task_id"]  # no worker takes it
    assert alice.client.post(f"/v1/jobs/{canceled}/cancel").json()["state"] == "canceled"
    for task_id in done:
        alice.wait_state(task_id, "succeeded")

    after = scrape(scheduler)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("renderfarm_jobs_finished_total", model="e2e-standin", state="succeeded") == 3
    assert grew("renderfarm_jobs_finished_total", model="e2e-idle", state="canceled") == 1
    assert grew("renderfarm_job_cancels_total", model="e2e-idle", stage="queued") == 1
    assert grew("renderfarm_job_run_seconds_count", model="e2e-standin", state="succeeded") == 3
    assert grew("renderfarm_job_wait_seconds_count", model="e2e-standin") == 3
    assert grew("renderfarm_job_attempts_total", model="e2e-standin") == 3
    assert grew("renderfarm_jobs", state="succeeded") == 3
    assert grew("renderfarm_jobs", state="canceled") == 1
    assert value(after, "renderfarm_queue_running", queue="rf.e2e-standin.interactive") == 0
