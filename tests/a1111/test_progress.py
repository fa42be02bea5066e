"""Progress, interrupt and skip per task, as A1111 clients poll and press them; and a client that disconnects.

The stand-in engine keeps jobs running long enough to be polled (seconds, not minutes); the worker-level tests
run the real renderer on the tiny model, where interrupt and skip stop sampling mid-batch.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.a1111.conftest import ALICE, BOB, LiveFarm, png_b64
from worker.engine.processing import process_images
from worker.job_runner import run_job


class Posted:
    """An img2img request sent from a thread (as a client blocks on it), with its answer once it is back."""

    def __init__(self, farm: LiveFarm, body: dict[str, Any], auth: httpx.Auth = ALICE) -> None:
        self.response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._post, args=(farm, body, auth), daemon=True)
        self._thread.start()

    def _post(self, farm: LiveFarm, body: dict[str, Any], auth: httpx.Auth) -> None:
        with farm.client(auth) as client:
            self.response = client.post("/sdapi/v1/img2img", json=body)

    def result(self, timeout_s: float = 60.0) -> httpx.Response:
        self._thread.join(timeout_s)
        assert self.response is not None, "the img2img request did not come back"
        return self.response


def body(task_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "init_images": [png_b64()],
        "prompt": "p",
        "width": 64,
        "height": 64,
        "denoising_strength": 1.0,
        "force_task_id": task_id,
        **fields,
    }


def internal_progress(client: httpx.Client, task_id: str) -> dict[str, Any]:
    response = client.post("/internal/progress", json={"id_task": task_id, "id_live_preview": -1, "live_preview": True})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def test_internal_progress_goes_queued_active_completed(farm: LiveFarm, standin: Callable[[float], None]) -> None:
    standin(0.1)
    first, second = "task(img2img-PROGA01)", "task(img2img-PROGB01)"
    with farm.client() as client:
        unknown = internal_progress(client, second)  # polled before the POST arrived: the reference's answer
        assert unknown == {
            "active": False,
            "queued": False,
            "completed": False,
            "progress": None,
            "eta": None,
            "live_preview": None,
            "id_live_preview": -1,
            "textinfo": "Waiting...",
        }
        blocker = Posted(farm, body(first, steps=20))
        farm.wait_for("the first job to run", lambda: internal_progress(client, first)["active"])
        waiting = Posted(farm, body(second, steps=10))
        seen: list[dict[str, Any]] = []

        def completed() -> bool:
            seen.append(internal_progress(client, second))
            return bool(seen[-1]["completed"])

        farm.wait_for("the second job to complete", completed)
    phases = [
        "queued" if s["queued"] else "active" if s["active"] else "completed" if s["completed"] else "waiting"
        for s in seen
    ]
    # In order, each phase seen, nothing else in between ("waiting": polled before the POST arrived).
    order = [phase for i, phase in enumerate(phases) if i == 0 or phases[i - 1] != phase]
    assert order in (["queued", "active", "completed"], ["waiting", "queued", "active", "completed"])
    queued = [s for s in seen if s["queued"]]
    assert queued[0]["textinfo"] == "In queue: 1/1"
    assert all(s["progress"] is None and s["eta"] is None for s in queued)
    progress = [s["progress"] for s in seen if s["active"]]
    assert progress == sorted(progress), "progress never goes back"
    assert len(set(progress)) >= 3
    assert progress[-1] > progress[0]
    assert all(0.0 <= p <= 1.0 for p in progress)
    assert any(s["eta"] is not None and s["eta"] >= 0 for s in seen if s["active"])
    assert seen[-1]["textinfo"] == "Done"
    assert blocker.result().status_code == 200
    assert waiting.result().status_code == 200


def test_interrupt_with_an_id_stops_that_job_and_no_other(farm: LiveFarm, standin: Callable[[float], None]) -> None:
    standin(0.1)
    target, other = "task(img2img-INTR001)", "task(img2img-INTR002)"
    with farm.client() as alice, farm.client(BOB) as bob:
        interrupted = Posted(farm, body(target, steps=10, n_iter=3))  # 3 batches of 1 s
        farm.wait_for("the target to run", lambda: internal_progress(alice, target)["active"])
        untouched = Posted(farm, body(other, steps=5, n_iter=2))
        farm.wait_for("the other job to queue", lambda: other in alice.get("/internal/pending-tasks").json()["tasks"])
        assert alice.get("/internal/pending-tasks").json() == {"size": 1, "tasks": [other]}
        assert bob.get("/internal/pending-tasks").json() == {"size": 0, "tasks": []}

        # /sdapi/v1/progress: the caller's running job by default, a named one with id_task; bob sees nothing.
        running = farm.wait_for(
            "sampling steps", lambda: (p := alice.get("/sdapi/v1/progress").json())["state"]["sampling_step"] and p
        )
        assert running["state"]["job"] == target
        assert running["state"]["job_count"] == 3
        assert running["state"]["sampling_steps"] == 10
        assert 0.01 < running["progress"] <= 1.0
        assert running["eta_relative"] >= 0
        assert running["current_image"] is None
        assert alice.get("/sdapi/v1/progress", params={"id_task": other}).json()["textinfo"] == "In queue: 1/1"
        idle = bob.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
        assert idle["progress"] == 0
        assert idle["state"]["job_count"] == 0
        assert idle["state"]["job"] == ""

        # Bob's interrupt and skip reach none of alice's jobs; her task id is unknown to him.
        assert bob.post("/sdapi/v1/interrupt").json() == {}
        assert bob.post("/sdapi/v1/skip").json() is None
        assert bob.post("/sdapi/v1/interrupt", params={"id_task": target}).status_code == 404
        target_id = farm.db.jobs.get("alice", target).id
        assert not farm.live.interrupt_requested(target_id)
        assert farm.live.skip_requested(target_id) == 0

        # Alice's skip with the id counts for that job only (the stand-in has no steps to cut; see the worker test).
        assert alice.post("/sdapi/v1/skip", params={"id_task": target}).json() is None
        assert farm.live.skip_requested(target_id) == 1
        # Interrupt with the id in the body, as some clients send it.
        assert alice.post("/sdapi/v1/interrupt", json={"id_task": target}).json() == {}
        state = alice.get("/sdapi/v1/progress", params={"id_task": target}).json()["state"]
        assert state["job"] == target
        assert state["interrupted"] or state["job_count"] == 0

        stopped = interrupted.result()
        assert stopped.status_code == 200, stopped.text
        assert 1 <= len(stopped.json()["images"]) < 3, "no further batch after an interrupt"
        assert alice.get(f"/v1/jobs/{target}").json()["state"] == "succeeded"
        full = untouched.result()
        assert full.status_code == 200
        assert len(full.json()["images"]) == 2
        other_id = farm.db.jobs.get("alice", other).id
        assert not farm.live.interrupt_requested(other_id)


def test_a_client_that_disconnects_does_not_lose_its_job(farm: LiveFarm, standin: Callable[[float], None]) -> None:
    standin(0.1)
    task_id = "task(img2img-GONE001)"
    with farm.client(timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/sdapi/v1/img2img", json=body(task_id, steps=15))
    with farm.client() as client:
        job = farm.wait_for(
            "the job to finish", lambda: (j := client.get(f"/v1/jobs/{task_id}").json())["state"] == "succeeded" and j
        )
        assert [a["kind"] for a in job["artifacts"]] == ["result"]
        assert internal_progress(client, task_id)["completed"] is True
        # Asking again with the same force_task_id returns the finished job's images at once.
        again = client.post("/sdapi/v1/img2img", json=body(task_id, steps=15))
        assert again.status_code == 200
        assert len(again.json()["images"]) == 1


def _run_twins(farm: LiveFarm, stop: Callable[[Any], object] | None, name: str) -> list[str]:
    """Create a job on a queue no worker serves, raise its stop flag, run it here with the real renderer; returns
    the sha256 of its results."""
    job = {
        "init_images": [png_b64((90, 160, 30))],
        "prompt": "p",
        "width": 64,
        "height": 64,
        "steps": 6,
        "n_iter": 2,
        "seed": 99,
        "denoising_strength": 1.0,
        "model": "a1111-unserved",
    }
    with farm.client() as client:
        assert client.put(f"/v1/jobs/{name}", json=job).status_code == 201
    row = farm.db.jobs.get("alice", name)
    if stop is not None:
        stop(row.id)
    deps = dataclasses.replace(farm.deps, engine=process_images, worker_name="a1111-test-direct")
    outcome = run_job(row.id, 0, deps)
    assert outcome.state == "succeeded"
    return [a.sha256 for a in farm.db.jobs.artifacts_of(row.id) if a.kind == "result"]


def test_worker_skip_ends_one_batch_and_interrupt_keeps_what_it_has(farm: LiveFarm) -> None:
    plain = _run_twins(farm, None, "stops-plain")
    skipped = _run_twins(farm, farm.live.request_skip, "stops-skip")
    interrupted = _run_twins(farm, farm.live.request_interrupt, "stops-interrupt")
    assert len(plain) == 2
    # Skip: the first batch ends after its first step (decoded from x0); the second batch runs in full.
    assert len(skipped) == 2
    assert skipped[0] != plain[0]
    assert skipped[1] == plain[1]
    # Interrupt: the current batch is kept as it is, no further batch runs, and the job succeeds.
    assert len(interrupted) == 1
    assert interrupted[0] == skipped[0]
    # The snapshots say so (docs/api.md "Why a job waits, and when it is done"): a stopped job is not shown as a
    # full render.
    with farm.client() as client:
        shown = {name: client.get(f"/v1/jobs/stops-{name}").json() for name in ("plain", "skip", "interrupt")}
    total = shown["plain"]["total_steps"]
    assert (shown["plain"]["interrupted"], shown["plain"]["skipped"], shown["plain"]["stopped_at_step"]) == (
        False,
        False,
        None,
    )
    assert shown["plain"]["step"] == total
    assert not [w for w in shown["plain"]["warnings"] if w["code"] in ("interrupted", "skipped")]
    for name, flag in (("skip", "skipped"), ("interrupt", "interrupted")):
        snapshot = shown[name]
        assert snapshot["state"] == "succeeded"
        assert snapshot[flag] is True
        stopped_at = snapshot["stopped_at_step"]
        assert stopped_at is not None, snapshot
        assert 0 <= stopped_at < total, snapshot
        assert snapshot["step"] == stopped_at
        (warning,) = [w for w in snapshot["warnings"] if w["code"] == flag]
        assert (warning["step"], warning["total_steps"]) == (stopped_at, total)
        assert f"at step {stopped_at} of {total}" in warning["message"]
    assert shown["skip"]["interrupted"] is False
    assert shown["interrupt"]["skipped"] is False
