"""`POST /sdapi/v1/img2img` with request bodies shaped as A1111's API documentation and its clients send them."""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import httpx
from PIL import Image

from scheduler.a1111.schema import Img2ImgRequest
from scheduler.a1111.translate import answer_infotext
from shared.job.spec import SUPPORTED_OVERRIDE_KEYS
from tests.a1111.conftest import ALICE, ALICE_TOKEN, BOB, SIZE, LiveFarm, png_b64, square_mask_b64

# Every field of the reference's request, as its /docs page lists them and clients such as sdwebuiapi send them.
INPAINT_TASK_ID = "task(img2img-INPAINT)"


def full_inpainting_body() -> dict[str, Any]:
    return {
        "prompt": "a red cat on a sofa",
        "negative_prompt": "blurry",
        "styles": [],
        "seed": 1234,
        "subseed": -1,
        "subseed_strength": 0,
        "seed_resize_from_h": -1,
        "seed_resize_from_w": -1,
        "sampler_name": "DPM++ 2M Karras",
        "scheduler": None,
        "batch_size": 2,
        "n_iter": 1,
        "steps": 5,
        "cfg_scale": 7,
        "width": SIZE,
        "height": SIZE,
        "restore_faces": False,
        "tiling": False,
        "do_not_save_samples": False,
        "do_not_save_grid": False,
        "eta": 0,
        "denoising_strength": 0.6,
        "s_min_uncond": 0,
        "s_churn": 0,
        "s_tmax": 0,
        "s_tmin": 0,
        "s_noise": 1,
        "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "live_previews_enable": False},
        "override_settings_restore_afterwards": True,
        "refiner_checkpoint": None,
        "refiner_switch_at": None,
        "disable_extra_networks": False,
        "firstpass_image": None,
        "comments": {},
        "init_images": [png_b64((200, 40, 40))],
        "resize_mode": 0,
        "image_cfg_scale": 1.5,
        "mask": square_mask_b64(),
        "mask_blur_x": 4,
        "mask_blur_y": 4,
        "mask_blur": 4,
        "mask_round": True,
        "inpainting_fill": 1,
        "inpaint_full_res": False,
        "inpaint_full_res_padding": 32,
        "inpainting_mask_invert": 0,
        "initial_noise_multiplier": 1,
        "latent_mask": None,
        "force_task_id": INPAINT_TASK_ID,
        "sampler_index": "Euler",
        "include_init_images": False,
        "script_name": None,
        "script_args": [],
        "send_images": True,
        "save_images": False,
        "alwayson_scripts": {},
        "infotext": None,
    }


