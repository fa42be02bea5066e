"""The model files of a webui-shaped RENDERFARM_MODELS_DIR through the API (docs/engine.md "Model files";
proposals P6, P15, P18, P19, P20): the A1111 listing and refresh routes with the reference's fields (hashes
checked with hashlib), the options, and the 422s naming the field for unknown model, VAE and LoRA names at
submission on `POST /v1/jobs` and A1111's img2img. An embedded scheduler (SQLite, local storage), no worker."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from scheduler.model_checks import lora_problems
from shared.db import Database
from shared.models import TINY_NAMES, ModelFiles
from shared.models.tiny import tiny_sha256
from shared.queueing import queue_name
from tests.api.conftest import png_bytes
from tests.embedded_scheduler import embedded_scheduler
from tests.embedding_files import vectors, webui_dict, write_torch
from tests.model_folders import STYLE_METADATA, WebuiModels, build_webui_models
from worker.engine.models.tiny import build_tiny_model

TOKEN = "models-alice-token-0123456789"
AUTH = ("alice", TOKEN)
IMAGE = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", kind="img2img")


@pytest.fixture
def webui(tmp_path: Path, tiny_folder: Path) -> WebuiModels:
    return build_webui_models(tmp_path, tiny_folder)


@pytest.fixture
def client(tmp_path: Path, webui: WebuiModels) -> Iterator[TestClient]:
    with embedded_scheduler(tmp_path, webui.root, TOKEN) as test_client:
        yield test_client


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def title(path: Path, name: str) -> str:
    return f"{name} [{sha(path)[:10]}]"


def error_of(response: Any) -> tuple[str, str]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    return error["field"], error["code"]


# -- listings --------------------------------------------------------------------------------------------------


def test_sd_models_lists_every_checkpoint_with_its_hashes(client: TestClient, webui: WebuiModels) -> None:
    response = client.get("/sdapi/v1/sd-models", auth=AUTH)
    assert response.status_code == 200
    items = {item["title"].rsplit(" [", 1)[0]: item for item in response.json()}
    assert list(items) == [*TINY_NAMES, "sub/m2.safetensors", "sub/m10.ckpt", "x.safetensors"]
    assert items["x.safetensors"] == {
        "title": title(webui.checkpoint, "x.safetensors"),
        "model_name": "x",
        "hash": sha(webui.checkpoint)[:10],
        "sha256": sha(webui.checkpoint),
        "filename": str(webui.checkpoint),
        "config": str(webui.checkpoint.with_suffix(".yaml")),
    }
    m10 = webui.sub_checkpoints[1]
    assert items["sub/m10.ckpt"]["sha256"] == sha(m10)
    assert items["sub/m10.ckpt"]["model_name"] == "sub_m10"
    assert items["tiny"]["sha256"] == tiny_sha256("tiny")  # P18: never null
    assert all(item["hash"] and item["sha256"] for item in items.values())


def test_refresh_checkpoints_sees_a_new_file(client: TestClient, webui: WebuiModels) -> None:
    before = [item["title"] for item in client.get("/sdapi/v1/sd-models", auth=AUTH).json()]
    new = webui.root / "Stable-diffusion" / "new.safetensors"
    save_file({"cond_stage_model.transformer.a": torch.zeros(1)}, str(new))
    assert [item["title"] for item in client.get("/sdapi/v1/sd-models", auth=AUTH).json()] == before  # kept
    refreshed = client.post("/sdapi/v1/refresh-checkpoints", auth=AUTH)
    assert refreshed.status_code == 200
    assert refreshed.json() is None
    after = [item["title"] for item in client.get("/sdapi/v1/sd-models", auth=AUTH).json()]
    assert title(new, "new.safetensors") in after
    assert len(after) == len(before) + 1


def test_sd_vae_loras_and_hypernetworks(client: TestClient, webui: WebuiModels) -> None:
    vaes = client.get("/sdapi/v1/sd-vae", auth=AUTH).json()
    assert vaes == [
        {"model_name": "other.pt", "filename": str(webui.deep_vae)},
        {"model_name": "vae-ft-mse.safetensors", "filename": str(webui.vae)},
        {"model_name": "x.vae.safetensors", "filename": str(webui.beside_vae)},
    ]
    loras = {item["name"]: item for item in client.get("/sdapi/v1/loras", auth=AUTH).json()}
    assert set(loras) == {"old", "style", "nothing", "xl_only"}
    assert loras["style"] == {
        "name": "style",
        "alias": "styleAlias",
        "path": str(webui.lora),
        "metadata": {**STYLE_METADATA, "ss_tag_frequency": {"set": {"red": 3}}},
    }
    assert loras["old"]["metadata"] == {}
    assert client.get("/sdapi/v1/hypernetworks", auth=AUTH).json() == [
        {"name": "anime", "path": str(webui.hypernetwork)}
    ]
    # Refreshes return null and pick up new files.
    extra_vae = webui.root / "VAE" / "added.safetensors"
    save_file({"a": torch.zeros(1)}, str(extra_vae))
    assert client.post("/sdapi/v1/refresh-vae", auth=AUTH).json() is None
    assert "added.safetensors" in [v["model_name"] for v in client.get("/sdapi/v1/sd-vae", auth=AUTH).json()]
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(1, 1)}, str(webui.root / "Lora" / "added.safetensors"))
    assert client.post("/sdapi/v1/refresh-loras", auth=AUTH).json() is None
    assert "added" in [item["name"] for item in client.get("/sdapi/v1/loras", auth=AUTH).json()]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/sdapi/v1/sd-models"),
        ("POST", "/sdapi/v1/refresh-checkpoints"),
        ("GET", "/sdapi/v1/sd-vae"),
        ("POST", "/sdapi/v1/refresh-vae"),
        ("GET", "/sdapi/v1/loras"),
        ("POST", "/sdapi/v1/refresh-loras"),
        ("GET", "/sdapi/v1/hypernetworks"),
    ],
)
def test_the_routes_need_a_token(client: TestClient, method: str, path: str) -> None:
    assert client.request(method, path).status_code == 401  # P20: the Lora routes too
    assert client.request(method, path, auth=AUTH).status_code == 200


# -- options ---------------------------------------------------------------------------------------------------


def test_options_answer_titles_and_refuse_unknown_names(client: TestClient, webui: WebuiModels) -> None:
    options = client.get("/sdapi/v1/options", auth=AUTH).json()
    assert options["sd_model_checkpoint"] == f"tiny [{tiny_sha256('tiny')[:10]}]"  # the default model
    assert options["sd_checkpoint_hash"] == tiny_sha256("tiny")

    for alias in ("x", sha(webui.checkpoint)[:10], title(webui.checkpoint, "x.safetensors")):
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": alias}, auth=AUTH).status_code == 200
        options = client.get("/sdapi/v1/options", auth=AUTH).json()
        assert options["sd_model_checkpoint"] == title(webui.checkpoint, "x.safetensors")
        assert options["sd_checkpoint_hash"] == sha(webui.checkpoint)

    unknown = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors"}, auth=AUTH)
    assert error_of(unknown) == ("sd_model_checkpoint", "unknown_model")
    assert client.post("/sdapi/v1/options", json={"sd_vae": "vae-ft-mse.safetensors"}, auth=AUTH).status_code == 200
    assert client.get("/sdapi/v1/options", auth=AUTH).json()["sd_vae"] == "vae-ft-mse.safetensors"
    assert error_of(client.post("/sdapi/v1/options", json={"sd_vae": "nope.pt"}, auth=AUTH)) == (
        "sd_vae",
        "unknown_vae",
    )


# -- submission ------------------------------------------------------------------------------------------------


def submit(client: TestClient, **fields: Any) -> Any:
    body = {"init_images": [IMAGE], "prompt": "a red square", "steps": 4, "width": 64, "height": 64, **fields}
    return client.post("/v1/jobs", json=body, auth=AUTH)


def test_jobs_store_the_canonical_model_name(client: TestClient, webui: WebuiModels, tmp_path: Path) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path / 'renderfarm.db'}")
    for alias in (title(webui.checkpoint, "x.safetensors"), "x", sha(webui.checkpoint)):
        response = submit(client, model=alias)
        assert response.status_code == 201, response.text
        row = db.jobs.get("alice", response.json()["task_id"])
        assert (row.model, row.request["model"]) == ("x.safetensors", "x.safetensors"), alias
        assert row.queue == queue_name("x.safetensors", batch=False)
    through_override = submit(client, override_settings={"sd_model_checkpoint": "sub_m2"})
    assert through_override.status_code == 201, through_override.text
    row = db.jobs.get("alice", through_override.json()["task_id"])
    assert row.model == "sub/m2.safetensors"
    assert row.request["override_settings"]["sd_model_checkpoint"] == "sub/m2.safetensors"
    assert row.queue == "rf.m2-safetensors.interactive"  # a sane queue name for a name with a folder
    db.close()


def test_unknown_names_are_422s_naming_the_field(client: TestClient) -> None:
    assert error_of(submit(client, model="nope.safetensors")) == ("model", "unknown_model")
    assert error_of(submit(client, override_settings={"sd_model_checkpoint": "x [0123456789]"})) == (
        "override_settings.sd_model_checkpoint",
        "unknown_model",
    )
    assert error_of(submit(client, override_settings={"sd_vae": "nope.safetensors"})) == (
        "override_settings.sd_vae",
        "unknown_vae",
    )
    assert submit(client, override_settings={"sd_vae": "vae-ft-mse.safetensors"}).status_code == 201
    assert submit(client, override_settings={"sd_vae": "None"}).status_code == 201
    field, _ = error_of(submit(client, prompt="a cat <lora:nope:0.5>"))
    assert field == "prompt"


def test_the_a1111_route_names_the_override(client: TestClient) -> None:
    body = {"init_images": [IMAGE], "prompt": "p", "steps": 2, "width": 64, "height": 64}
    unknown_model = {**body, "override_settings": {"sd_model_checkpoint": "nope.safetensors [0123456789]"}}
    assert error_of(client.post("/sdapi/v1/img2img", json=unknown_model, auth=AUTH)) == (
        "override_settings.sd_model_checkpoint",
        "unknown_model",
    )
    stale_hash = {**body, "override_settings": {"sd_model_checkpoint": "x.safetensors [0123456789]"}}
    assert error_of(client.post("/sdapi/v1/img2img", json=stale_hash, auth=AUTH)) == (
        "override_settings.sd_model_checkpoint",
        "unknown_model",
    )
    unknown_vae = {**body, "override_settings": {"sd_vae": "nope.pt"}}
    assert error_of(client.post("/sdapi/v1/img2img", json=unknown_vae, auth=AUTH)) == (
        "override_settings.sd_vae",
        "unknown_vae",
    )
    field, _ = error_of(client.post("/sdapi/v1/img2img", json={**body, "prompt": "<lyco:nope>"}, auth=AUTH))
    assert field == "prompt"


def test_lora_names_and_architectures_are_checked(webui: WebuiModels) -> None:
    # Called directly: the prompt checks (shared/prompts/checks.py) still refuse every LoRA tag before admission.
    files = ModelFiles(webui.root, None)
    x = files.resolve_checkpoint("x.safetensors")
    assert lora_problems(files, "a <lora:style:0.7> and <lyco:styleAlias> and <lora:old>", x, "prompt") == []
    problems = lora_problems(files, "<lora:nope> <lora:xl_only:1> <lyco:nothing> <lora:Style>", x, "prompt")
    assert [(p.field, p.code) for p in problems] == [
        ("prompt", "unknown_lora"),
        ("prompt", "lora_matches_no_layer"),
        ("prompt", "lora_matches_no_layer"),
        ("prompt", "unknown_lora"),  # case-sensitive
    ]
    assert "SDXL" in problems[1].message
    assert lora_problems(files, "<lora:xl_only>", files.resolve_checkpoint("tiny-xl"), "prompt") == []
    raw = webui.lora.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    style = files.find_lora("styleAlias")
    assert style is not None
    assert files.lora_short_hash(style) == hashlib.sha256(raw[8 + size :]).hexdigest()[:12]


def test_embeddings_beside_the_webui_models_folder(client: TestClient, webui: WebuiModels) -> None:
    # The webui keeps embeddings in <data>/embeddings, beside models/; a webui checkpoint names the width.
    write_torch(webui.root.parent / "embeddings" / "tiny-style.pt", webui_dict(vectors(2, 32)))
    write_torch(webui.root.parent / "embeddings" / "sd1-style.pt", webui_dict(vectors(1, 768)))
    for model in ("x.safetensors", title(webui.checkpoint, "x.safetensors")):
        listing = client.get("/sdapi/v1/embeddings", params={"model": model}, auth=AUTH).json()
        assert set(listing["loaded"]) == {"tiny-style"}, model
    sub = client.get("/sdapi/v1/embeddings", params={"model": "sub/m2.safetensors"}, auth=AUTH).json()
    assert set(sub["loaded"]) == {"sd1-style"}


def test_a_hub_id_default_model_is_listed_without_a_hash(tmp_path: Path, webui: WebuiModels) -> None:
    with embedded_scheduler(tmp_path, webui.root, TOKEN, database="hub.db", model="org/some-model") as hub:
        first = hub.get("/sdapi/v1/sd-models", auth=AUTH).json()[0]
        assert first == {"title": "org/some-model", "model_name": "org/some-model", "hash": None, "sha256": None,
                         "filename": "org/some-model", "config": None}  # fmt: skip
        assert submit(hub, model="org/some-model").status_code == 201  # the default model is always known
        assert error_of(submit(hub, model="org/other-model")) == ("model", "unknown_model")


def test_a_batch_child_with_an_unknown_model_names_its_index(client: TestClient) -> None:
    job = {"init_images": [IMAGE], "prompt": "p", "steps": 2, "width": 64, "height": 64}
    body = {"jobs": [{**job, "model": "x"}, {**job, "override_settings": {"sd_vae": "nope.pt"}}]}
    assert error_of(client.post("/v1/batches", json=body, auth=AUTH)) == (
        "jobs.1.override_settings.sd_vae",
        "unknown_vae",
    )
