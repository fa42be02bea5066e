"""What A1111 clients probe at start-up (samplers, schedulers, models, options, flags), and per-tenant options."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from scheduler.a1111.tenant_options import options_key
from scheduler.app import create_app
from tests.a1111.conftest import ALICE_TOKEN, BOB, LiveFarm, png_b64


def test_start_up_probes(farm: LiveFarm) -> None:
    with farm.client() as client:
        samplers = client.get("/sdapi/v1/samplers").json()
        by_name = {item["name"]: item for item in samplers}
        assert {"Euler", "Euler a", "DPM++ 2M", "DDIM"} <= set(by_name)
        assert by_name["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
        assert by_name["DPM++ 2M"]["options"] == {"scheduler": "karras"}
        assert len(samplers) == 20  # every sampler of the reference, in its order
        assert [item["name"] for item in samplers][:3] == ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE"]
        assert by_name["DPM++ 3M SDE"]["options"] == {
            "scheduler": "exponential",
            "discard_next_to_last_sigma": True,
            "brownian_noise": True,
        }
        assert by_name["DPM++ 2M SDE Heun"]["aliases"] == ["k_dpmpp_2m_sde_heun"]
        assert by_name["LCM"] == {"name": "LCM", "aliases": ["lcm"], "options": {}}
        schedulers = {item["name"]: item for item in client.get("/sdapi/v1/schedulers").json()}
        assert schedulers["karras"] == {
            "name": "karras",
            "label": "Karras",
            "aliases": None,
            "default_rho": 7.0,
            "need_inner_model": False,
        }
        assert len(schedulers) == 12
        assert schedulers["sgm_uniform"]["aliases"] == ["SGMUniform"]
        assert schedulers["polyexponential"]["default_rho"] == 1.0
        assert schedulers["normal"]["need_inner_model"] is True
        models = client.get("/sdapi/v1/sd-models").json()
        # The built-in tiny model has no file: its documented identity hash (docs/engine.md "Model files").
        tiny_sha256 = hashlib.sha256(b"renderfarm-tiny-model:tiny:v1").hexdigest()
        assert models[0] == {
            "title": f"tiny [{tiny_sha256[:10]}]",
            "model_name": "tiny",
            "hash": tiny_sha256[:10],
            "sha256": tiny_sha256,
            "filename": "tiny",
            "config": None,
        }
        flags = client.get("/sdapi/v1/cmd-flags").json()
        assert flags["api"] is True
        assert flags["api_auth"] is None
        options = client.get("/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"] == f"tiny [{tiny_sha256[:10]}]"  # a title, as the webui answers
        assert options["sd_checkpoint_hash"] == tiny_sha256
        assert options["CLIP_stop_at_last_layers"] == 1
        assert options["samples_format"] == "png"


def test_options_are_per_tenant_durable_and_apply_to_jobs(farm: LiveFarm) -> None:
    with farm.client() as alice, farm.client(BOB) as bob:
        # The webui's title form (hash suffix) of the default model, a job option, and an option the farm may not
        # keep, which the answer then names (null, as the webui answers, when everything was kept).
        changes = {
            "sd_model_checkpoint": "tiny [5634309f88]",
            "CLIP_stop_at_last_layers": 2,
            "live_preview_refresh_period": 500,
        }
        response = alice.post("/sdapi/v1/options", json=changes)
        assert response.status_code == 200
        assert [w["field"] for w in response.json()["warnings"]] == ["live_preview_refresh_period"]
        kept_only = alice.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2})
        assert kept_only.json() is None  # the webui's answer when everything was kept
        assert alice.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        assert bob.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
        bad = alice.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 99})
        assert bad.status_code == 422
        assert bad.json()["error"]["field"] == "CLIP_stop_at_last_layers"

        # The tenant's options are the defaults of its jobs; the request's own override_settings win.
        job = {"init_images": [png_b64()], "steps": 2, "width": 64, "height": 64, "seed": 5}
        answer = alice.post("/sdapi/v1/img2img", json=job).json()
        info = json.loads(answer["info"])
        assert "Clip skip: 2" in info["infotexts"][0]
        assert info["clip_skip"] == 2
        assert info["sd_model_name"] == "tiny"  # the default model's title ran on the default queue
        overridden = alice.post(
            "/sdapi/v1/img2img", json={**job, "override_settings": {"CLIP_stop_at_last_layers": 1}}
        ).json()
        assert "Clip skip" not in json.loads(overridden["info"])["infotexts"][0]

    # Stored in the farm's storage, so another scheduler process (here a second app) sees them.
    assert farm.storage.exists(options_key("alice"))
    other = create_app(farm.settings, live=farm.live, storage=farm.storage, db=farm.db, start_background=False)
    with TestClient(other, client=("127.0.0.1", 50000)) as client:
        seen = client.get("/sdapi/v1/options", auth=("alice", ALICE_TOKEN))
    assert seen.status_code == 200
    assert seen.json()["CLIP_stop_at_last_layers"] == 2


def test_probes_of_features_the_farm_lacks_answer_the_reference_shapes(farm: LiveFarm) -> None:
    with farm.client() as client:
        assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
        routes = ("upscalers", "latent-upscale-modes", "face-restorers", "realesrgan-models", "prompt-styles")
        for route in (*routes, "script-info", "extensions"):
            response = client.get(f"/sdapi/v1/{route}")
            assert response.status_code == 200, route
            assert response.json() == [], route
        memory = client.get("/sdapi/v1/memory").json()
        assert set(memory) == {"ram", "cuda"}
        ram = memory["ram"]
        assert set(ram) == {"free", "used", "total"}
        assert 0 < ram["used"] < ram["total"]
        assert ram["free"] == ram["total"] - ram["used"]
        assert memory["cuda"] == {"error": "unavailable"}  # the webui's answer without CUDA
        # Tenants only, as every /sdapi route.
        assert httpx.get(f"{farm.url}/sdapi/v1/upscalers").status_code == 401


@pytest.mark.parametrize("samples_format", ["png", "jpg", "webp"])
def test_png_info_reads_back_a_render(farm: LiveFarm, samples_format: str) -> None:
    job = {
        "init_images": [png_b64()],
        "prompt": "a red, square cat",
        "negative_prompt": "blur",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 11,
        "override_settings": {"samples_format": samples_format},
    }
    with farm.client(BOB) as client:  # bob: alice's options (clip skip 2) are set by the test above
        answer = client.post("/sdapi/v1/img2img", json=job).json()
        infotext = json.loads(answer["info"])["infotexts"][0]
        read = client.post("/sdapi/v1/png-info", json={"image": answer["images"][0]})
        assert read.status_code == 200, read.text
        body = read.json()
        assert body["info"] == infotext
        assert body["items"] == {}
        parameters = body["parameters"]
        assert parameters["Prompt"] == "a red, square cat"
        assert parameters["Negative prompt"] == "blur"
        assert parameters["Seed"] == "11"
        assert parameters["Steps"] == "2"
        assert (parameters["Size-1"], parameters["Size-2"]) == ("64", "64")
        assert "Size" not in parameters
        assert parameters["Clip skip"] == "1"  # filled in, as the webui's paste does

        # Other text items of a PNG are listed; an image without infotext reads empty; bad base64 is a 422.
        picture = Image.new("RGB", (8, 8))
        extra = PngInfo()
        extra.add_text("Software", "a painter")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", pnginfo=extra)
        plain = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()})
        assert plain.json()["info"] == ""
        assert plain.json()["items"] == {"Software": "a painter"}
        assert client.post("/sdapi/v1/png-info", json={"image": ""}).json() == {
            "info": "",
            "items": {},
            "parameters": {},
        }
        bad = client.post("/sdapi/v1/png-info", json={"image": "not base64!"})
        assert bad.status_code == 422
        assert bad.json()["error"]["field"] == "image"
