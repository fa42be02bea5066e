"""StableDiffusionProcessingImg2Img.from_job: the engine reads the typed job's fields, every one a render needs."""

from __future__ import annotations

from typing import Any, cast

from PIL import Image

from shared.spec import Img2ImgJob
from worker.engine.processing import _FIELDS_FROM_JOB, StableDiffusionProcessingImg2Img

ASSET = "asset:" + "0" * 64
#: Passed to from_job beside the job, or resolved by it (names, the overrides).
RESOLVED = {"sampler_name", "scheduler", "override_settings", "init_images", "mask", "latent_mask"}
#: The farm's: the model is loaded by the worker, the rest never reach the renderer (mask_blur is already folded
#: into mask_blur_x/_y by the spec; styles must be empty).
NOT_RENDERED = {"force_task_id", "model", "priority", "tags", "webhook_url", "styles", "mask_blur"}


def test_every_field_of_the_job_is_read_or_deliberately_left_to_the_farm() -> None:
    taken = set(_FIELDS_FROM_JOB)
    assert not taken & (RESOLVED | NOT_RENDERED)
    assert set(Img2ImgJob.model_fields) == taken | RESOLVED | NOT_RENDERED


def test_from_job_copies_the_values_and_resolves_the_names() -> None:
    job = Img2ImgJob(
        init_images=[ASSET],
        prompt="a cat",
        negative_prompt="a dog",
        seed=5,
        subseed=6,
        subseed_strength=0.25,
        seed_resize_from_h=128,
        seed_resize_from_w=96,
        sampler_name="k_dpmpp_2m",
        scheduler="karras",
        batch_size=2,
        n_iter=3,
        steps=12,
        cfg_scale=4.5,
        width=128,
        height=64,
        eta=0.5,
        resize_mode=2,
        denoising_strength=0.4,
        image_cfg_scale=1.5,
        mask_blur=3,
        mask_round=False,
        inpainting_fill=1,
        inpaint_full_res=False,
        inpaint_full_res_padding=16,
        inpainting_mask_invert=1,
        initial_noise_multiplier=0.9,
        override_settings={"img2img_fix_steps": True},
    )
    picture = Image.new("RGB", (64, 64))
    p = StableDiffusionProcessingImg2Img.from_job(job, sd_model=cast(Any, None), init_images=[picture])
    for name in _FIELDS_FROM_JOB:
        assert getattr(p, name) == getattr(job, name), name
    assert (p.mask_blur_x, p.mask_blur_y) == (3, 3)
    assert (p.sampler_name, p.scheduler) == ("DPM++ 2M", "Karras")
    assert p.options.img2img_fix_steps is True
    assert p.init_images == [picture]
