"""StableDiffusionProcessingImg2Img.from_job: the engine reads the typed job's fields, every one a render needs."""

from __future__ import annotations

from typing import Any, cast

from PIL import Image

from shared.job.spec import Img2ImgJob
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


def _other_than_default(name: str) -> object:
    """A valid value of the job field `name` that differs from its default."""
    default = Img2ImgJob.model_fields[name].default
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + (8 if name in ("width", "height") else 1)  # sizes are multiples of 8
    if isinstance(default, float):
        return default / 2 if default else 0.5
    if isinstance(default, str):
        return f"a {name}"
    return 0.5  # the optional numbers (eta, image_cfg_scale, initial_noise_multiplier) default to None


def test_from_job_copies_the_values_and_resolves_the_names() -> None:
    values = {name: _other_than_default(name) for name in _FIELDS_FROM_JOB}
    job = Img2ImgJob(
        init_images=[ASSET],
        sampler_name="k_dpmpp_2m",
        scheduler="karras",
        override_settings={"img2img_fix_steps": True},
        **values,
    )
    picture = Image.new("RGB", (64, 64))
    p = StableDiffusionProcessingImg2Img.from_job(job, sd_model=cast(Any, None), init_images=[picture])
    for name in _FIELDS_FROM_JOB:
        assert getattr(job, name) == values[name] != Img2ImgJob.model_fields[name].default, name
        assert getattr(p, name) == values[name], name
    assert (p.sampler_name, p.scheduler) == ("DPM++ 2M", "Karras")
    assert p.options.img2img_fix_steps is True
    assert p.init_images == [picture]


def test_from_job_takes_the_effective_mask_blur() -> None:
    job = Img2ImgJob(init_images=[ASSET], mask_blur=3)
    p = StableDiffusionProcessingImg2Img.from_job(job, sd_model=cast(Any, None), init_images=[Image.new("RGB", (8, 8))])
    assert (p.mask_blur_x, p.mask_blur_y) == (3, 3)
