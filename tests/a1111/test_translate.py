"""The translation of A1111 requests into farm jobs and of infotexts, without a farm."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from scheduler.a1111.field_policy import review_request
from scheduler.a1111.schema import Img2ImgRequest
from scheduler.a1111.translate import (
    image_grid,
    job_body,
    model_of_checkpoint,
    parse_infotext,
)
from shared.errors import InputError
from shared.job.ids import new_a1111_task_id
from shared.job.spec import SpecLimits, parse_job
from shared.live import LocalLiveStatus, StopRequests

IMAGE = "iVBORw0KGgo="


def body(**fields: object) -> dict[str, object]:
    request = Img2ImgRequest.model_validate({"init_images": [IMAGE], **fields})
    return job_body(request, task_id="task(img2img-T000001)", default_model="tiny", tenant_options={})


def test_defaults_and_sampler_choice() -> None:
    job = body()
    assert job["sampler_name"] == "Euler"
    assert job["scheduler"] is None
    assert job["inpainting_fill"] == 0
    assert job["inpaint_full_res"] is True
    assert job["inpaint_full_res_padding"] == 0
    assert job["steps"] == 50
    assert job["denoising_strength"] == 0.75
    assert "model" not in job
    assert body(sampler_name="DPM++ 2M Karras", sampler_index="Euler a")["sampler_name"] == "DPM++ 2M Karras"
    assert body(sampler_index="k_dpmpp_2m")["sampler_name"] == "k_dpmpp_2m"
    parsed = parse_job(body(sampler_name="DPM++ 2M Karras"), SpecLimits())
    assert (parsed.sampler.name, parsed.schedule.name) == ("DPM++ 2M", "karras")


def test_translation_leaves_out_what_the_job_does_not_use() -> None:
    # The policy (field_policy.review_request, tests/a1111/test_field_policy.py) refuses or names these first.
    job = body(
        restore_faces=True,
        tiling=False,
        override_settings={"CLIP_stop_at_last_layers": 2, "face_restoration_model": "CodeFormer"},
        override_settings_restore_afterwards=False,
    )
    assert job["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert "restore_faces" not in job
    assert job["tiling"] is False  # a job field since tiling is rendered
    parse_job(job, SpecLimits())  # the strict job spec accepts what the translation makes


def test_sampler_noise_fields_are_honoured() -> None:
    job = body(s_churn=0.5, s_tmin=0.2, s_tmax=9.0, s_noise=1.02)
    assert (job["s_churn"], job["s_tmin"], job["s_tmax"], job["s_noise"]) == (0.5, 0.2, 9.0, 1.02)
    parsed = parse_job(job, SpecLimits())
    assert (parsed.s_churn, parsed.s_noise) == (0.5, 1.02)
    assert body()["s_churn"] is None  # not sent: the option's value


def test_checkpoint_becomes_the_model() -> None:
    # The title is kept: admission checks its hash and stores the canonical name (tests/api/test_model_files.py).
    assert model_of_checkpoint("v1-5.safetensors [6ce0161689]", "tiny") == "v1-5.safetensors [6ce0161689]"
    assert model_of_checkpoint("tiny [5634309f88]", "tiny") is None  # the default model: the default queue
    assert body(override_settings={"sd_model_checkpoint": "other"})["model"] == "other"
    request = Img2ImgRequest.model_validate({"init_images": [IMAGE]})
    tenant = {"sd_model_checkpoint": "house-model", "eta_noise_seed_delta": 31337}
    job = job_body(request, task_id="t", default_model="tiny", tenant_options=tenant)
    assert job["model"] == "house-model"
    assert job["override_settings"] == {"eta_noise_seed_delta": 31337}


def test_scripts_are_refused() -> None:
    def review(**fields: object) -> object:
        return review_request(Img2ImgRequest.model_validate({"init_images": [IMAGE], **fields}))

    with pytest.raises(InputError) as caught:
        review(alwayson_scripts={"Soft Inpainting": {"args": [True]}})
    assert caught.value.field == "alwayson_scripts.Soft Inpainting"
    with pytest.raises(InputError):
        review(script_name="SD upscale")
    assert review(alwayson_scripts={}, script_name="", script_args=[]) == []


def test_infotext_fills_in_what_was_not_sent() -> None:
    infotext = (
        "a house\nNegative prompt: fog\nSteps: 12, Sampler: Euler a, Schedule type: Karras, CFG scale: 5.5, "
        'Seed: 42, Size: 64x128, Model: tiny, Denoising strength: 0.4, Clip skip: 2, Mask blur: 8, Note: "a, b"'
    )
    job = body(infotext=infotext, steps=3)
    assert job["prompt"] == "a house"
    assert job["negative_prompt"] == "fog"
    assert job["steps"] == 3  # sent: kept
    assert job["sampler_name"] == "Euler a"
    assert job["scheduler"] == "Karras"
    assert job["cfg_scale"] == 5.5
    assert (job["seed"], job["width"], job["height"]) == (42, 64, 128)
    assert job["denoising_strength"] == 0.4
    assert job["mask_blur"] == 8
    assert job["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert parse_infotext(infotext)[2]["Note"] == "a, b"


def test_task_ids_and_grid() -> None:
    ids = {new_a1111_task_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"task\(img2img-[A-Z0-9]{7}\)", i) for i in ids)
    tiles = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)]
    grid = image_grid(tiles)
    assert grid.size == (16, 16)  # round(√3) = 2 rows, 2 columns, the empty spot black
    assert grid.getpixel((12, 12)) == (0, 0, 0)
    assert grid.getpixel((12, 4)) == (40, 0, 0)


def test_local_live_stop_requests() -> None:
    live = LocalLiveStatus()
    assert live.stop_requests("job") == StopRequests(False, 0)
    live.request_interrupt("job")
    assert live.request_skip("job") == 1
    assert live.request_skip("job") == 2
    assert live.stop_requests("job") == StopRequests(True, 2)
    live.request_cancel("job")
    assert live.stop_requests("job") == StopRequests(True, 2, cancel=True)
    assert not live.interrupt_requested("other")
    live.clear("job")
    assert live.stop_requests("job") == StopRequests()
