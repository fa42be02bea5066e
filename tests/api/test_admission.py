"""One admission path: a job admitted alone (`PUT /v1/jobs`, `POST /v1/jobs`) and the same job as a batch's child
are stored with the same request and the same request hash; only the queue tier differs."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from shared.job.hashing import request_hash
from shared.job.spec import Img2ImgJob
from tests.api.conftest import ALICE, Farm, job_body, png_bytes, put_job

pytestmark = pytest.mark.integration


def _item(image_png: bytes, **fields: Any) -> dict[str, Any]:
    inline = base64.b64encode(image_png).decode()
    mask = base64.b64encode(png_bytes(color=(255, 255, 255))).decode()
    return job_body(inline, mask=f"data:image/png;base64,{mask}", sampler_name="DPM++ 2M Karras", **fields)


def test_single_and_batch_admission_store_the_same_request_and_hash(farm: Farm, image_png: bytes) -> None:
    assert put_job(farm, "alone", _item(image_png)).status_code == 201
    posted = farm.client.post("/v1/jobs", json=_item(image_png, force_task_id="posted"), headers=ALICE)
    assert posted.status_code == 201, posted.text
    batch = farm.client.post(
        "/v1/batches", json={"jobs": [_item(image_png, force_task_id="child"), _item(image_png)]}, headers=ALICE
    )
    assert batch.status_code == 201, batch.text
    batch_id = batch.json()["batch_id"]

    alone = farm.job_row("alice", "alone")
    rows = [farm.job_row("alice", task_id) for task_id in ("posted", "child", f"{batch_id}-1")]
    for row in rows:
        assert row.request == alone.request
        assert row.request_hash == alone.request_hash
    # The id is each row's key, never part of the stored request; the hash is over the stored request.
    assert [row.task_id for row in rows] == ["posted", "child", f"{batch_id}-1"]
    assert "force_task_id" not in alone.request
    assert alone.request["init_images"][0].startswith("asset:")
    assert alone.request_hash == request_hash(Img2ImgJob.from_request_json(alone.request))
    assert alone.queue == "rf.default.interactive"
    assert {row.queue for row in rows[1:]} == {"rf.default.batch"}
    assert alone.total_steps == rows[1].total_steps


def test_a_batch_child_resubmitted_alone_is_the_same_job(farm: Farm, image_png: bytes) -> None:
    batch = farm.client.post("/v1/batches", json={"jobs": [_item(image_png, force_task_id="shared")]}, headers=ALICE)
    assert batch.status_code == 201, batch.text
    again = put_job(farm, "shared", _item(image_png))
    assert again.status_code == 200, again.text
    different = put_job(farm, "shared", _item(image_png, prompt="another"))
    assert different.status_code == 409