def decode_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def test_full_inpainting_request(farm: LiveFarm) -> None:
    body = full_inpainting_body()
    with farm.client() as client:
        response = client.post("/sdapi/v1/img2img", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == {"images", "parameters", "info"}

        # images: one base64 PNG per picture of the batch, with its infotext in the "parameters" chunk.
        assert len(answer["images"]) == 2
        info = json.loads(answer["info"])
        for i, text in enumerate(answer["images"]):
            image = decode_png(text)
            assert image.format == "PNG"
            assert image.size == (SIZE, SIZE)
            assert image.mode == "RGB"
            assert image.info["parameters"] == info["infotexts"][i]

        # parameters: the request echoed as parsed, images nulled (include_init_images is false).
        expected = {**body, "init_images": None, "mask": None}
        assert answer["parameters"] == expected
        assert set(answer["parameters"]) == set(Img2ImgRequest.model_fields)

        # info: the reference's processed.js() fields.
        assert info["prompt"] == "a red cat on a sofa"
        assert info["all_prompts"] == ["a red cat on a sofa"] * 2
        assert info["negative_prompt"] == "blurry"
        assert info["all_negative_prompts"] == ["blurry"] * 2
        assert info["seed"] == 1234
        assert info["all_seeds"] == [1234, 1235]  # seed + i without variation strength
        assert info["all_subseeds"] == [info["subseed"], info["subseed"] + 1]
        assert 0 <= info["subseed"] < 4294967294  # -1 resolved by the worker
        assert info["subseed_strength"] == 0
        assert (info["width"], info["height"]) == (SIZE, SIZE)
        assert info["sampler_name"] == "DPM++ 2M"
        assert info["cfg_scale"] == 7
        assert info["steps"] == 5
        assert info["batch_size"] == 2
        assert info["restore_faces"] is False
        assert info["sd_model_name"] == "tiny"
        assert re.fullmatch(r"[0-9a-f]{10}", info["sd_model_hash"])
        assert info["denoising_strength"] == 0.6
        assert info["extra_generation_params"] == {"Mask blur": 4}
        assert info["index_of_first_image"] == 0
        assert info["styles"] == []
        assert re.fullmatch(r"\d{14}", info["job_timestamp"])
        assert info["clip_skip"] == 1
        assert info["is_using_inpainting_conditioning"] is False
        assert info["task_id"] == INPAINT_TASK_ID
        # Everything in this body is honoured or at its default, but live_previews_enable, a webui option that
        # the job contract may not (yet) know, which is then named rather than dropped.
        previews_known = "live_previews_enable" in SUPPORTED_OVERRIDE_KEYS
        expected_fields = [] if previews_known else ["override_settings.live_previews_enable"]
        assert [warning["field"] for warning in info["warnings"]] == expected_fields

        # The infotext, field by field, as the webui writes it.
        for i, infotext in enumerate(info["infotexts"]):
            prompt, negative, params = infotext.split("\n")
            assert prompt == "a red cat on a sofa"
            assert negative == "Negative prompt: blurry"
            assert params.startswith(
                f"Steps: 5, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: {1234 + i}, "
                f"Size: {SIZE}x{SIZE}, Model hash: {info['sd_model_hash']}, Model: tiny, Denoising strength: 0.6, "
                "Mask blur: 4, Version: renderfarm"
            )

        # The job is an ordinary farm job, under its force_task_id, for the same tenant (Basic or Bearer).
        job = client.get(f"/v1/jobs/{INPAINT_TASK_ID}").json()
        assert job["state"] == "succeeded"
        results = [a for a in job["artifacts"] if a["kind"] == "result"]
        assert [a["seed"] for a in results] == [1234, 1235]
        assert [a["infotext"] for a in results] == info["infotexts"]
        bearer = httpx.get(f"{farm.url}/v1/jobs/{INPAINT_TASK_ID}", headers={"Authorization": f"Bearer {ALICE_TOKEN}"})
        assert bearer.status_code == 200
        # Another tenant does not see it.
        assert client.get(f"/v1/jobs/{INPAINT_TASK_ID}", auth=BOB).status_code == 404

        # The same force_task_id with the same request: the same job, answered again (create-or-get, §7.5).
        again = client.post("/sdapi/v1/img2img", json=body)
        assert again.status_code == 200
        assert again.json()["images"] == answer["images"]
        # With a different request: 409, naming both hashes.
        conflict = client.post("/sdapi/v1/img2img", json={**body, "prompt": "a dog"})
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "task_id_conflict"


def test_minimal_request_gets_the_reference_api_defaults(farm: LiveFarm) -> None:
    body = {"init_images": ["data:image/png;base64," + png_b64()], "prompt": "p", "steps": 3, "width": 64, "height": 64}
    with farm.client() as client:
        response = client.post("/sdapi/v1/img2img", json={**body, "include_init_images": True, "an_unknown": 1})
    assert response.status_code == 200, response.text
    answer = response.json()
    parameters = answer["parameters"]
    # The API's defaults, not the UI's (semantics §5.2), with their JSON types (true is not 1).
    api_defaults = {
        "sampler_index": "Euler",
        "sampler_name": None,
        "inpainting_fill": 0,
        "inpaint_full_res": True,
        "inpaint_full_res_padding": 0,
        "denoising_strength": 0.75,
        "cfg_scale": 7.0,
        "seed": -1,
        "batch_size": 1,
        "send_images": True,
        "save_images": False,
    }
    echoed = {name: parameters[name] for name in api_defaults}
    assert echoed == api_defaults
    assert {name: type(value) for name, value in echoed.items()} == {k: type(v) for k, v in api_defaults.items()}
    assert parameters["init_images"] == body["init_images"]  # include_init_images: echoed as sent
    assert "an_unknown" not in parameters  # unknown fields are not used, as the reference ignores them...
    info = json.loads(answer["info"])
    assert [(w["code"], w["field"]) for w in info["warnings"]] == [("unknown_field", "an_unknown")]  # ...but named
    # No force_task_id: the reference's task id form, returned in info (the farm's addition).
    assert re.fullmatch(r"task\(img2img-[A-Z0-9]{7}\)", info["task_id"])
    assert "Sampler: Euler, Schedule type: Automatic" in info["infotexts"][0]
    assert info["all_seeds"][0] == info["seed"]
    assert 0 <= info["seed"] < 4294967294


def test_send_images_false_and_save_images_grid(farm: LiveFarm) -> None:
    base = {"init_images": [png_b64()], "steps": 2, "width": 64, "height": 64, "batch_size": 2, "seed": 7}
    with farm.client() as client:
        silent = client.post("/sdapi/v1/img2img", json={**base, "send_images": False})
        saved = client.post("/sdapi/v1/img2img", json={**base, "save_images": True})
    assert silent.status_code == 200
    assert silent.json()["images"] == []
    assert json.loads(silent.json()["info"])["all_seeds"] == [7, 8]
    # save_images: the reference makes a grid and returns it first (index_of_first_image 1).
    images = [decode_png(text) for text in saved.json()["images"]]
    assert [image.size for image in images] == [(128, 64), (64, 64), (64, 64)]
    info = json.loads(saved.json()["info"])
    assert info["index_of_first_image"] == 1
    assert len(info["infotexts"]) == 3


def test_sampler_and_schedule_names_as_the_reference_matches_them(farm: LiveFarm) -> None:
    base = {"init_images": [png_b64()], "steps": 2, "width": 64, "height": 64}
    with farm.client() as client:
        alias = client.post("/sdapi/v1/img2img", json={**base, "sampler_index": "k_euler_a", "scheduler": "KARRAS"})
        label = client.post("/sdapi/v1/img2img", json={**base, "sampler_name": "dpm++ 2m", "scheduler": "exponential"})
    assert "Sampler: Euler a, Schedule type: Karras" in json.loads(alias.json()["info"])["infotexts"][0]
    assert "Sampler: DPM++ 2M, Schedule type: Exponential" in json.loads(label.json()["info"])["infotexts"][0]


def test_refusals_name_the_field(farm: LiveFarm) -> None:
    base = {"init_images": [png_b64()], "steps": 2, "width": 64, "height": 64}
    with farm.client() as client:
        unknown = client.post("/sdapi/v1/img2img", json={**base, "sampler_index": "No Such Sampler"})
        assert unknown.status_code == 422
        assert unknown.json()["error"]["field"] == "sampler_index"
        schedule = client.post("/sdapi/v1/img2img", json={**base, "scheduler": "nope"})
        assert schedule.status_code == 422
        assert schedule.json()["error"]["field"] == "scheduler"
        strength = client.post("/sdapi/v1/img2img", json={**base, "denoising_strength": 1.5})
        assert strength.status_code == 422
        assert strength.json()["error"]["field"] == "denoising_strength"
        script = client.post("/sdapi/v1/img2img", json={**base, "alwayson_scripts": {"ControlNet": {"args": []}}})
        assert script.status_code == 422
        assert script.json()["error"]["field"] == "alwayson_scripts.ControlNet"
        named = client.post("/sdapi/v1/img2img", json={**base, "script_name": "outpainting mk2"})
        assert named.status_code == 422
        assert named.json()["error"]["code"] == "unknown_script"
        no_image = client.post("/sdapi/v1/img2img", json={"prompt": "x"})
        assert no_image.status_code == 404  # the reference: "Init image not found"
        txt2img = client.post("/sdapi/v1/txt2img", json={"prompt": "x"})
        assert txt2img.status_code == 501
        assert txt2img.json()["error"]["code"] == "txt2img_not_supported"
        assert "img2img" in txt2img.json()["error"]["message"]
    assert httpx.post(f"{farm.url}/sdapi/v1/img2img", json=base).status_code == 401
    wrong = httpx.post(f"{farm.url}/sdapi/v1/img2img", json=base, auth=httpx.BasicAuth("alice", "wrong"))
    assert wrong.status_code == 401
    assert ALICE is not BOB


def test_what_the_farm_cannot_render_is_a_422_naming_the_field(farm: LiveFarm) -> None:
    base = {"init_images": [png_b64()], "steps": 2, "width": 64, "height": 64}
    refused: dict[str, dict[str, Any]] = {
        "restore_faces": {"restore_faces": True},
        "refiner_checkpoint": {"refiner_checkpoint": "sd_xl_refiner_1.0", "refiner_switch_at": 0.8},
        "override_settings.sd_unet": {"override_settings": {"sd_unet": "my-unet"}},
        "override_settings.face_restoration": {"override_settings": {"face_restoration": True}},
    }
    with farm.client() as client:
        for field, fields in refused.items():
            response = client.post("/sdapi/v1/img2img", json={**base, **fields})
            assert response.status_code == 422, (field, response.text)
            error = response.json()["error"]
            assert (error["field"], error["code"]) == (field, "unsupported")
        # A VAE file the farm does not have (tests/api/test_model_files.py: the known ones are accepted).
        no_vae = {"override_settings": {"sd_vae": "vae-ft-mse-840000-ema-pruned.safetensors"}}
        response = client.post("/sdapi/v1/img2img", json={**base, **no_vae})
        assert (response.status_code, response.json()["error"]["field"]) == (422, "override_settings.sd_vae")
        assert response.json()["error"]["code"] == "unknown_vae"
        # At their defaults the same fields change nothing and are accepted.
        quiet = {"restore_faces": False, "refiner_checkpoint": None, "refiner_switch_at": 0.8}
        ok = client.post("/sdapi/v1/img2img", json={**base, **quiet, "override_settings": {"sd_vae": "Automatic"}})
        assert ok.status_code == 200, ok.text
        assert json.loads(ok.json()["info"])["warnings"] == []


def test_what_the_farm_does_not_use_is_named_in_the_warnings(farm: LiveFarm) -> None:
    task_id = "task(img2img-WARNED1)"
    body = {
        "init_images": [png_b64()],
        "steps": 2,
        "width": 64,
        "height": 64,
        "force_task_id": task_id,
        "comments": {"who": "me"},
        "override_settings_restore_afterwards": False,
        "denoising_strenght": 0.3,  # misspelt
        "override_settings": {"samples_format": "jpg", "samples_save": False},
    }
    expected = [
        ("not_kept", "override_settings_restore_afterwards"),
        ("ignored_field", "comments"),
        ("ignored_setting", "override_settings.samples_save"),
        ("unknown_field", "denoising_strenght"),
    ]
    with farm.client() as client:
        response = client.post("/sdapi/v1/img2img", json=body)
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert [(w["code"], w["field"]) for w in info["warnings"]] == expected
        assert all(w["message"].startswith(f"{w['field']}: ") for w in info["warnings"])
        # The same warnings are the job's, under /v1.
        job = client.get(f"/v1/jobs/{task_id}").json()
        assert [(w["code"], w["field"]) for w in job["warnings"]] == expected
    # samples_format is honoured by the answer: JPEG with the infotext in its EXIF comment, as the webui sends.
    data = base64.b64decode(response.json()["images"][0])
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "JPEG"
    assert answer_infotext(data) == info["infotexts"][0]


def test_options_that_the_farm_does_not_keep_are_named(farm: LiveFarm) -> None:
    with farm.client() as client:
        kept = client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 0})
        assert kept.status_code == 200
        assert kept.json() is None  # as the webui answers
        partly = client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 0, "samples_save": False})
        assert partly.status_code == 200
        assert [(w["code"], w["field"]) for w in partly.json()["warnings"]] == [("ignored_setting", "samples_save")]
        refused = client.post("/sdapi/v1/options", json={"sd_vae_decode_method": "TAESD"})
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "sd_vae_decode_method"
        vae = client.post("/sdapi/v1/options", json={"sd_vae": "other.vae.pt"})
        assert vae.status_code == 422
        assert vae.json()["error"]["field"] == "sd_vae"


def test_tiling_is_rendered_and_written_in_the_infotext(farm: LiveFarm) -> None:
    base = {"init_images": [png_b64()], "steps": 2, "width": 64, "height": 64, "seed": 3}
    with farm.client() as client:
        tiled = client.post("/sdapi/v1/img2img", json={**base, "tiling": True})
        plain = client.post("/sdapi/v1/img2img", json=base)
    assert tiled.status_code == 200, tiled.text
    tiled_info, plain_info = json.loads(tiled.json()["info"]), json.loads(plain.json()["info"])
    assert ", Tiling: True" in tiled_info["infotexts"][0]
    assert "Tiling" not in plain_info["infotexts"][0]
    assert tiled.json()["images"] != plain.json()["images"]  # circular padding changes the pixels near the edges
