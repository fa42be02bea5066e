"""`samples_format` end to end: the worker stores each result in the job's format (key, content type, bytes,
infotext), the result URLs name it, and the A1111 answer is the stored file itself."""

from __future__ import annotations

import base64
import io
import json
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from PIL import Image

from renderfarm._job import Artifact
from shared.output_formats import read_infotext
from tests.a1111.conftest import LiveFarm, png_b64, square_mask_b64


@pytest.mark.parametrize(
    ("samples_format", "pillow", "mime", "extension"),
    [
        ("png", "PNG", "image/png", ".png"),
        ("jpeg", "JPEG", "image/jpeg", ".jpg"),
        ("webp", "WEBP", "image/webp", ".webp"),
    ],
)
def test_results_are_stored_in_the_samples_format(
    farm: LiveFarm, samples_format: str, pillow: str, mime: str, extension: str
) -> None:
    task_id = f"task(img2img-FORMAT{samples_format.upper()})"
    job = {
        "init_images": [png_b64()],
        "mask": square_mask_b64(),
        "prompt": "a cät",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 3,
        "force_task_id": task_id,
        "override_settings": {"samples_format": samples_format},
    }
    with farm.client() as client:
        answer = client.post("/sdapi/v1/img2img", json=job).json()
        info = json.loads(answer["info"])
        assert info["warnings"] == []  # honoured: nothing to warn about
        snapshot = client.get(f"/v1/jobs/{task_id}").json()
    by_kind = {artifact["kind"]: artifact for artifact in snapshot["artifacts"]}
    result = by_kind["result"]
    assert PurePosixPath(unquote(urlsplit(result["url"]).path)).suffix == extension
    assert Artifact.from_dict(result).filename == f"result-0{extension}"
    download = httpx.get(result["url"], timeout=30)
    assert download.status_code == 200
    assert download.headers["content-type"] == mime
    with Image.open(io.BytesIO(download.content)) as picture:
        assert picture.format == pillow
        assert picture.size == (64, 64)
    assert read_infotext(download.content) == info["infotexts"][0] == result["infotext"]
    # The answer is the stored file, not a second lossy encoding of it.
    assert base64.b64decode(answer["images"][0]) == download.content
    # Masks and overlays stay lossless PNG.
    assert by_kind["mask"]["url"].split("?")[0].endswith(".png")
    [stored] = [a for a in farm.db.jobs.artifacts_of(farm.db.jobs.get("alice", task_id).id) if a.kind == "result"]
    assert stored.storage_key.endswith(extension)
    assert farm.storage.head(stored.storage_key).content_type == mime


def test_an_unsupported_format_is_a_422_naming_it(farm: LiveFarm) -> None:
    job = {
        "init_images": [png_b64()],
        "steps": 2,
        "width": 64,
        "height": 64,
        "override_settings": {"samples_format": "gif"},
    }
    with farm.client() as client:
        response = client.post("/sdapi/v1/img2img", json=job)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "override_settings.samples_format"
