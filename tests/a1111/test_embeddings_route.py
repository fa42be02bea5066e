"""`GET /sdapi/v1/embeddings` and `POST /sdapi/v1/refresh-embeddings` on an embedded farm (SQLite, local storage)
whose RENDERFARM_MODELS_DIR holds embeddings of two widths and models of known widths (proposal P20)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.embedded_scheduler import embedded_scheduler
from tests.embedding_files import vectors, webui_dict, write_safetensors, write_torch

TOKEN = "embeddings-alice-token-0123456789"
AUTH = ("alice", TOKEN)
TINY = 32  # the tiny models' text-encoder width


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    embeddings = models / "embeddings"
    write_torch(embeddings / "tiny-style.pt", webui_dict(vectors(2, TINY)))
    write_safetensors(embeddings / "sub" / "sd1-style.safetensors", {"emb_params": vectors(3, 768)})
    write_torch(embeddings / "too-long.pt", webui_dict(vectors(76, TINY)))
    (embeddings / "broken.pt").write_bytes(b"not a torch file")
    # An SD 1.x checkpoint: its text encoder's token embedding, under the reference's key, tells the width.
    write_safetensors(
        models / "sd1.safetensors",
        {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": vectors(4, 768)},
    )
    # A checkpoint kept elsewhere, linked into the folder.
    elsewhere = write_safetensors(
        tmp_path / "other-disk" / "real.safetensors",
        {"cond_stage_model.model.token_embedding.weight": vectors(4, 1024)},
    )
    (models / "linked.safetensors").symlink_to(elsewhere)
    (models / "sd2-folder" / "text_encoder").mkdir(parents=True)
    (models / "sd2-folder" / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 1024}))
    return models


@pytest.fixture
def client(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    with embedded_scheduler(tmp_path, models_dir, TOKEN) as test_client:
        yield test_client


def entry(shape: int, vectors: int, *, webui: bool) -> dict[str, object]:
    if webui:
        return {"step": 500, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "v1-5-pruned", "shape": shape,
                "vectors": vectors}  # fmt: skip
    return {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": shape, "vectors": vectors}


def test_the_listing_is_per_model_family(client: TestClient, models_dir: Path) -> None:
    tiny = client.get("/sdapi/v1/embeddings", auth=AUTH)
    assert tiny.status_code == 200, tiny.text
    body = tiny.json()
    assert body["loaded"] == {"tiny-style": entry(TINY, 2, webui=True)}
    assert body["skipped"] == {"sd1-style": entry(768, 3, webui=False), "too-long": entry(TINY, 76, webui=True)}
    assert "76 vectors" in body["errors"]["too-long"]
    assert "broken.pt" in body["errors"]

    sd1 = client.get("/sdapi/v1/embeddings", params={"model": "sd1"}, auth=AUTH).json()
    assert sd1["loaded"] == {"sd1-style": entry(768, 3, webui=False)}
    assert set(sd1["skipped"]) == {"tiny-style", "too-long"}
    for sd2_model in ("sd2-folder", "linked"):
        sd2 = client.get("/sdapi/v1/embeddings", params={"model": sd2_model}, auth=AUTH).json()
        assert sd2["loaded"] == {}, sd2_model
        assert set(sd2["skipped"]) == {"tiny-style", "too-long", "sd1-style"}, sd2_model

    # The tenant's checkpoint option (a webui title with its hash) chooses the model when no ?model= is given.
    short_hash = hashlib.sha256((models_dir / "sd1.safetensors").read_bytes()).hexdigest()[:10]
    options = {"sd_model_checkpoint": f"sd1.safetensors [{short_hash}]"}
    assert client.post("/sdapi/v1/options", json=options, auth=AUTH).status_code == 200
    assert set(client.get("/sdapi/v1/embeddings", auth=AUTH).json()["loaded"]) == {"sd1-style"}


def test_an_unknown_model_width_is_a_422_naming_model(client: TestClient) -> None:
    for name in ("no-such-model", "../outside", "someone/unknown-hub-model"):
        response = client.get("/sdapi/v1/embeddings", params={"model": name}, auth=AUTH)
        assert response.status_code == 422, name
        assert response.json()["error"]["field"] == "model"


def test_changes_are_seen_and_refresh_returns_null(client: TestClient, models_dir: Path) -> None:
    assert "deep" not in client.get("/sdapi/v1/embeddings", auth=AUTH).json()["loaded"]
    write_torch(models_dir / "embeddings" / "a" / "b" / "deep.pt", webui_dict(vectors(1, TINY)))
    assert "deep" in client.get("/sdapi/v1/embeddings", auth=AUTH).json()["loaded"]
    refreshed = client.post("/sdapi/v1/refresh-embeddings", auth=AUTH)
    assert refreshed.status_code == 200
    assert refreshed.json() is None


def test_the_routes_need_auth_and_the_folder_is_no_model(client: TestClient) -> None:
    assert client.get("/sdapi/v1/embeddings").status_code == 401
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 401
    names = [model["model_name"] for model in client.get("/sdapi/v1/sd-models", auth=AUTH).json()]
    assert "embeddings" not in names
    assert {"sd1", "sd2-folder"} <= set(names)
