"""Submitting, reading, listing and canceling jobs, on both configurations."""

from __future__ import annotations

import base64
import json
import typing
import uuid
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from scheduler.snapshots import public_worker_name
from shared.job.hashing import request_hash
from shared.job.spec import MAX_PROMPT_LENGTH, Img2ImgJob
from shared.states import JobState
from tests.api.conftest import ALICE, BOB, Farm, FarmFactory, job_body, png_bytes, put_job, upload

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_error(response: Any, status: int, error_type: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["code"]
    assert error["message"]
    if field is not None:
        assert error.get("field") == field, error
    return error


# ---------------------------------------------------------------------------------------------------------------
# Create-or-get


def test_put_creates_then_gets_then_conflicts(farm: Farm, image_png: bytes) -> None:
    body = job_body(b64(image_png))
    created = put_job(farm, "render-1", body)
    assert created.status_code == 201, created.text
    snapshot = created.json()
    assert snapshot["task_id"] == "render-1"
    assert snapshot["state"] == "queued"
    assert snapshot["attempt"] == 0
    assert snapshot["progress"] == 0.0
    assert snapshot["queue_position"] == 0
    assert snapshot["artifacts"] == []
    assert snapshot["warnings"] == []
    assert snapshot["error"] is None
    assert snapshot["total_steps"] == int(0.75 * 10) + 1
    assert created.headers["Location"] == "/v1/jobs/render-1"

    again = put_job(farm, "render-1", body)
    assert again.status_code == 200
    assert again.json()["seq"] == snapshot["seq"]

    # The same request with defaults spelled out is the same request.
    spelled = put_job(farm, "render-1", {**body, "denoising_strength": 0.75, "cfg_scale": 7.0})
    assert spelled.status_code == 200

    different = put_job(farm, "render-1", {**body, "prompt": "a blue square"})
    error = assert_error(different, 409, "conflict", "task_id")
    row = farm.job_row("alice", "render-1")
    assert error["existing_request_hash"] == row.request_hash
    assert error["request_hash"] != row.request_hash
    assert row.request_hash in error["message"]
    assert error["request_hash"] in error["message"]


def test_stored_request_is_normalised_and_hashed(farm: Farm, image_png: bytes) -> None:
    response = put_job(farm, "norm-1", job_body(b64(image_png), mask=b64(png_bytes(color=(255, 255, 255)))))
    assert response.status_code == 201
    row = farm.job_row("alice", "norm-1")
    sha = __import__("hashlib").sha256(image_png).hexdigest()
    assert row.request["init_images"] == [f"asset:{sha}"]
    assert row.request["mask"].startswith("asset:")
    # The task id is the row's key, not part of the stored request.
    assert row.task_id == "norm-1"
    assert "force_task_id" not in row.request
    assert row.request_hash == request_hash(Img2ImgJob.from_request_json(row.request))
    assert row.queue == "rf.default.interactive"
    assert row.max_attempts == farm.settings.max_attempts
    assert row.dispatched_at is None


def test_same_picture_inline_or_as_asset_is_the_same_job(farm: Farm, image_png: bytes) -> None:
    assert put_job(farm, "same-1", job_body(b64(image_png))).status_code == 201
    asset = upload(farm, image_png)
    assert asset["asset_id"] == f"asset:{asset['sha256']}"
    assert upload(farm, image_png)["sha256"] == asset["sha256"]
    by_asset = put_job(farm, "same-1", job_body(asset["asset_id"]))
    assert by_asset.status_code == 200, by_asset.text
    # A data URI of the same bytes too.
    by_uri = put_job(farm, "same-1", job_body(f"data:image/png;base64,{b64(image_png)}"))
    assert by_uri.status_code == 200


def test_post_chooses_an_id_or_uses_force_task_id(farm: Farm, image_png: bytes) -> None:
    asset = upload(farm, image_png)
    first = farm.client.post("/v1/jobs", json=job_body(asset["asset_id"]), headers=ALICE)
    second = farm.client.post("/v1/jobs", json=job_body(asset["asset_id"]), headers=ALICE)
    assert first.status_code == second.status_code == 201
    assert first.json()["task_id"].startswith("job-")
    assert first.json()["task_id"] != second.json()["task_id"]

    forced = job_body(asset["asset_id"], force_task_id="task(img2img-ABC1234)")
    assert farm.client.post("/v1/jobs", json=forced, headers=ALICE).status_code == 201
    repeat = farm.client.post("/v1/jobs", json=forced, headers=ALICE)
    assert repeat.status_code == 200
    assert repeat.json()["task_id"] == "task(img2img-ABC1234)"
    got = farm.client.get("/v1/jobs/task(img2img-ABC1234)", headers=ALICE)
    assert got.status_code == 200
    assert got.json()["task_id"] == "task(img2img-ABC1234)"


def test_put_with_a_different_force_task_id_is_refused(farm: Farm, image_png: bytes) -> None:
    response = put_job(farm, "one", job_body(b64(image_png), force_task_id="two"))
    assert_error(response, 422, "invalid_request", "force_task_id")


# ---------------------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"width": 100}, "width"),
        ({"sampler_name": "Nope"}, "sampler_name"),
        ({"denoising_strength": 2}, "denoising_strength"),
        ({"colour": "red"}, "colour"),
        ({"init_images": []}, "init_images"),
        ({"init_images": ["asset:" + "0" * 64]}, "init_images.0"),
        ({"init_images": ["https://example.com/cat.png"]}, "init_images.0"),
        ({"init_images": ["not base64!"]}, "init_images.0"),
        ({"init_images": [b64(b"not an image at all")]}, "init_images.0"),
        ({"mask": "s3://some-other-bucket/alice/x.png"}, "mask"),
        ({"override_settings": {"bogus": 1}}, "override_settings.bogus"),
        ({"override_settings": {"sd_vae": "vae-ft-mse-840000-ema-pruned.safetensors"}}, "override_settings.sd_vae"),
        ({"restore_faces": True}, "restore_faces"),  # an A1111 field, not a job field: never dropped silently
        # Text the database or the hash cannot take (a 500 before), and prompts past the length limit.
        ({"prompt": "a\x00b"}, "prompt"),
        ({"tags": ["fine", "nul\x00"]}, "tags.1"),
        ({"override_settings": {"sd_vae\x00": "x"}}, "override_settings"),
        ({"prompt": "x" * (MAX_PROMPT_LENGTH + 1)}, "prompt"),
        ({"negative_prompt": "x" * (MAX_PROMPT_LENGTH + 1)}, "negative_prompt"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(farm: Farm, image_png: bytes, change: dict, field: str) -> None:
    body = {**job_body(b64(image_png)), **change}
    response = put_job(farm, "bad-1", body)
    error = assert_error(response, 422, "invalid_request", field)
    assert error["details"][0]["field"] == field
    with pytest.raises(Exception, match="no job"):
        farm.job_row("alice", "bad-1")


def test_admission_warnings_are_in_the_snapshot(farm: Farm, image_png: bytes) -> None:
    # What the job contract accepts but does not do as asked is named (docs/api.md "What the farm honours, warns
    # about, or refuses").
    body = {
        **job_body(b64(image_png)),
        "override_settings": {"samples_format": "webp", "initial_noise_multiplier": 0.5},
    }
    created = put_job(farm, "warned-1", body)
    assert created.status_code == 201, created.text
    expected = [
        ("no_effect", "override_settings.initial_noise_multiplier"),
    ]
    assert [(w["code"], w["field"]) for w in created.json()["warnings"]] == expected
    read = farm.client.get("/v1/jobs/warned-1", headers=ALICE).json()
    assert [(w["code"], w["field"]) for w in read["warnings"]] == expected


def test_a_lone_surrogate_is_422_naming_the_field(farm: Farm, image_png: bytes) -> None:
    # JSON may escape half of a surrogate pair; the decoded string cannot be UTF-8, so it used to fail at hashing (500).
    body = json.dumps({**job_body(b64(image_png)), "negative_prompt": "lone \ud83d surrogate"})  # ASCII escapes
    assert "\\ud83d" in body
    response = farm.client.put(
        "/v1/jobs/bad-text", content=body.encode(), headers={**ALICE, "content-type": "application/json"}
    )
    error = assert_error(response, 422, "invalid_request", "negative_prompt")
    assert error["details"][0]["code"] == "invalid_text"
    with pytest.raises(Exception, match="no job"):
        farm.job_row("alice", "bad-text")


def test_several_problems_are_all_listed(farm: Farm, image_png: bytes) -> None:
    response = put_job(farm, "bad-2", {**job_body(b64(image_png)), "steps": 0, "width": 100})
    error = assert_error(response, 422, "invalid_request")
    assert {detail["field"] for detail in error["details"]} == {"steps", "width"}


def test_request_level_validation_names_the_part(farm: Farm) -> None:
    assert_error(farm.client.put("/v1/jobs/bad%20id", json={}, headers=ALICE), 422, "invalid_request", "task_id")
    assert_error(farm.client.get("/v1/jobs/" + "x" * 129, headers=ALICE), 422, "invalid_request", "task_id")
    not_json = farm.client.put(
        "/v1/jobs/j1", content=b"{not json", headers={**ALICE, "Content-Type": "application/json"}
    )
    assert_error(not_json, 422, "invalid_request", "body")
    assert_error(farm.client.put("/v1/jobs/j1", json=[1, 2], headers=ALICE), 422, "invalid_request", "body")
    assert_error(farm.client.get("/v1/jobs?limit=0", headers=ALICE), 422, "invalid_request", "limit")
    assert_error(farm.client.get("/v1/jobs?state=done", headers=ALICE), 422, "invalid_request", "state")
    assert_error(farm.client.get("/v1/jobs?cursor=garbage", headers=ALICE), 422, "invalid_request", "cursor")


def test_unknown_job_is_a_typed_404(farm: Farm) -> None:
    for response in (
        farm.client.get("/v1/jobs/nope", headers=ALICE),
        farm.client.post("/v1/jobs/nope/cancel", headers=ALICE),
        farm.client.get("/v1/jobs/nope/events", headers=ALICE),
    ):
        assert_error(response, 404, "not_found")


# ---------------------------------------------------------------------------------------------------------------
# Sizes


def test_inline_image_over_the_limit_is_413(make_farm: FarmFactory) -> None:
    farm = make_farm(max_inline_image_bytes=4096)
    big = png_bytes(64, 64, noise=True)
    assert len(big) > 4096
    response = put_job(farm, "big-1", job_body(b64(big)))
    error = assert_error(response, 413, "payload_too_large", "init_images.0")
    assert "POST /v1/assets" in error["message"]
    # The same picture uploaded as an asset is fine: uploads are bounded by the request limit only.
    asset = upload(farm, big)
    assert put_job(farm, "big-1", job_body(asset["asset_id"])).status_code == 201


def test_image_over_the_pixel_limit_is_413(make_farm: FarmFactory) -> None:
    farm = make_farm(max_image_pixels=64 * 64)
    response = farm.client.post("/v1/assets", content=png_bytes(65, 64), headers=ALICE)
    assert_error(response, 413, "payload_too_large", "file")


def test_request_over_the_body_limit_is_413(make_farm: FarmFactory, image_png: bytes) -> None:
    farm = make_farm(max_request_bytes=2048)
    body = job_body(b64(image_png), prompt="x" * 4000)
    assert_error(put_job(farm, "huge", body), 413, "payload_too_large")

    def chunks():  # no Content-Length: counted while streamed
        for _ in range(10):
            yield b"x" * 1024

    streamed = farm.client.post("/v1/assets", content=chunks(), headers=ALICE)
    assert_error(streamed, 413, "payload_too_large")
    streamed_job = farm.client.put(
        "/v1/jobs/huge", content=chunks(), headers={**ALICE, "Content-Type": "application/json"}
    )
    assert_error(streamed_job, 413, "payload_too_large")


def test_queued_jobs_limit_is_429_with_retry_after(make_farm: FarmFactory, image_png: bytes) -> None:
    farm = make_farm(max_queued_jobs_per_tenant=2)
    asset = upload(farm, image_png)["asset_id"]
    assert put_job(farm, "q1", job_body(asset)).status_code == 201
    assert put_job(farm, "q2", job_body(asset)).status_code == 201
    refused = put_job(farm, "q3", job_body(asset))
    error = assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    assert error["retry_after_s"] > 0
    assert put_job(farm, "q1", job_body(asset)).status_code == 200  # a resubmission still answers
    assert put_job(farm, "q1", job_body(asset, prompt="other")).status_code == 409
    assert put_job(farm, "q3", job_body(asset), headers=BOB).status_code == 422  # bob has no such asset
    bob_asset = upload(farm, image_png, BOB)["asset_id"]
    assert put_job(farm, "q3", job_body(bob_asset), headers=BOB).status_code == 201  # per tenant


# ---------------------------------------------------------------------------------------------------------------
# Storage URLs as inputs


def test_urls_of_the_farms_own_storage_are_accepted(farm: Farm, image_png: bytes) -> None:
    key = "alice/inputs/pic.png"
    farm.storage.put(key, image_png, "image/png")
    if farm.kind == "cluster":
        url = f"s3://{farm.storage.bucket}/{farm.storage.prefix}{key}"  # type: ignore[attr-defined]
    else:
        url = farm.storage.download_url(key, 600)
    response = put_job(farm, "url-1", job_body(url))
    assert response.status_code == 201, response.text
    assert farm.job_row("alice", "url-1").request["init_images"] == [url]
    # A download URL from a snapshot (presigned S3, or signed /v1/files/) works as an input too.
    download = farm.storage.download_url(key, 600)
    assert put_job(farm, "url-3", job_body(download)).status_code == 201
    # Bob cannot reference alice's object, and a missing object is refused.
    assert_error(put_job(farm, "url-1", job_body(url), headers=BOB), 422, "invalid_request", "init_images.0")
    missing = url.replace("pic.png", "nothing.png")
    assert_error(put_job(farm, "url-2", job_body(missing)), 422, "invalid_request", "init_images.0")


# ---------------------------------------------------------------------------------------------------------------
# Auth and tenants


def test_auth_is_required(farm: Farm) -> None:
    missing = farm.client.get("/v1/jobs")
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = farm.client.get("/v1/jobs", headers={"Authorization": "Bearer not-a-real-token-at-all"})
    assert_error(wrong, 401, "unauthorized")
    assert_error(farm.client.get("/v1/jobs", headers={"Authorization": "Token abc"}), 401, "unauthorized")
    basic = farm.client.get("/v1/jobs", auth=("anyone", "alice-token-0123456789abcdef"))
    assert basic.status_code == 200


def test_tenants_see_only_their_own(farm: Farm, image_png: bytes) -> None:
    asset = upload(farm, image_png)
    assert put_job(farm, "mine", job_body(asset["asset_id"])).status_code == 201
    assert_error(farm.client.get("/v1/jobs/mine", headers=BOB), 404, "not_found")
    assert_error(farm.client.post("/v1/jobs/mine/cancel", headers=BOB), 404, "not_found")
    assert_error(farm.client.get("/v1/jobs/mine/events", headers=BOB), 404, "not_found")
    assert farm.client.get("/v1/jobs", headers=BOB).json()["jobs"] == []
    assert_error(farm.client.get(f"/v1/assets/{asset['asset_id']}", headers=BOB), 404, "not_found")
    assert farm.client.get(f"/v1/assets/{asset['asset_id']}", headers=ALICE).json() == asset
    # Bob's job with alice's asset id: the asset is unknown to bob.
    assert_error(put_job(farm, "mine", job_body(asset["asset_id"]), headers=BOB), 422, "invalid_request")
    # The same task id is independent per tenant.
    bob_asset = upload(farm, image_png, BOB)
    assert put_job(farm, "mine", job_body(bob_asset["asset_id"]), headers=BOB).status_code == 201
    assert farm.job_row("alice", "mine").state is JobState.QUEUED  # untouched


def test_development_mode_serves_loopback_only(make_farm: FarmFactory, image_png: bytes) -> None:
    from fastapi.testclient import TestClient

    farm = make_farm(api_tokens=None, dev_mode=True)
    response = farm.client.post("/v1/assets", content=image_png)
    assert response.status_code == 201
    assert put_job(farm, "dev-1", job_body(response.json()["asset_id"]), headers={}).status_code == 201
    assert farm.job_row("local", "dev-1").tenant == "local"
    remote = TestClient(farm.app, client=("10.1.2.3", 40000))
    assert_error(remote.get("/v1/jobs"), 403, "forbidden")


# ---------------------------------------------------------------------------------------------------------------
# Cancel


def test_cancel_in_every_state(farm: Farm, image_png: bytes) -> None:
    asset = upload(farm, image_png)["asset_id"]
    for task_id in ("queued", "running", "done"):
        assert put_job(farm, task_id, job_body(asset)).status_code == 201

    queued = farm.client.post("/v1/jobs/queued/cancel", headers=ALICE)
    assert queued.status_code == 200
    assert queued.json()["state"] == "canceled"
    assert queued.json()["finished_at"] is not None

    row = farm.claim("alice", "running")
    running = farm.client.post("/v1/jobs/running/cancel", headers=ALICE)
    assert running.status_code == 200
    assert running.json()["state"] == "running"  # until the worker stops
    assert farm.job_row("alice", "running").cancel_requested
    assert farm.live.cancel_requested(row.id)
    assert farm.db.leases.cancel_running(row.id, row.attempt) is not None  # the worker honours it
    assert farm.client.get("/v1/jobs/running", headers=ALICE).json()["state"] == "canceled"

    _done, _ = farm.succeed_with_artifacts("alice", "done")
    finished = farm.client.post("/v1/jobs/done/cancel", headers=ALICE)
    assert finished.status_code == 200
    assert finished.json()["state"] == "succeeded"
    assert finished.json()["seq"] == farm.client.get("/v1/jobs/done", headers=ALICE).json()["seq"]
    again = farm.client.post("/v1/jobs/queued/cancel", headers=ALICE)
    assert again.status_code == 200
    assert again.json()["state"] == "canceled"


# ---------------------------------------------------------------------------------------------------------------
# Snapshots


def test_running_snapshot_merges_live_progress(farm: Farm, image_png: bytes) -> None:
    asset = upload(farm, image_png)["asset_id"]
    put_job(farm, "prog", job_body(asset))
    row = farm.claim("alice", "prog")
    before = farm.client.get("/v1/jobs/prog", headers=ALICE).json()
    assert before["state"] == "running"
    assert before["attempt"] == 1
    assert before["worker"] == public_worker_name("gpu-0")  # no host name for tenants
    assert before["started_at"] is not None
    assert before["queue_position"] is None
    farm.progress(row, step=3, total=8, seq=5)
    during = farm.client.get("/v1/jobs/prog", headers=ALICE).json()
    assert (during["step"], during["total_steps"], during["progress"]) == (3, 8, 3 / 8)
    assert during["eta_s"] == 5.0
    assert during["seq"] == row.seq * 2**20 + 5 > before["seq"]
    # Progress of another attempt is not this attempt's.
    stale = farm.progress(row, step=7, total=8, seq=9)
    farm.live.set_progress(type(stale)(**{**stale.__dict__, "attempt": row.attempt + 1}))
    assert farm.client.get("/v1/jobs/prog", headers=ALICE).json()["step"] == 0


@pytest.mark.parametrize("route", ["/v1/jobs/{task}", "/internal/progress", "/sdapi/v1/progress"])
def test_a_job_ending_between_the_row_and_the_live_read_never_reads_as_step_zero(
    farm: Farm, image_png: bytes, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    # A worker commits the end, then clears the live record. A progress read that reads the running row, then
    # finds the record cleared, must not answer "running, progress 0" after a poller has seen 7/8.
    asset = upload(farm, image_png)["asset_id"]
    put_job(farm, "race", job_body(asset))
    row = farm.claim("alice", "race")
    farm.progress(row, step=7, total=8, seq=3)
    live = farm.app.state.services.live
    read_progress = live.get_progress

    def the_job_ends_first(job_id: uuid.UUID | str) -> Any:
        farm.succeed_with_artifacts("alice", "race")
        monkeypatch.setattr(live, "get_progress", read_progress)
        return read_progress(job_id)

    monkeypatch.setattr(live, "get_progress", the_job_ends_first)
    task = "race"
    if route == "/internal/progress":
        answer = farm.client.post(route, json={"id_task": task}, headers=ALICE).json()
        assert (answer["active"], answer["completed"], answer["textinfo"]) == (False, True, "Done")
    elif route == "/sdapi/v1/progress":
        answer = farm.client.get(route, params={"id_task": task}, headers=ALICE).json()
        assert (answer["state"]["sampling_step"], answer["textinfo"]) == (0, "Done")
        assert answer["state"]["job"] == task
    else:
        answer = farm.client.get(route.format(task=task), headers=ALICE).json()
        assert (answer["state"], answer["progress"]) == ("succeeded", 1.0)
        assert answer["step"] == answer["total_steps"] > 0
    assert live.get_progress is read_progress, "the job ended between the two reads"


def test_succeeded_snapshot_lists_downloadable_artifacts(served_farm: tuple[Farm, str], image_png: bytes) -> None:
    farm, base_url = served_farm
    with httpx.Client(base_url=base_url, headers=ALICE) as client:
        asset = client.post("/v1/assets", content=image_png).json()["asset_id"]
        assert client.put("/v1/jobs/art", json=job_body(asset)).status_code == 201
        _row, uploaded = farm.succeed_with_artifacts("alice", "art")
        snapshot = client.get("/v1/jobs/art").json()
    assert snapshot["state"] == "succeeded"
    assert snapshot["progress"] == 1.0
    assert snapshot["finished_at"] is not None
    assert [(a["kind"], a["index"]) for a in snapshot["artifacts"]] == [("result", 0), ("mask", 0)]
    for artifact in snapshot["artifacts"]:
        data = httpx.get(artifact["url"]).raise_for_status().content  # no token: the URL is the credential
        assert __import__("hashlib").sha256(data).hexdigest() == artifact["sha256"]
        assert len(data) == artifact["bytes"]
        assert artifact["seed"] == 7
        assert artifact["infotext"].startswith("a red square")
        assert data in uploaded.values()


def test_queue_position_and_wait_estimate(make_farm: FarmFactory, image_png: bytes) -> None:
    farm = make_farm(tenant_max_priority="alice:10")  # above the default ceiling of 0 (docs/api.md "Priority")
    asset = upload(farm, image_png)["asset_id"]
    for task_id in ("a", "b", "c"):
        put_job(farm, task_id, job_body(asset))
    assert put_job(farm, "urgent", job_body(asset, priority=5)).status_code == 201
    positions = {t: farm.client.get(f"/v1/jobs/{t}", headers=ALICE).json() for t in ("urgent", "a", "b", "c")}
    assert [positions[t]["queue_position"] for t in ("urgent", "a", "b", "c")] == [0, 1, 2, 3]
    assert positions["c"]["eta_s"] is None  # no run time known yet
    farm.succeed_with_artifacts("alice", "urgent")
    farm.app.state.services.estimator.forget()
    c = farm.client.get("/v1/jobs/c", headers=ALICE).json()
    assert c["queue_position"] == 2
    assert c["eta_s"] is not None
    assert c["eta_s"] >= 0


def test_list_pages_cover_every_job_once(farm: Farm, image_png: bytes) -> None:
    asset = upload(farm, image_png)["asset_id"]
    ids = {f"list-{i}" for i in range(7)}
    for task_id in sorted(ids):
        assert put_job(farm, task_id, job_body(asset)).status_code == 201
    farm.client.post("/v1/jobs/list-3/cancel", headers=ALICE)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = farm.client.get("/v1/jobs", params=params, headers=ALICE).json()
        seen += [job["task_id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == 7
    assert set(seen) == ids
    canceled = farm.client.get("/v1/jobs?state=canceled", headers=ALICE).json()
    assert [job["task_id"] for job in canceled["jobs"]] == ["list-3"]
    assert farm.client.get(f"/v1/jobs?batch={uuid.uuid4()}", headers=ALICE).json() == {"jobs": [], "next_cursor": None}


def _documented_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names (`X`, `X | None`, `list[X]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _documented_models(arg)]


def assert_only_documented_fields(model: type[BaseModel], data: Any, path: str = "snapshot") -> None:
    """Every key of `data`, at every level the model describes, is a field of the model: nothing undocumented."""
    assert isinstance(data, dict), f"{path}: {data!r}"
    undocumented = set(data) - set(model.model_fields)
    assert not undocumented, f"{path} has fields {model.__name__} does not document: {sorted(undocumented)}"
    for name, field in model.model_fields.items():
        nested = _documented_models(field.annotation)
        value = data.get(name)
        if not nested or value is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                assert_only_documented_fields(nested[0], item, f"{path}.{name}[{i}]")
        else:
            assert_only_documented_fields(nested[0], value, f"{path}.{name}")


def test_snapshot_matches_the_documented_model(farm: Farm, image_png: bytes) -> None:
    from scheduler.snapshots import JobSnapshot

    put_job(farm, "doc", job_body(b64(image_png)))
    queued = farm.client.get("/v1/jobs/doc", headers=ALICE).json()
    JobSnapshot.model_validate(queued)
    assert_only_documented_fields(JobSnapshot, queued)
    farm.succeed_with_artifacts("alice", "doc")
    succeeded = farm.client.get("/v1/jobs/doc", headers=ALICE).json()
    JobSnapshot.model_validate(succeeded)
    assert_only_documented_fields(JobSnapshot, succeeded)
    assert succeeded["artifacts"]  # the nested models were checked too


def test_an_undocumented_snapshot_field_fails_the_documentation_check() -> None:
    from scheduler.snapshots import JobSnapshot

    snapshot = {name: None for name in JobSnapshot.model_fields}
    assert_only_documented_fields(JobSnapshot, snapshot)
    with pytest.raises(AssertionError, match="does not document: \\['secret'\\]"):
        assert_only_documented_fields(JobSnapshot, {**snapshot, "secret": 1})
    artifact = {"kind": "result", "extra": True}
    with pytest.raises(AssertionError, match=r"snapshot.artifacts\[0\] has fields ArtifactOut"):
        assert_only_documented_fields(JobSnapshot, {**snapshot, "artifacts": [artifact]})


def test_jobs_table_is_not_written_by_a_rejected_request(farm: Farm) -> None:
    put_job(farm, "never", {"init_images": []})
    assert set(farm.db.stats.counts_by_state().values()) == {0}  # no job of any tenant, in any state
