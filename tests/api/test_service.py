"""The app as a service: probes, typed errors for routes and bugs, the OpenAPI document, the schema check, signed
downloads, asset uploads."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from scheduler.app import create_app
from shared.config import Settings
from shared.errors import ConfigError
from shared.live import RedisLiveStatus
from shared.storage import LocalFolderStorage
from tests.api.conftest import ALICE, LOOPBACK_CLIENT, Farm, FarmFactory, job_body, png_bytes, upload
from tests.clock import ManualClock
from tests.processes import free_loopback_port
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------------------------------------
# Probes


def test_healthz_and_readyz(farm: Farm) -> None:
    assert farm.client.get("/healthz").json() == {"status": "ok"}
    ready = farm.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "live_status": "ok", "storage": "ok"}


def test_readyz_is_503_naming_an_unreachable_live_status(farm: Farm) -> None:
    closed = RedisLiveStatus(f"redis://127.0.0.1:{free_loopback_port()}/0")
    app = create_app(farm.settings, live=closed, storage=farm.storage, db=farm.db, start_background=False)
    try:
        with TestClient(app, client=LOOPBACK_CLIENT) as client:
            response = client.get("/readyz")
            assert response.status_code == 503
            body = response.json()
            assert body["error"]["type"] == "unavailable"
            assert body["error"]["failing"] == ["live_status"]
            assert body["error"]["field"] == "live_status"
            assert body["checks"]["database"] == "ok"
            assert body["checks"]["live_status"] == "unreachable"
            assert response.headers["Retry-After"]
            # The API still answers from the database when live status is down.
            assert client.get("/v1/jobs", headers=ALICE).status_code == 200
    finally:
        closed.close()


# ---------------------------------------------------------------------------------------------------------------
# Typed errors


def test_unknown_routes_and_methods_are_typed(farm: Farm) -> None:
    missing = farm.client.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    wrong = farm.client.delete("/v1/jobs", headers=ALICE)
    assert wrong.status_code == 405
    assert wrong.json()["error"]["type"] == "method_not_allowed"
    assert wrong.headers["Allow"]  # Starlette names the methods of the first route that matched the path


def test_a_bug_is_a_typed_500_without_traceback(farm: Farm) -> None:
    def broken() -> None:
        raise RuntimeError("secret internals at /srv/app.py line 3")

    farm.app.add_api_route("/boom", broken)
    response = farm.client.get("/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "internal"
    assert "reference" in error["message"]
    assert "secret" not in response.text
    assert "Traceback" not in response.text


def test_openapi_document_describes_the_api(farm: Farm) -> None:
    document = farm.client.get("/openapi.json").json()
    for path in ("/v1/jobs", "/v1/jobs/{task_id}", "/v1/jobs/{task_id}/cancel", "/v1/jobs/{task_id}/events"):
        assert path in document["paths"]
    assert {"/v1/assets", "/readyz", "/healthz"} <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert "init_images" in schemas["Img2ImgJob"]["properties"]
    assert "seq" in schemas["JobSnapshot"]["properties"]
    body = document["paths"]["/v1/jobs/{task_id}"]["put"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/Img2ImgJob"


def test_start_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data").check()
    app = create_app(settings, start_background=False)  # builds its own parts from the settings
    with pytest.raises(ConfigError, match="renderfarm db upgrade"), TestClient(app, client=LOOPBACK_CLIENT):
        pass


def test_default_parts_from_settings(tmp_path: Path) -> None:
    from shared.db import upgrade

    settings = Settings(_env_file=None, data_dir=tmp_path / "data").check()
    upgrade(settings.resolved_database_url)
    app = create_app(settings, start_background=False)
    with TestClient(app, client=LOOPBACK_CLIENT) as client:
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/assets", content=png_bytes()).status_code == 201  # dev mode: tenant local


# ---------------------------------------------------------------------------------------------------------------
# Assets


def test_asset_upload_raw_and_multipart(farm: Farm) -> None:
    image = Image.new("RGB", (80, 48), (1, 2, 3))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    raw = farm.client.post("/v1/assets", content=jpeg, headers={**ALICE, "Content-Type": "image/jpeg"})
    assert raw.status_code == 201
    assert raw.json() == {
        "asset_id": f"asset:{hashlib.sha256(jpeg).hexdigest()}",
        "sha256": hashlib.sha256(jpeg).hexdigest(),
        "width": 80,
        "height": 48,
        "mime": "image/jpeg",
        "bytes": len(jpeg),
    }
    again = farm.client.post("/v1/assets", files={"file": ("pic.jpg", jpeg, "image/jpeg")}, headers=ALICE)
    assert again.status_code == 200
    assert again.json() == raw.json()
    png = png_bytes(32, 40)
    multipart = farm.client.post(
        "/v1/assets", data={"note": "x"}, files={"file": ("pic.png", png, "image/png")}, headers=ALICE
    )
    assert multipart.status_code == 201
    assert multipart.json()["sha256"] == hashlib.sha256(png).hexdigest()
    key = f"alice/~assets/{hashlib.sha256(png).hexdigest()}"
    assert farm.storage.get(key) == png


def test_asset_upload_refuses_what_is_not_an_image(farm: Farm) -> None:
    bad = farm.client.post("/v1/assets", content=b"hello, not an image", headers=ALICE)
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "file"
    empty = farm.client.post("/v1/assets", content=b"", headers=ALICE)
    assert empty.status_code == 422
    assert farm.client.post("/v1/assets", content=png_bytes()).status_code == 401


# ---------------------------------------------------------------------------------------------------------------
# Signed downloads of the local folder


def test_file_downloads_check_the_signature(make_farm: FarmFactory, farm_kind: str) -> None:
    clock = ManualClock()
    farm = make_farm(storage_clock=clock)
    data = png_bytes()
    key = "alice/task(img2img-X1)/1/result-0.png"
    farm.storage.put(key, data, "image/png")
    if farm_kind == "cluster":
        # S3 downloads are presigned S3 URLs: the API serves no files then.
        assert farm.client.get(f"/v1/files/{key}?expires=1&sig=x").status_code == 404
        return
    assert isinstance(farm.storage, LocalFolderStorage)
    url = urlsplit(farm.storage.download_url(key, 600))
    good = farm.client.get(f"{url.path}?{url.query}")
    assert good.status_code == 200
    assert good.content == data
    assert good.headers["content-type"] == "image/png"
    query = {name: values[0] for name, values in parse_qs(url.query).items()}
    tampered = farm.client.get(url.path, params={**query, "sig": "0" * 64})
    assert tampered.status_code == 404
    assert tampered.json()["error"]["type"] == "not_found"
    longer = farm.client.get(url.path, params={**query, "expires": str(int(query["expires"]) + 1)})
    assert longer.status_code == 404
    assert farm.client.get(url.path).status_code == 404  # no signature
    other = farm.client.get(url.path.replace("result-0", "mask-0"), params=query)
    assert other.status_code == 404
    expired_url = urlsplit(farm.storage.download_url(key, 1))
    clock.advance(2.1)
    assert farm.client.get(f"{expired_url.path}?{expired_url.query}").status_code == 404


def test_assets_are_per_tenant_content_addressed(farm: Farm) -> None:
    data = png_bytes(color=(9, 9, 9))
    alice = upload(farm, data)
    bob = farm.client.post("/v1/assets", content=data, headers={"Authorization": "Bearer bob-token-0123456789abcdefgh"})
    assert bob.status_code == 201  # new for bob, though alice has the same bytes
    assert bob.json()["asset_id"] == alice["asset_id"]


def test_background_dispatcher_publishes_new_jobs(farm: Farm) -> None:
    app = create_app(farm.settings, live=farm.live, storage=farm.storage, db=farm.db)
    with TestClient(app, client=LOOPBACK_CLIENT) as client:
        assert app.state.services.dispatcher is not None
        asset = client.post("/v1/assets", content=png_bytes(), headers=ALICE).json()["asset_id"]
        assert client.put("/v1/jobs/bg-1", json=job_body(asset), headers=ALICE).status_code == 201
        wait_until(lambda: farm.job_row("alice", "bg-1").dispatched_at, 10, "the dispatcher to publish the job")
    assert app.state.services.dispatcher is None  # stopped with the app
