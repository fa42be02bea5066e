"""A render through the embedded farm (`renderfarm up`'s machinery: API, in-process worker, SQLite) whose
RENDERFARM_MODELS_DIR is a webui `models/` folder, selecting the checkpoint `Stable-diffusion/x.safetensors` (the
tiny model exported as one LDM file) by its title `x.safetensors [shorthash]` as A1111 clients do (P19); the
infotext's `Model hash` is that short hash."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx
import pytest

from renderfarm.embedded import running_farm
from shared.config import Settings
from tests.api.conftest import png_bytes
from tests.model_folders import build_webui_models
from worker.engine.models.tiny import build_tiny_model

TOKEN = "models-render-token-0123456789"
AUTH = httpx.BasicAuth("alice", TOKEN)


def test_a_render_selects_the_checkpoint_by_its_title(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = build_tiny_model(tmp_path / "tiny", kind="img2img")
    webui = build_webui_models(tmp_path, tiny)  # the checkpoint carries its configs: it loads with no hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        api_tokens=f"alice:{TOKEN}",
        models_dir=webui.root,
        model="x.safetensors",  # the embedded worker serves the default model's queue
    )
    short_hash = hashlib.sha256(webui.checkpoint.read_bytes()).hexdigest()[:10]
    body = {
        "init_images": [base64.b64encode(png_bytes()).decode()],
        "prompt": "a red square",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 1,
        "denoising_strength": 0.5,
        # "None": the folder's `x.vae.safetensors` beside it (a listing fixture, not a working VAE) would be the
        # checkpoint's Automatic VAE, as in the webui.
        "override_settings": {"sd_model_checkpoint": f"x.safetensors [{short_hash}]", "sd_vae": "None"},
    }
    with running_farm(settings, warm=False) as farm, httpx.Client(base_url=farm.url, timeout=120) as client:
        response = client.post("/sdapi/v1/img2img", json=body, auth=AUTH)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert len(answer["images"]) == 1
        assert f"Model hash: {short_hash}, Model: x," in answer["info"]
        options = client.get("/sdapi/v1/options", auth=AUTH).json()
        assert options["sd_model_checkpoint"] == f"x.safetensors [{short_hash}]"
