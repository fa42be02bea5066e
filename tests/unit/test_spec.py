"""The job contract: reference API defaults, validation naming the field, mask_blur, samplers, hashing, storage."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from shared.config import Settings
from shared.errors import InputError, PayloadTooLarge
from shared.job.hashing import FIELDS_ADDED_LATER, canonical_json, request_hash
from shared.job.image_refs import ImageRef, parse_image_ref
from shared.job.spec import SUPPORTED_OVERRIDE_KEYS, Img2ImgJob, SpecLimits, parse_job
from shared.sampler_names import SAMPLER_LABELS, SCHEDULE_LABELS

SHA = "0123456789abcdef" * 4
ASSET = f"asset:{SHA}"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(40))  # only the size and the base64 matter here
INLINE = base64.b64encode(PNG_BYTES).decode()
LIMITS = SpecLimits(max_image_pixels=4096 * 4096, max_inline_image_bytes=1024, max_batch_size=16, max_n_iter=64)
BASE: dict[str, Any] = {"init_images": [ASSET]}


def job_of(**fields: Any) -> Img2ImgJob:
    return parse_job({**BASE, **fields}, LIMITS)


def problems_of(data: Mapping[str, Any], limits: SpecLimits = LIMITS) -> list[tuple[str, str]]:
    with pytest.raises(InputError) as caught:
        parse_job(data, limits)
    return [(p.field, p.code) for p in caught.value.problems]


# --------------------------------------------------------------------------------------------------------------
# Defaults: the reference API's (img2img-semantics.md §1 and §5.2), plus the farm's own fields.

REFERENCE_API_DEFAULTS: dict[str, Any] = {
    "resize_mode": 0,
    "denoising_strength": 0.75,
    "image_cfg_scale": None,
    "mask": None,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "mask_blur": None,
    "mask_round": True,
    "inpainting_fill": 0,  # fill (the UI's default is 1, original)
    "inpaint_full_res": True,  # only masked (the UI's default is whole picture)
    "inpaint_full_res_padding": 0,  # the UI's default is 32
    "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None,
    "latent_mask": None,
    "force_task_id": None,
    "prompt": "",
    "negative_prompt": "",
    "styles": [],
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "sampler_name": "Euler",  # the API's sampler_index default; the UI's is DPM++ 2M
    "scheduler": None,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 50,  # the UI's is 20
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "eta": None,
    "s_min_uncond": None,
    "tiling": False,
    "s_churn": None,
    "s_tmin": None,
    "s_tmax": None,
    "s_noise": None,
    "model": None,
    "override_settings": {},
    "priority": 0,
    "tags": [],
    "webhook_url": None,
}


@pytest.mark.parametrize(("field", "expected"), REFERENCE_API_DEFAULTS.items())
def test_default_is_the_reference_apis(field: str, expected: Any) -> None:
    value = getattr(job_of(), field)
    assert value == expected
    assert type(value) is type(expected)


def test_every_field_has_its_default_listed_and_only_init_images_is_required() -> None:
    assert set(Img2ImgJob.model_fields) == {"init_images", *REFERENCE_API_DEFAULTS}
    assert [name for name, f in Img2ImgJob.model_fields.items() if f.is_required()] == ["init_images"]


def test_omitted_defaults_resolve_to_euler_and_automatic() -> None:
    job = job_of()
    assert job.sampler.name == "Euler"
    assert job.schedule.name == "automatic"
    assert job.effective_batch_size == 1
    assert job.resolved_model is None


# --------------------------------------------------------------------------------------------------------------
# Every bad field gives a 422 that names it, with a stable code.

BAD_FIELDS: list[tuple[dict[str, Any], str, str]] = [
    ({"resize_mode": -1}, "resize_mode", "out_of_range"),
    ({"resize_mode": 4}, "resize_mode", "out_of_range"),
    ({"resize_mode": 2.5}, "resize_mode", "invalid_type"),
    ({"denoising_strength": -0.01}, "denoising_strength", "out_of_range"),
    ({"denoising_strength": 1.01}, "denoising_strength", "out_of_range"),
    ({"denoising_strength": "lots"}, "denoising_strength", "invalid_type"),
    ({"denoising_strength": float("nan")}, "denoising_strength", "invalid_type"),
    ({"image_cfg_scale": -0.5}, "image_cfg_scale", "out_of_range"),
    ({"image_cfg_scale": 30.5}, "image_cfg_scale", "out_of_range"),
    ({"mask_blur_x": -1}, "mask_blur_x", "out_of_range"),
    ({"mask_blur_x": 65}, "mask_blur_x", "out_of_range"),
    ({"mask_blur_y": 65}, "mask_blur_y", "out_of_range"),
    ({"mask_blur": -1}, "mask_blur", "out_of_range"),
    ({"mask_blur": 65}, "mask_blur", "out_of_range"),
    ({"mask_blur": 4.5}, "mask_blur", "invalid_type"),
    ({"mask_blur": True}, "mask_blur", "invalid_type"),
    ({"mask_blur": "4"}, "mask_blur", "invalid_type"),
    ({"mask_round": "sometimes"}, "mask_round", "invalid_type"),
    ({"inpainting_fill": -1}, "inpainting_fill", "out_of_range"),
    ({"inpainting_fill": 4}, "inpainting_fill", "out_of_range"),
    ({"inpaint_full_res": "maybe"}, "inpaint_full_res", "invalid_type"),
    ({"inpaint_full_res_padding": -1}, "inpaint_full_res_padding", "out_of_range"),
    ({"inpainting_mask_invert": 2}, "inpainting_mask_invert", "out_of_range"),
    ({"inpainting_mask_invert": True}, "inpainting_mask_invert", "invalid_type"),
    ({"initial_noise_multiplier": -0.1}, "initial_noise_multiplier", "out_of_range"),
    ({"initial_noise_multiplier": 1.6}, "initial_noise_multiplier", "out_of_range"),
    ({"prompt": 5}, "prompt", "invalid_type"),
    ({"negative_prompt": None}, "negative_prompt", "invalid_type"),
    ({"styles": ["cinematic"]}, "styles", "unsupported"),
    ({"seed": -2}, "seed", "out_of_range"),
    ({"seed": 2**32}, "seed", "out_of_range"),
    ({"seed": 1.5}, "seed", "invalid_type"),
    ({"seed": True}, "seed", "invalid_type"),
    ({"subseed": -2}, "subseed", "out_of_range"),
    ({"subseed_strength": 1.5}, "subseed_strength", "out_of_range"),
    ({"seed_resize_from_h": -2}, "seed_resize_from_h", "out_of_range"),
    ({"seed_resize_from_w": 8193}, "seed_resize_from_w", "out_of_range"),
    ({"sampler_name": "Euler b"}, "sampler_name", "unknown_sampler"),
    ({"sampler_name": "DPM++ 2M Cosine"}, "sampler_name", "unknown_sampler"),
    ({"s_churn": -1}, "s_churn", "out_of_range"),
    ({"s_noise": 11}, "s_noise", "out_of_range"),
    ({"sampler_name": ""}, "sampler_name", "unknown_sampler"),
    ({"sampler_name": None}, "sampler_name", "invalid_type"),
    ({"scheduler": "Karras Exponential"}, "scheduler", "unknown_schedule"),
    ({"batch_size": 0}, "batch_size", "out_of_range"),
    ({"batch_size": 17}, "batch_size", "out_of_range"),
    ({"n_iter": 0}, "n_iter", "out_of_range"),
    ({"n_iter": 65}, "n_iter", "out_of_range"),
    ({"steps": 0}, "steps", "out_of_range"),
    ({"steps": 151}, "steps", "out_of_range"),
    ({"steps": "many"}, "steps", "invalid_type"),
    ({"cfg_scale": -1}, "cfg_scale", "out_of_range"),
    ({"cfg_scale": 30.5}, "cfg_scale", "out_of_range"),
    ({"cfg_scale": float("inf")}, "cfg_scale", "invalid_type"),
    ({"width": 500}, "width", "not_multiple_of_8"),
    ({"height": 513}, "height", "not_multiple_of_8"),
    ({"width": 56}, "width", "out_of_range"),
    ({"height": 0}, "height", "out_of_range"),
    ({"width": 4104, "height": 4096}, "width", "too_many_pixels"),
    ({"seed_resize_from_w": 8192, "seed_resize_from_h": 8192}, "seed_resize_from_w", "too_many_pixels"),
    ({"eta": -0.1}, "eta", "out_of_range"),
    ({"eta": 1.5}, "eta", "out_of_range"),
    ({"model": ""}, "model", "invalid_length"),
    ({"model": 3}, "model", "invalid_type"),
    ({"priority": 1001}, "priority", "out_of_range"),
    ({"priority": -1001}, "priority", "out_of_range"),
    ({"priority": 0.5}, "priority", "invalid_type"),
    ({"tags": [f"t{i}" for i in range(17)]}, "tags", "too_many"),
    ({"tags": [""]}, "tags", "invalid_tag"),
    ({"tags": ["x" * 65]}, "tags", "invalid_tag"),
    ({"tags": ["a\nb"]}, "tags", "invalid_tag"),
    ({"tags": "one"}, "tags", "invalid_type"),
    ({"webhook_url": "ftp://example.com/hook"}, "webhook_url", "invalid_url"),
    ({"webhook_url": "https://"}, "webhook_url", "invalid_url"),
    ({"force_task_id": ""}, "force_task_id", "invalid_task_id"),
    ({"force_task_id": "a" * 129}, "force_task_id", "invalid_task_id"),
    ({"force_task_id": "has space"}, "force_task_id", "invalid_task_id"),
    ({"force_task_id": "a/b"}, "force_task_id", "invalid_task_id"),
    ({"force_task_id": "ünïcode"}, "force_task_id", "invalid_task_id"),
    ({"force_task_id": 12}, "force_task_id", "invalid_type"),
    ({"bogus": 1}, "bogus", "unknown_field"),
    ({"sampler_index": "Euler"}, "sampler_index", "unknown_field"),
    ({"override_settings": []}, "override_settings", "invalid_type"),
    ({"override_settings": {"sd_hypernetwork": "x"}}, "override_settings.sd_hypernetwork", "unknown_setting"),
    (
        {"override_settings": {"CLIP_stop_at_last_layers": 0}},
        "override_settings.CLIP_stop_at_last_layers",
        "out_of_range",
    ),
    (
        {"override_settings": {"CLIP_stop_at_last_layers": 13}},
        "override_settings.CLIP_stop_at_last_layers",
        "out_of_range",
    ),
    (
        {"override_settings": {"CLIP_stop_at_last_layers": "two"}},
        "override_settings.CLIP_stop_at_last_layers",
        "invalid_type",
    ),
    ({"override_settings": {"img2img_fix_steps": "maybe"}}, "override_settings.img2img_fix_steps", "invalid_type"),
    ({"override_settings": {"sd_model_checkpoint": 5}}, "override_settings.sd_model_checkpoint", "invalid_type"),
    (
        {"override_settings": {"initial_noise_multiplier": 2.0}},
        "override_settings.initial_noise_multiplier",
        "out_of_range",
    ),
    (
        {"override_settings": {"img2img_background_color": "white"}},
        "override_settings.img2img_background_color",
        "invalid_format",
    ),
    (
        {"override_settings": {"img2img_background_color": "#fffff"}},
        "override_settings.img2img_background_color",
        "invalid_format",
    ),
    (
        {"override_settings": {"img2img_color_correction": "no way"}},
        "override_settings.img2img_color_correction",
        "invalid_type",
    ),
    ({"override_settings": {"eta_noise_seed_delta": -1}}, "override_settings.eta_noise_seed_delta", "out_of_range"),
    (
        {"override_settings": {"inpainting_mask_weight": 1.5}},
        "override_settings.inpainting_mask_weight",
        "out_of_range",
    ),
    ({"override_settings": {"eta_ancestral": 2}}, "override_settings.eta_ancestral", "out_of_range"),
    ({"override_settings": {"randn_source": "TPU"}}, "override_settings.randn_source", "invalid_choice"),
    ({"override_settings": {"sd_vae": ""}}, "override_settings.sd_vae", "invalid_length"),
    ({"override_settings": {"samples_format": "bmp"}}, "override_settings.samples_format", "invalid_choice"),
    ({"override_settings": {"img2img_extra_noise": -0.1}}, "override_settings.img2img_extra_noise", "out_of_range"),
    ({"override_settings": {"overlay_inpaint": "maybe"}}, "override_settings.overlay_inpaint", "invalid_type"),
    ({"override_settings": {"return_mask": None}}, "override_settings.return_mask", "invalid_type"),
    ({"override_settings": {"return_mask_composite": []}}, "override_settings.return_mask_composite", "invalid_type"),
    (
        {"model": "a.safetensors", "override_settings": {"sd_model_checkpoint": "b.safetensors"}},
        "override_settings.sd_model_checkpoint",
        "conflict",
    ),
    ({"init_images": [ASSET] * 3, "batch_size": 2}, "init_images", "too_many_images"),
    ({"init_images": []}, "init_images", "missing"),
    ({"init_images": ASSET}, "init_images", "invalid_type"),
    ({"init_images": [ASSET, "asset:xyz"], "batch_size": 2}, "init_images.1", "invalid_image_ref"),
    ({"init_images": [f"asset:{SHA.upper()}"]}, "init_images.0", "invalid_image_ref"),
    ({"init_images": [""]}, "init_images.0", "invalid_image_ref"),
    ({"init_images": ["file:///etc/passwd"]}, "init_images.0", "invalid_image_ref"),
    ({"init_images": ["s3://bucket-only"]}, "init_images.0", "invalid_url"),
    ({"init_images": ["https://"]}, "init_images.0", "invalid_url"),
    ({"init_images": ["https://host/a b.png"]}, "init_images.0", "invalid_url"),
    ({"init_images": ["QUJ"]}, "init_images.0", "invalid_base64"),
    ({"init_images": ["QU!D"]}, "init_images.0", "invalid_base64"),
    ({"init_images": ["data:image/png;base64,"]}, "init_images.0", "invalid_base64"),
    ({"init_images": ["data:text/plain;base64,QUJD"]}, "init_images.0", "invalid_image_ref"),
    ({"init_images": ["data:image/png,QUJD"]}, "init_images.0", "invalid_image_ref"),
    ({"init_images": [5]}, "init_images.0", "invalid_type"),
    ({"mask": "not base64!"}, "mask", "invalid_base64"),
    ({"latent_mask": "asset:123"}, "latent_mask", "invalid_image_ref"),
]


@pytest.mark.parametrize(("patch", "field", "code"), BAD_FIELDS, ids=[f"{f}-{c}" for _, f, c in BAD_FIELDS])
def test_bad_field_is_a_422_naming_it(patch: dict[str, Any], field: str, code: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_job({**BASE, **patch}, LIMITS)
    error = caught.value
    assert not isinstance(error, PayloadTooLarge)
    assert error.http_status == 422
    assert [(p.field, p.code) for p in error.problems] == [(field, code)]
    assert error.field == field
    assert error.message.startswith(f"{field}: ")


def test_missing_init_images_is_named() -> None:
    assert problems_of({}) == [("init_images", "missing")]


def test_a_body_that_is_not_an_object_is_named_body() -> None:
    assert problems_of([ASSET]) == [("body", "invalid_type")]  # type: ignore[arg-type]


def test_every_problem_is_reported_at_once() -> None:
    found = problems_of({**BASE, "steps": 0, "width": 500, "bogus": 1, "override_settings": {"nope": 1}})
    assert sorted(found) == [
        ("bogus", "unknown_field"),
        ("override_settings.nope", "unknown_setting"),
        ("steps", "out_of_range"),
        ("width", "not_multiple_of_8"),
    ]


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        ({"steps": 151}, ["from 1 to 150", "151"]),
        ({"cfg_scale": "high"}, ["number", "from 0.0 to 30.0"]),
        ({"batch_size": 17}, ["from 1 to 16"]),
        ({"n_iter": 65}, ["from 1 to 64"]),
        ({"resize_mode": 9}, ["from 0 to 3"]),
        ({"width": 500}, ["multiple of 8", "496", "504"]),
        ({"width": 4104, "height": 4096}, [str(4096 * 4096)]),
        ({"scheduler": "nope"}, list(SCHEDULE_LABELS)),
        ({"force_task_id": "a b"}, ["1-128", "A-Z a-z 0-9 . _ - : ( )"]),
        ({"styles": ["x"]}, ["prompt"]),
        ({"mask_blur": 4.5}, ["whole number", "mask_blur_x"]),
        ({"init_images": [ASSET] * 3, "batch_size": 2}, ["3 images", "batch_size 2"]),
        ({"sampler_index": "Euler"}, ["sampler_name"]),
        ({"override_settings": {"CLIP_stop_at_last_layers": 13}}, ["from 1 to 12"]),
    ],
)
def test_message_says_what_is_allowed(patch: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(InputError) as caught:
        parse_job({**BASE, **patch}, LIMITS)
    for word in words:
        assert word in caught.value.problems[0].message


def test_unknown_sampler_lists_the_known_names() -> None:
    with pytest.raises(InputError) as caught:
        job_of(sampler_name="DPM++ 4M SDE")
    assert caught.value.field == "sampler_name"
    assert caught.value.code == "unknown_sampler"
    for label in SAMPLER_LABELS:
        assert label in caught.value.message


def test_unknown_override_key_lists_the_supported_keys() -> None:
    with pytest.raises(InputError) as caught:
        job_of(override_settings={"img2img_fix_steps": True, "sd_hypernetwork": "x"})
    assert caught.value.field == "override_settings.sd_hypernetwork"
    for key in SUPPORTED_OVERRIDE_KEYS:
        assert key in caught.value.message


def test_the_limits_come_from_the_context() -> None:
    tight = SpecLimits(max_image_pixels=256 * 256, max_inline_image_bytes=10, max_batch_size=2, max_n_iter=3)
    assert problems_of({**BASE, "width": 256, "height": 264}, tight) == [("width", "too_many_pixels")]
    assert problems_of({**BASE, "batch_size": 3}, tight) == [("batch_size", "out_of_range")]
    assert problems_of({**BASE, "n_iter": 4}, tight) == [("n_iter", "out_of_range")]
    job = parse_job({**BASE, "width": 256, "height": 256, "batch_size": 2, "n_iter": 3}, tight)
    assert (job.width, job.height, job.batch_size, job.n_iter) == (256, 256, 2, 3)


def test_limits_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, max_image_pixels=1000, max_inline_image_bytes=2000, max_batch_size=3, max_n_iter=4
    )
    assert SpecLimits.from_settings(settings) == SpecLimits(1000, 2000, 3, 4)


# --------------------------------------------------------------------------------------------------------------
# Accepted values at the edges


@pytest.mark.parametrize(
    "patch",
    [
        {"width": 64, "height": 64},
        {"width": 4096, "height": 4096},  # exactly the pixel limit
        {"steps": 1},
        {"steps": 150},
        {"denoising_strength": 0},
        {"denoising_strength": 1},
        {"batch_size": 16, "n_iter": 64},
        {"seed": 0},
        {"seed": 2**32 - 1},
        {"priority": -1000},
        {"priority": 1000},
        {"cfg_scale": 0},
        {"eta": 0},
        {"init_images": [ASSET, ASSET], "batch_size": 4},  # k ≤ batch_size: the worker runs k per batch
        {"force_task_id": "task(img2img-ABC1234)"},
        {"force_task_id": "a" * 128},
        {"force_task_id": "A-z_0.9:()"},
        {"webhook_url": "https://hooks.example.com/renderfarm?x=1"},
        {"tags": [f"t{i}" for i in range(16)]},
        {"sampler_name": "k_dpmpp_2m", "scheduler": "karras"},
        {"styles": []},
        {"mask": ASSET, "latent_mask": ASSET, "mask_blur": 0},
    ],
)
def test_valid_edge_values_are_accepted(patch: dict[str, Any]) -> None:
    job = job_of(**patch)
    for key, value in patch.items():
        if key != "mask_blur":
            assert getattr(job, key) == value


def test_every_supported_override_is_accepted_with_its_type() -> None:
    overrides = {
        "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors",
        "CLIP_stop_at_last_layers": 2,
        "img2img_fix_steps": True,
        "initial_noise_multiplier": 0.5,  # accepted, but no effect (resolved before overrides, as the reference)
        "img2img_background_color": "#00FF7f",
        "img2img_color_correction": True,
        "eta_noise_seed_delta": 31337,
        "inpainting_mask_weight": 0.5,
        "eta_ancestral": 0.8,
        "randn_source": "CPU",
        "sd_vae": "None",  # the checkpoint's own VAE; a VAE file name is checked by the scheduler (model_checks)
        "samples_format": "png",
        "img2img_extra_noise": 0.1,
        "overlay_inpaint": False,
        "return_mask": True,
        "return_mask_composite": True,
        "emphasis": "No norm",
        "comma_padding_backtrack": 0,
        "use_old_scheduling": True,
        "pad_cond_uncond": True,
        "pad_cond_uncond_v0": True,
        "s_min_uncond_all": True,
        "live_previews_enable": False,
        "show_progress_every_n_steps": -1,
        "show_progress_type": "TAESD",
        "show_progress_grid": False,
        "eta_ddim": 0.3,
        "s_churn": 0.5,
        "s_tmin": 0.1,
        "s_tmax": 9.0,
        "s_noise": 1.01,
        "sigma_min": 0.05,
        "sigma_max": 10.0,
        "rho": 5.0,
        "always_discard_next_to_last_sigma": True,
        "sgm_noise_multiplier": True,
        "uni_pc_variant": "bh2",
        "uni_pc_skip_type": "logSNR",
        "uni_pc_order": 2,
        "uni_pc_lower_order_final": False,
        "beta_dist_alpha": 0.5,
        "beta_dist_beta": 0.7,
        "sdxl_crop_top": 16,
        "sdxl_crop_left": 8,
    }
    assert set(overrides) == set(SUPPORTED_OVERRIDE_KEYS)
    job = job_of(override_settings=overrides)
    assert job.override_settings == overrides
    assert job.resolved_model == "v1-5-pruned-emaonly.safetensors"


def test_uni_pc_vary_coeff_is_refused_naming_the_option() -> None:
    # The reference's third UniPC variant has no diffusers solver: refused rather than rendered as another variant.
    with pytest.raises(InputError) as caught:
        job_of(override_settings={"uni_pc_variant": "vary_coeff"})
    assert caught.value.field == "override_settings.uni_pc_variant"


def test_model_and_an_equal_checkpoint_override_agree() -> None:
    job = job_of(model="m.safetensors", override_settings={"sd_model_checkpoint": "m.safetensors"})
    assert job.resolved_model == "m.safetensors"
    assert job_of(model="x").resolved_model == "x"


def test_effective_batch_size_follows_the_reference() -> None:
    assert job_of(batch_size=4).effective_batch_size == 4  # one image, repeated
    assert job_of(init_images=[ASSET, ASSET, ASSET], batch_size=4).effective_batch_size == 3


# --------------------------------------------------------------------------------------------------------------
# Image references


def test_image_refs_are_classified() -> None:
    wrapped = "\n".join(INLINE[i : i + 8] for i in range(0, len(INLINE), 8))
    job = job_of(
        init_images=[
            ASSET,
            "s3://farm-bucket/tenant/in.png",
            "https://storage.example.com/in.png",
            INLINE,
            f"data:image/png;base64,{INLINE}",
            wrapped,
        ],
        batch_size=6,
        mask=f"data:image/webp;charset=binary;base64,{INLINE}",
    )
    refs = job.init_image_refs
    assert refs[0] == ImageRef("asset", SHA)
    assert refs[1] == ImageRef("url", "s3://farm-bucket/tenant/in.png")
    assert refs[2] == ImageRef("url", "https://storage.example.com/in.png")
    assert refs[3] == ImageRef("inline", INLINE)
    assert refs[4] == ImageRef("inline", INLINE, "image/png")
    assert refs[5] == ImageRef("inline", INLINE)
    assert refs[5].inline_bytes() == PNG_BYTES
    assert refs[5].inline_size == len(PNG_BYTES)
    assert job.mask_ref == ImageRef("inline", INLINE, "image/webp")
    assert job.latent_mask_ref is None
    assert job.init_images[5] == wrapped  # the job keeps what was sent; the ref is the parsed view


def test_inline_ref_repr_is_short() -> None:
    ref = parse_image_ref("QUJD" * 10_000)
    assert len(repr(ref)) < 200
    with pytest.raises(ValueError, match="no inline data"):
        parse_image_ref(ASSET).inline_bytes()


def test_parse_image_ref_names_the_field() -> None:
    with pytest.raises(InputError) as caught:
        parse_image_ref("asset:nothex", field="init_images.2")
    assert (caught.value.field, caught.value.code) == ("init_images.2", "invalid_image_ref")
    with pytest.raises(PayloadTooLarge) as too_large:
        parse_image_ref(INLINE, field="mask", max_inline_bytes=len(PNG_BYTES) - 1)
    assert (too_large.value.field, too_large.value.http_status) == ("mask", 413)
    assert parse_image_ref(INLINE, max_inline_bytes=len(PNG_BYTES)).kind == "inline"  # exactly the limit


@pytest.mark.parametrize("field", ["init_images.0", "mask", "latent_mask"])
def test_inline_image_over_the_limit_is_a_413(field: str) -> None:
    big = base64.b64encode(b"x" * (LIMITS.max_inline_image_bytes + 1)).decode()
    patch = {"init_images": [big]} if field == "init_images.0" else {field: f"data:image/png;base64,{big}"}
    with pytest.raises(PayloadTooLarge) as caught:
        parse_job({**BASE, **patch}, LIMITS)
    assert caught.value.http_status == 413
    assert (caught.value.field, caught.value.code) == (field, "too_large")
    assert str(LIMITS.max_inline_image_bytes) in caught.value.message


def test_a_413_leads_with_the_oversized_image_and_keeps_the_rest() -> None:
    big = base64.b64encode(b"x" * 2000).decode()
    with pytest.raises(PayloadTooLarge) as caught:
        parse_job({"init_images": [big], "steps": 0}, LIMITS)
    assert [(p.field, p.code) for p in caught.value.problems] == [
        ("init_images.0", "too_large"),
        ("steps", "out_of_range"),
    ]


# --------------------------------------------------------------------------------------------------------------
# mask_blur (img2img-semantics.md §1)


@pytest.mark.parametrize(
    ("patch", "x", "y"),
    [
        ({}, 4, 4),
        ({"mask_blur": 8}, 8, 8),
        ({"mask_blur": 8, "mask_blur_x": 2, "mask_blur_y": 3}, 8, 8),  # an int overrides both
        ({"mask_blur": 0, "mask_blur_x": 2}, 0, 0),
        ({"mask_blur": None, "mask_blur_x": 2, "mask_blur_y": 3}, 2, 3),  # None has no effect
        ({"mask_blur_x": 2, "mask_blur_y": 3}, 2, 3),
        ({"mask_blur": 6.0}, 6, 6),  # an integral float counts as the int
    ],
)
def test_mask_blur_sets_the_effective_blur(patch: dict[str, Any], x: int, y: int) -> None:
    job = job_of(**patch)
    assert (job.mask_blur_x, job.mask_blur_y) == (x, y)
    assert type(job.mask_blur_x) is int


def test_mask_blur_float_is_stored_as_int() -> None:
    job = job_of(mask_blur=6.0)
    assert job.mask_blur == 6
    assert type(job.mask_blur) is int


@pytest.mark.parametrize("value", [4.5, True, False, "4", [4]])
def test_mask_blur_that_is_not_a_whole_number_is_refused(value: Any) -> None:
    with pytest.raises(InputError) as caught:
        job_of(mask_blur=value, mask_blur_x=2)
    assert [(p.field, p.code) for p in caught.value.problems] == [("mask_blur", "invalid_type")]


# --------------------------------------------------------------------------------------------------------------
# Sampler and schedule resolution


@pytest.mark.parametrize(
    ("sampler_name", "scheduler", "sampler", "schedule"),
    [
        ("DPM++ 2M Karras", None, "DPM++ 2M", "karras"),
        ("dpm++ 2m karras", None, "DPM++ 2M", "karras"),
        ("DPM++ 2M Karras", "Automatic", "DPM++ 2M", "karras"),  # automatic does not beat the suffix
        ("DPM++ 2M Karras", "exponential", "DPM++ 2M", "exponential"),  # an explicit schedule wins
        ("DPM++ 2M Karras", "Uniform", "DPM++ 2M", "uniform"),
        ("DPM++ 2M", None, "DPM++ 2M", "automatic"),
        ("DPM++ 2M", "KARRAS", "DPM++ 2M", "karras"),
        ("Euler a", None, "Euler a", "automatic"),
        ("k_euler_a", None, "Euler a", "automatic"),
        ("EULER", "automatic", "Euler", "automatic"),
        ("DPM++ 2M SDE Exponential", None, "DPM++ 2M SDE", "exponential"),
    ],
)
def test_sampler_and_schedule_resolution(sampler_name: str, scheduler: str | None, sampler: str, schedule: str) -> None:
    job = job_of(sampler_name=sampler_name, scheduler=scheduler)
    assert job.sampler.name == sampler
    assert job.schedule.name == schedule
    assert job.sampler_name == sampler_name  # what the client sent is kept


# --------------------------------------------------------------------------------------------------------------
# Canonical JSON and the request hash


def test_canonical_json_is_sorted_compact_and_complete() -> None:
    raw = canonical_json(job_of(prompt="a cat ☕"))
    data = json.loads(raw)
    assert list(data) == sorted(data)
    assert b", " not in raw
    assert b'": ' not in raw
    assert "a cat ☕".encode() in raw  # UTF-8, not \u escapes
    # Fields added later are left out at their defaults, so that requests stored before they existed keep their hash.
    assert set(data) == set(Img2ImgJob.model_fields) - {"force_task_id", "mask_blur", *FIELDS_ADDED_LATER}
    assert json.loads(canonical_json(job_of(tiling=True)))["tiling"] is True
    assert json.loads(canonical_json(job_of(s_min_uncond=2.0)))["s_min_uncond"] == 2.0
    assert data["steps"] == 50


def test_hash_ignores_key_order() -> None:
    a = {"init_images": [ASSET], "prompt": "p", "override_settings": {"eta_ancestral": 0.5, "sd_vae": "None"}}
    b = {"override_settings": {"sd_vae": "None", "eta_ancestral": 0.5}, "prompt": "p", "init_images": [ASSET]}
    assert request_hash(parse_job(a, LIMITS)) == request_hash(parse_job(b, LIMITS))


def test_hash_is_the_same_for_omitted_and_explicit_defaults() -> None:
    explicit = {"init_images": [ASSET], **REFERENCE_API_DEFAULTS}
    assert request_hash(parse_job(explicit, LIMITS)) == request_hash(job_of())
    assert canonical_json(parse_job(explicit, LIMITS)) == canonical_json(job_of())


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"cfg_scale": 7}, {"cfg_scale": 7.0}),
        ({"steps": 20}, {"steps": 20.0}),
        ({"force_task_id": "task(one)"}, {"force_task_id": "task(two)"}),
        ({"mask_blur": 8}, {"mask_blur_x": 8, "mask_blur_y": 8}),
        ({"sampler_name": "DPM++ 2M Karras"}, {"sampler_name": "DPM++ 2M", "scheduler": "Karras"}),
        ({"sampler_name": "k_euler"}, {"sampler_name": "euler"}),
        ({"scheduler": "Automatic"}, {}),
    ],
)
def test_hash_is_the_same_for_spellings_of_one_request(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert request_hash(job_of(**a)) == request_hash(job_of(**b))


@pytest.mark.parametrize(
    "patch",
    [
        {"prompt": "a dog"},
        {"steps": 49},
        {"denoising_strength": 0.7},
        {"seed": 1},
        {"mask": ASSET},
        {"init_images": [f"asset:{'f' * 64}"]},
        {"sampler_name": "Euler a"},
        {"scheduler": "karras"},
        {"mask_blur_x": 5},
        {"override_settings": {"img2img_fix_steps": True}},
        {"priority": 1},
        {"tags": ["x"]},
        {"model": "other"},
    ],
)
def test_hash_differs_when_a_field_changes(patch: dict[str, Any]) -> None:
    assert request_hash(job_of(**patch)) != request_hash(job_of())


def test_request_hash_is_sha256_hex() -> None:
    digest = request_hash(job_of())
    assert len(digest) == 64
    assert int(digest, 16) >= 0


# --------------------------------------------------------------------------------------------------------------
# Storage round trip


def test_round_trip_through_request_json() -> None:
    job = job_of(
        init_images=[ASSET, INLINE],
        batch_size=2,
        mask=f"data:image/png;base64,{INLINE}",
        mask_blur=6,
        sampler_name="DPM++ 2M Karras",
        override_settings={"CLIP_stop_at_last_layers": 2, "img2img_fix_steps": True},
        tags=["a", "b"],
        eta=0.5,
    )
    stored = json.loads(json.dumps(job.to_request_json()))  # what a JSON column gives back
    again = Img2ImgJob.from_request_json(stored)
    assert again == job
    assert request_hash(again) == request_hash(job)


def test_the_stored_request_leaves_the_task_id_out() -> None:
    # The id is the row's key (its task_id column), so the stored request does not carry it; the request hash is the
    # same with or without it.
    job = job_of(force_task_id="task(img2img-ABC1234)")
    stored = json.loads(json.dumps(job.to_request_json()))
    assert "force_task_id" not in stored
    again = Img2ImgJob.from_request_json(stored)
    assert again.force_task_id is None
    assert again == job_of()
    assert request_hash(again) == request_hash(job)


def test_from_request_json_does_not_recheck_the_limits() -> None:
    big = {"init_images": [ASSET], "batch_size": 32, "width": 8192, "height": 8192}
    with pytest.raises(InputError):
        parse_job(big, LIMITS)
    job = Img2ImgJob.from_request_json(big)
    assert (job.batch_size, job.width) == (32, 8192)


def test_from_request_json_still_checks_the_structure() -> None:
    with pytest.raises(InputError) as caught:
        Img2ImgJob.from_request_json({"init_images": [ASSET], "steps": 0, "future_field": 1})
    assert sorted((p.field, p.code) for p in caught.value.problems) == [
        ("future_field", "unknown_field"),
        ("steps", "out_of_range"),
    ]


def test_parse_job_accepts_any_mapping() -> None:
    assert parse_job(MappingProxyType({"init_images": [ASSET], "steps": 20}), LIMITS).steps == 20


def test_the_job_is_immutable() -> None:
    job = job_of()
    with pytest.raises(ValueError, match="frozen"):
        job.steps = 20  # type: ignore[misc]
