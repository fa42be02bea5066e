"""Secret hygiene and tenant fairness at the API (issue 15, finding 8): `/metrics` behind a token or loopback, API
tokens kept only as digests, per-tenant priority ceilings, and error bodies that name no server, password, bucket or
object key of the operator's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scheduler.app import create_app
from shared.config import Settings
from shared.db import upgrade
from shared.errors import StorageUnavailable
from shared.storage import open_storage
from tests.api.conftest import (
    ALICE,
    ALICE_TOKEN,
    BOB,
    BOB_TOKEN,
    LOOPBACK_CLIENT,
    TOKENS,
    FarmFactory,
    job_body,
    put_job,
    upload,
)

METRICS_TOKEN = "metrics-scrape-token-0123456789"
REMOTE_CLIENT = ("10.1.2.3", 40000)


def test_metrics_without_a_metrics_token_answer_loopback_clients_only(make_farm: FarmFactory) -> None:
    farm = make_farm()
    assert farm.client.get("/metrics").status_code == 200
    remote = TestClient(farm.app, client=REMOTE_CLIENT).get("/metrics", headers=ALICE)
    # The 404 of an unknown route: nothing tells a remote client that there is something here.
    assert remote.status_code == 404
    assert remote.json() == TestClient(farm.app, client=REMOTE_CLIENT).get("/no-such-route").json()


def test_metrics_with_a_metrics_token_need_it_from_everywhere(make_farm: FarmFactory) -> None:
    farm = make_farm(metrics_token=METRICS_TOKEN)
    for client in (farm.client, TestClient(farm.app, client=REMOTE_CLIENT)):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=ALICE).status_code == 401  # an API token is no metrics token
        wrong = client.get("/metrics", headers={"Authorization": "Bearer metrics-scrape-token-wrong-0000"})
        assert wrong.status_code == 401
        assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
        right = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert right.status_code == 200
        assert "renderfarm_jobs" in right.text


def test_after_start_up_the_app_holds_no_token_only_digests(make_farm: FarmFactory) -> None:
    farm = make_farm(metrics_token=METRICS_TOKEN)
    state = farm.app.state
    settings = state.services.settings
    assert (settings.api_tokens, settings.api_tokens_file, settings.metrics_token) == (None, None, None)
    everything = repr(settings) + repr(vars(state.tokens)) + repr(settings.model_dump())
    for secret in (ALICE_TOKEN, BOB_TOKEN, METRICS_TOKEN):
        assert secret not in everything
    # ... and still knows every tenant.
    assert farm.client.get("/v1/jobs", headers=BOB).status_code == 200


def test_a_priority_over_the_tenants_ceiling_is_422_naming_priority(make_farm: FarmFactory) -> None:
    farm = make_farm(tenant_max_priority="bob:50")
    asset = upload(farm, _png())["asset_id"]
    over = put_job(farm, "urgent", job_body(asset, priority=1))
    assert over.status_code == 422
    error = over.json()["error"]
    assert (error["field"], error["code"]) == ("priority", "priority_over_ceiling")
    assert put_job(farm, "calm", job_body(asset, priority=0)).status_code == 201
    assert put_job(farm, "lower", job_body(asset, priority=-5)).status_code == 201  # stepping back is always fine
    # Bob's token allows up to 50.
    bob_asset = upload(farm, _png(), headers=BOB)["asset_id"]
    assert put_job(farm, "urgent", job_body(bob_asset, priority=50), headers=BOB).status_code == 201
    assert put_job(farm, "too-urgent", job_body(bob_asset, priority=51), headers=BOB).status_code == 422
    # A batch child is held to the same ceiling, named by its place in the batch.
    batch = farm.client.post(
        "/v1/batches", json={"jobs": [job_body(asset), job_body(asset, priority=3)]}, headers=ALICE
    )
    assert batch.status_code == 422
    assert batch.json()["error"]["field"] == "jobs.1.priority"


def test_the_default_ceiling_is_a_setting(make_farm: FarmFactory) -> None:
    farm = make_farm(max_priority=10)
    asset = upload(farm, _png())["asset_id"]
    assert put_job(farm, "ten", job_body(asset, priority=10)).status_code == 201
    assert put_job(farm, "eleven", job_body(asset, priority=11)).status_code == 422


def test_development_mode_has_no_priority_ceiling(tmp_path: Path) -> None:
    client = _app_client(tmp_path, api_tokens=None)
    asset = client.post("/v1/assets", content=_png(), headers={"Content-Type": "image/png"}).json()["asset_id"]
    assert client.put("/v1/jobs/urgent", json=job_body(asset, priority=900)).status_code == 201


def test_a_database_outage_answers_503_naming_no_server_and_no_password(tmp_path: Path) -> None:
    # Port 1 on loopback refuses at once; the password is in the URL as operators write it.
    url = "postgresql+psycopg://renderfarm:Db-Pa55word-e2e@127.0.0.1:1/renderfarm"
    client = _app_client(tmp_path, database_url=url)
    response = client.get("/v1/jobs", headers=ALICE)
    assert response.status_code == 503
    body = response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert "database" in response.json()["error"]["message"]  # still says what is wrong
    for leak in ("Db-Pa55word-e2e", "127.0.0.1", "port 1", ":1/", "renderfarm:"):
        assert leak not in body, (leak, body)


def test_a_storage_outage_names_no_bucket_key_or_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOPERATORKEY00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret-access-key-0001")
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        storage_url="s3://operators-private-bucket/farm",
        s3_endpoint_url="http://127.0.0.1:1",
    )
    storage = open_storage(settings)
    try:
        storage.exists("alice/inputs/some-object-key.png")
    except StorageUnavailable as exc:
        message = exc.message
    else:
        raise AssertionError("an unreachable S3 endpoint must raise StorageUnavailable")
    finally:
        storage.close()
    assert "object storage" in message
    for leak in ("operators-private-bucket", "some-object-key", "127.0.0.1", "http://", "AKIAOPERATORKEY"):
        assert leak not in message, (leak, message)


def _png() -> bytes:
    from tests.api.conftest import png_bytes

    return png_bytes()


def _app_client(tmp_path: Path, **overrides: Any) -> TestClient:
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "api_tokens": TOKENS}
    values.update(overrides)
    if "database_url" not in values:
        values["database_url"] = f"sqlite:///{tmp_path / 'renderfarm.db'}"
        upgrade(values["database_url"])
    app = create_app(Settings(_env_file=None, **values).check(), start_background=False)
    return TestClient(app, client=LOOPBACK_CLIENT)
