"""Every unfinished job says why it waits (`waiting`), and its ETA follows its size (`eta_s`, `eta_range_s`).

Each waiting reason of docs/api.md "Waiting reasons" is made here by creating its situation in the real database
(both configurations), and read back through `GET /v1/jobs/{task_id}`, the job list and the cancel answer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.conftest import ALICE, BOB, FARM_WORKER, Farm, FarmFactory, job_body, png_bytes, put_job, upload

pytestmark = pytest.mark.integration


def snapshot(farm: Farm, task_id: str, headers: dict[str, str] = ALICE) -> dict[str, Any]:
    response = farm.client.get(f"/v1/jobs/{task_id}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def waiting(farm: Farm, task_id: str, headers: dict[str, str] = ALICE) -> dict[str, Any]:
    reason: dict[str, Any] = snapshot(farm, task_id, headers)["waiting"]
    assert reason is not None, f"{task_id} shows no waiting reason"
    assert reason["message"], reason
    return reason


def refresh_workers(farm: Farm) -> None:
    farm.app.state.services.workers.refresh()


@pytest.fixture
def image(farm: Farm) -> str:
    return str(upload(farm, png_bytes())["asset_id"])


def test_queued_jobs_say_how_many_run_first(farm: Farm, image: str) -> None:
    for task_id in ("q-1", "q-2", "q-3"):
        assert put_job(farm, task_id, job_body(image)).status_code == 201
    first = waiting(farm, "q-1")
    assert (first["reason"], first["jobs_ahead"]) == ("queued", 0)
    assert "waiting for a free worker" in first["message"]
    assert first["since"] == snapshot(farm, "q-1")["created_at"]
    third = waiting(farm, "q-3")
    # Only alice has jobs: the round-robin over tenants changes nothing, so her own jobs ahead are plain "queued".
    assert (third["reason"], third["jobs_ahead"]) == ("queued", 2)
    assert "behind 2 jobs" in third["message"]
    # The list carries a reason too (without the counts, which lists leave out).
    listed = farm.client.get("/v1/jobs", headers=ALICE).json()["jobs"]
    reasons = {job["task_id"]: job["waiting"]["reason"] for job in listed}
    assert reasons == dict.fromkeys(("q-1", "q-2", "q-3"), "queued")


def test_a_job_behind_higher_priority_says_so(make_farm: FarmFactory) -> None:
    farm = make_farm(tenant_max_priority="alice:10")
    image = upload(farm, png_bytes())["asset_id"]
    assert put_job(farm, "low", job_body(image)).status_code == 201
    assert put_job(farm, "urgent-1", job_body(image, priority=5)).status_code == 201
    assert put_job(farm, "urgent-2", job_body(image, priority=5)).status_code == 201
    low = waiting(farm, "low")
    assert (low["reason"], low["higher_priority_ahead"], low["jobs_ahead"]) == ("behind_priority", 2, 2)
    assert "2 jobs of higher priority" in low["message"]
    assert waiting(farm, "urgent-1")["reason"] == "queued"


def test_a_tenant_with_jobs_ahead_waits_its_turn_when_others_wait(farm: Farm, image: str) -> None:
    assert put_job(farm, "a-1", job_body(image)).status_code == 201
    assert put_job(farm, "a-2", job_body(image)).status_code == 201
    assert waiting(farm, "a-2")["reason"] == "queued"  # alone: no one to share with
    bob_image = upload(farm, png_bytes(), headers=BOB)["asset_id"]
    assert put_job(farm, "b-1", job_body(bob_image), headers=BOB).status_code == 201
    a2 = waiting(farm, "a-2")
    assert (a2["reason"], a2["own_tenant_ahead"], a2["jobs_ahead"]) == ("tenant_fair_share", 1, 1)
    b1 = waiting(farm, "b-1", BOB)
    assert (b1["reason"], b1["jobs_ahead"]) == ("queued", 2)  # none of bob's own ahead: his turn comes next


def test_a_model_no_worker_serves_says_since_when(farm: Farm, image: str) -> None:
    assert put_job(farm, "lonely", job_body(image, model="nobody-serves-this")).status_code == 201
    reason = waiting(farm, "lonely")
    assert (reason["reason"], reason["model"], reason["queue"]) == (
        "no_worker",
        "nobody-serves-this",
        "rf.nobody-serves-this.interactive",
    )
    assert reason["since"] is None  # no worker was ever seen serving it
    assert "since the scheduler started" in reason["message"]
    # A worker serves it for a while, then goes away: the reason says since when nobody does.
    farm.db.workers.announce(
        "gpu9@gone", device="cpu", queues=["rf.nobody-serves-this.interactive"], models=["x"], ttl_s=600.0
    )
    refresh_workers(farm)
    assert waiting(farm, "lonely")["reason"] == "queued"
    seen_at = next(row.seen_at for row in farm.db.workers.live() if row.hostname == "gpu9@gone")
    farm.db.workers.withdraw("gpu9@gone")
    refresh_workers(farm)
    reason = waiting(farm, "lonely")
    assert reason["reason"] == "no_worker"
    assert datetime.fromisoformat(reason["since"]) == seen_at
    assert reason["since"] in reason["message"]


def test_a_running_job_of_a_silent_worker_waits_for_its_lease(farm: Farm, image: str) -> None:
    assert put_job(farm, "alive", job_body(image)).status_code == 201
    assert put_job(farm, "orphan", job_body(image, seed=2)).status_code == 201
    farm.claim("alice", "alive", worker=FARM_WORKER)
    orphan = farm.claim("alice", "orphan", worker="gpu7@died")  # this worker never announced itself
    assert snapshot(farm, "alive")["waiting"] is None  # rendering: nothing to explain
    reason = waiting(farm, "orphan")
    assert reason["reason"] == "worker_silent"
    assert orphan.lease_until is not None
    assert datetime.fromisoformat(reason["lease_until"]) == orphan.lease_until
    # The live worker stops announcing too: its job waits for the lease the same way.
    farm.db.workers.withdraw(FARM_WORKER)
    refresh_workers(farm)
    assert waiting(farm, "alive")["reason"] == "worker_silent"


def test_a_job_backing_off_after_an_outage_says_when_it_runs_again(farm: Farm, image: str) -> None:
    assert put_job(farm, "outage", job_body(image)).status_code == 201
    assert put_job(farm, "flaky", job_body(image, seed=2)).status_code == 201
    for task_id in ("outage", "flaky"):
        farm.claim("alice", task_id, worker=FARM_WORKER)
    outage = farm.job_row("alice", "outage")
    cause = {"type": "transient", "code": "storage_unavailable", "message": "S3 down"}
    requeued = farm.db.leases.requeue(
        outage.id, outage.attempt, retry_delay_s=600.0, outage=cause, counts_as_attempt=False
    )
    assert requeued is not None
    assert requeued.retry_at is not None
    assert requeued.outage_since is not None
    reason = waiting(farm, "outage")
    assert reason["reason"] == "outage_backoff"
    assert datetime.fromisoformat(reason["retry_at"]) == requeued.retry_at
    assert datetime.fromisoformat(reason["since"]) == requeued.outage_since
    assert reason["outage_requeues"] == 1
    flaky = farm.job_row("alice", "flaky")
    assert farm.db.leases.requeue(flaky.id, flaky.attempt, retry_delay_s=600.0) is not None
    assert waiting(farm, "flaky")["reason"] == "retry_backoff"


def test_a_cancel_of_a_running_job_is_shown_until_the_worker_stops(farm: Farm, image: str) -> None:
    assert put_job(farm, "stop-me", job_body(image)).status_code == 201
    queued = snapshot(farm, "stop-me")
    assert queued["cancel_requested"] is False
    farm.claim("alice", "stop-me", worker=FARM_WORKER)
    answer = farm.client.post("/v1/jobs/stop-me/cancel", headers=ALICE).json()
    assert (answer["state"], answer["cancel_requested"], answer["waiting"]["reason"]) == ("running", True, "canceling")
    assert snapshot(farm, "stop-me")["cancel_requested"] is True
    row = farm.job_row("alice", "stop-me")
    assert farm.db.leases.cancel_running(row.id, row.attempt) is not None  # the worker stops
    done = snapshot(farm, "stop-me")
    assert (done["state"], done["cancel_requested"], done["waiting"]) == ("canceled", False, None)


# --------------------------------------------------------------------------------------------------------------
# ETA


def _record_run(farm: Farm, task_id: str, body: dict[str, Any], seconds_per_work: float, start: datetime) -> None:
    """A job of `body` that ran `seconds_per_work` × its steps × megapixels × batch: claimed at `start`."""
    assert put_job(farm, task_id, body).status_code == 201
    row = farm.job_row("alice", task_id)
    assert row.total_steps is not None
    work = row.total_steps * body["width"] * body["height"] / 1e6 * body.get("batch_size", 1)
    claimed = farm.db.leases.claim(row.id, FARM_WORKER, 600.0, now=start)
    assert claimed is not None
    farm.db.leases.succeed(row.id, claimed.attempt, [], now=start + timedelta(seconds=work * seconds_per_work))


def test_the_eta_follows_the_jobs_size(farm: Farm, image: str) -> None:
    """A 150-step 512² job is not estimated like a 6-step 64² one (the median run time of earlier small jobs)."""
    small = job_body(image, steps=6, width=64, height=64, denoising_strength=1.0)
    big = job_body(image, steps=150, width=512, height=512, denoising_strength=1.0)
    start = datetime.now(UTC) - timedelta(hours=1)
    # Earlier jobs, small and mid-sized, at 2 to 4 seconds per step and megapixel.
    for index, rate in enumerate((2.0, 3.0, 3.0, 4.0)):
        _record_run(farm, f"history-{index}", {**small, "seed": index}, rate, start)
    _record_run(farm, "history-mid", {**small, "width": 256, "height": 256, "steps": 20, "seed": 9}, 3.0, start)
    farm.app.state.services.estimator.forget()

    estimates = {}
    for name, body in (("big", big), ("small", small)):
        assert put_job(farm, f"eta-{name}", {**body, "seed": 42}).status_code == 201
        shown = snapshot(farm, f"eta-{name}")
        assert shown["queue_position"] == 0
        row = farm.job_row("alice", f"eta-{name}")
        assert row.total_steps is not None
        estimates[name] = (shown, row.total_steps * body["width"] * body["height"] / 1e6)
        farm.client.post(f"/v1/jobs/eta-{name}/cancel", headers=ALICE)  # the next one is first in the queue again
    (big_shown, big_work), (small_shown, small_work) = estimates["big"], estimates["small"]
    # The median rate (3 s per step·megapixel) times each job's own work, and the quartiles around it.
    assert big_shown["eta_s"] == pytest.approx(3.0 * big_work, rel=0.01)
    assert small_shown["eta_s"] == pytest.approx(3.0 * small_work, rel=0.05, abs=0.1)
    assert big_shown["eta_s"] > 1000 * small_shown["eta_s"]
    low, high = big_shown["eta_range_s"]
    assert low == pytest.approx(3.0 * big_work, rel=0.01)  # the 1st quartile of (2, 3, 3, 3, 4)
    assert high == pytest.approx(3.0 * big_work, rel=0.01)  # and the 3rd
    assert low <= big_shown["eta_s"] <= high


def test_the_eta_counts_the_jobs_ahead_and_spreads_them_over_the_workers(farm: Farm, image: str) -> None:
    body = job_body(image, steps=20, width=512, height=512, denoising_strength=1.0)
    start = datetime.now(UTC) - timedelta(hours=1)
    for index, rate in enumerate((1.0, 2.0, 4.0, 8.0, 16.0)):
        _record_run(farm, f"history-{index}", {**body, "seed": index}, rate, start)
    farm.app.state.services.estimator.forget()
    for index in range(4):
        assert put_job(farm, f"ahead-{index}", {**body, "seed": 100 + index}).status_code == 201
    last = snapshot(farm, "ahead-3")
    first = snapshot(farm, "ahead-0")
    assert last["queue_position"] == 3
    low, high = last["eta_range_s"]
    assert low < last["eta_s"] < high  # the rates spread: a range, not a point
    one_job = first["eta_s"]  # nothing ahead: the job's own estimate
    assert last["eta_s"] == pytest.approx(4 * one_job, rel=0.02)  # one worker: three jobs ahead, then its own
    # A second worker serves the queue: the jobs ahead are shared between them.
    farm.db.workers.announce(
        "gpu1@second", device="cpu", queues=[farm.job_row("alice", "ahead-3").queue], models=["x"], ttl_s=600.0
    )
    refresh_workers(farm)
    assert snapshot(farm, "ahead-3")["eta_s"] == pytest.approx(2.5 * one_job, rel=0.02)


def test_a_running_jobs_range_covers_what_is_left(farm: Farm, image: str) -> None:
    body = job_body(image, steps=20, width=512, height=512, denoising_strength=1.0)
    start = datetime.now(UTC) - timedelta(hours=1)
    for index, rate in enumerate((1.0, 2.0, 3.0)):
        _record_run(farm, f"history-{index}", {**body, "seed": index}, rate, start)
    farm.app.state.services.estimator.forget()
    assert put_job(farm, "busy", {**body, "seed": 50}).status_code == 201
    row = farm.claim("alice", "busy", worker=FARM_WORKER)
    assert row.total_steps is not None
    farm.progress(row, step=row.total_steps // 2, total=row.total_steps, seq=1)
    shown = snapshot(farm, "busy")
    work = row.total_steps * 512 * 512 / 1e6
    low, high = shown["eta_range_s"]
    assert low <= shown["eta_s"] <= high
    assert high >= 0.5 * work * 2.5 * 0.99  # the 3rd quartile of (1, 2, 3) over the half that is left
    assert shown["waiting"] is None
