"""Submit, read and download through the real farm: scheduler and worker processes, PostgreSQL, Redis and S3."""

from __future__ import annotations

import hashlib
import io

import httpx
import pytest
from PIL import Image

from scheduler.snapshots import public_worker_name
from tests.e2e.conftest import Api, Worker, new_task_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_job_succeeds_and_every_artifact_downloads_intact(alice: Api, render_worker: Worker) -> None:
    task_id = new_task_id("render")
    uploaded = alice.client.post("/v1/assets", content=_white_square_mask(), headers={"Content-Type": "image/png"})
    mask = uploaded.json()["asset_id"]
    created = alice.submit(task_id, mask=mask, inpainting_fill=1, denoising_strength=0.75)
    assert created["state"] == "queued"

    done = alice.wait_state(task_id, "succeeded")

    assert done["attempt"] == 1
    assert done["worker"] == public_worker_name(render_worker.hostname)
    kinds = sorted(artifact["kind"] for artifact in done["artifacts"])
    assert kinds == ["mask", "overlay", "result"]
    for artifact in done["artifacts"]:
        # Presigned URLs: plain HTTP, no token, straight from the S3 server.
        response = httpx.get(artifact["url"], timeout=30.0)
        assert response.status_code == 200, artifact["url"]
        assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"]
        assert len(response.content) == artifact["bytes"]
        with Image.open(io.BytesIO(response.content)) as picture:
            assert picture.size == (artifact["width"], artifact["height"])
            if artifact["kind"] == "result":
                infotext = picture.info.get("parameters")
                assert infotext == artifact["infotext"]
                assert "Steps: 8" in infotext
                assert f"Seed: {artifact['seed']}" in infotext


def _white_square_mask() -> bytes:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def test_force_task_id_is_create_or_get_and_unknown_ids_are_404(alice: Api) -> None:
    task_id = new_task_id("idempotent")
    body = alice.body(model="e2e-idle")  # a queue no worker consumes: the job stays as submitted

    first = alice.client.put(f"/v1/jobs/{task_id}", json=body)
    again = alice.client.put(f"/v1/jobs/{task_id}", json=body)
    via_post = alice.client.post("/v1/jobs", json={**body, "force_task_id": task_id})
    different = alice.client.put(f"/v1/jobs/{task_id}", json={**body, "prompt": "a blue square"})
    unknown = alice.client.get(f"/v1/jobs/{new_task_id('never-submitted')}")

    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert via_post.status_code == 200, via_post.text
    assert again.json()["created_at"] == first.json()["created_at"] == via_post.json()["created_at"]
    listed = alice.client.get("/v1/jobs", params={"state": "queued", "limit": 500}).json()["jobs"]
    assert [job["task_id"] for job in listed].count(task_id) == 1
    assert different.status_code == 409, different.text
    assert different.json()["error"]["type"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"]
    alice.client.post(f"/v1/jobs/{task_id}/cancel")


def test_a_tenant_cannot_see_or_cancel_another_tenants_job(alice: Api, bob: Api) -> None:
    task_id = new_task_id("private")
    alice.submit(task_id, model="e2e-idle")

    assert bob.client.get(f"/v1/jobs/{task_id}").status_code == 404
    assert bob.client.post(f"/v1/jobs/{task_id}/cancel").status_code == 404
    assert bob.client.get(f"/v1/jobs/{task_id}/events").status_code == 404
    assert task_id not in [job["task_id"] for job in bob.client.get("/v1/jobs").json()["jobs"]]
    assert alice.get(task_id)["state"] == "queued"  # bob's cancel changed nothing
    # The same id is free in bob's namespace: a job of his own, not alice's.
    bobs = bob.submit(task_id, model="e2e-idle", prompt="bob's own")
    assert bobs["created_at"] != alice.get(task_id)["created_at"]

    for api in (alice, bob):
        assert api.client.post(f"/v1/jobs/{task_id}/cancel").json()["state"] == "canceled"
