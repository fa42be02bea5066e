"""Nothing an A1111 client sends is silently ignored: every request field and webui option is honoured, warned about
or refused (scheduler/a1111/field_policy.py; the table in docs/api.md "What the farm honours, warns about, or
refuses"). Without a farm: the live answers are in test_img2img.py."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from scheduler.a1111.field_policy import (
    CONTRACT_REFUSED_OPTIONS,
    CONTRACT_WARNED_OPTIONS,
    FIELD_RULES,
    MAX_NAMED,
    OPTION_RULES,
    TRANSLATED_OPTIONS,
    Treatment,
    review_overrides,
    review_request,
)
from scheduler.a1111.schema import Img2ImgRequest
from scheduler.a1111.translate import INFOTEXT_KEYS_READ, answer_image, answer_infotext, job_body
from shared.errors import InputError
from shared.images import encode_png
from shared.job.spec import SUPPORTED_OVERRIDE_KEYS, SpecLimits, parse_job
from shared.job.warnings import job_warnings

IMAGE = "iVBORw0KGgo="
API_DOCS = "docs/api.md"

# A value that asks for something, per field the farm refuses or warns about (the default asks for nothing).
ASKING: dict[str, Any] = {
    "restore_faces": True,
    "refiner_checkpoint": "sd_xl_refiner_1.0.safetensors",
    "script_name": "outpainting mk2",
    "alwayson_scripts": {"ControlNet": {"args": []}},
    "override_settings_restore_afterwards": False,
    "firstpass_image": IMAGE,
    "comments": {"note": "x"},
    "script_args": [1, 2],
    "disable_extra_networks": True,
}

# A value other than the default for each field the farm honours in the job it makes.
CHANGED: dict[str, Any] = {
    "prompt": "a cat",
    "negative_prompt": "blurry",
    "styles": ["my style"],  # passed on; the job contract refuses it (no style presets)
    "seed": 7,
    "subseed": 8,
    "subseed_strength": 0.5,
    "seed_resize_from_h": 256,
    "seed_resize_from_w": 256,
    "sampler_name": "DPM++ 2M",
    "scheduler": "karras",
    "batch_size": 2,
    "n_iter": 3,
    "steps": 20,
    "cfg_scale": 5.0,
    "width": 256,
    "height": 256,
    "eta": 0.5,
    "denoising_strength": 0.3,
    "override_settings": {"CLIP_stop_at_last_layers": 2},
    "init_images": ["aGVsbG8="],
    "resize_mode": 1,
    "image_cfg_scale": 1.5,
    "mask": IMAGE,
    "mask_blur_x": 2,
    "mask_blur_y": 3,
    "mask_blur": 5,
    "mask_round": False,
    "inpainting_fill": 1,
    "inpaint_full_res": False,
    "inpaint_full_res_padding": 32,
    "inpainting_mask_invert": 1,
    "initial_noise_multiplier": 0.9,
    "latent_mask": IMAGE,
    "tiling": True,
    "s_min_uncond": 1.5,
    "s_churn": 0.5,
    "s_tmax": 10.0,
    "s_tmin": 0.2,
    "s_noise": 1.003,
    "sampler_index": "Euler a",
    "infotext": "a dog\nSteps: 12, Sampler: Euler, CFG scale: 4",
}
# Honoured by the answer rather than the job (tests/a1111/test_img2img.py): the task id, what is echoed, the images.
ANSWER_FIELDS = ("force_task_id", "include_init_images", "send_images", "save_images")


def request(**fields: Any) -> Img2ImgRequest:
    return Img2ImgRequest.model_validate({"init_images": [IMAGE], **fields})


def translated(req: Img2ImgRequest) -> dict[str, Any]:
    return job_body(req, task_id="task(img2img-T000001)", default_model="tiny", tenant_options={})


def test_every_request_field_has_a_rule() -> None:
    # A field added to the request without a decision fails here: the farm could otherwise ignore it silently.
    assert set(FIELD_RULES) == set(Img2ImgRequest.model_fields)
    for name, rule in FIELD_RULES.items():
        assert rule.reason, name
        if rule.treatment in (Treatment.WARNED, Treatment.REFUSED):
            assert name in ASKING, f"{name}: give a value that asks for something"
        if rule.treatment is Treatment.HONOURED:
            assert name in CHANGED or name in ANSWER_FIELDS, f"{name}: say how it is honoured"


def test_every_field_is_in_the_table_of_the_api_document() -> None:
    table = Path(API_DOCS).read_text(encoding="utf-8")
    for name in FIELD_RULES:
        assert f"| `{name}` |" in table, name
    for name in OPTION_RULES:
        assert f"`{name}`" in table, name


def test_defaults_ask_for_nothing() -> None:
    assert review_request(request()) == []


@pytest.mark.parametrize("name", sorted(n for n, r in FIELD_RULES.items() if r.treatment is Treatment.REFUSED))
def test_refused_fields_are_a_422_naming_the_field(name: str) -> None:
    with pytest.raises(InputError) as caught:
        review_request(request(**{name: ASKING[name]}))
    assert caught.value.field is not None
    assert caught.value.field.split(".")[0] == name
    assert caught.value.code in ("unsupported", "unknown_script")


@pytest.mark.parametrize("name", sorted(n for n, r in FIELD_RULES.items() if r.treatment is Treatment.WARNED))
def test_warned_fields_are_named_in_the_warnings(name: str) -> None:
    warnings = review_request(request(**{name: ASKING[name]}))
    assert [w["field"] for w in warnings] == [name]
    assert warnings[0]["message"].startswith(f"{name}: ")
    assert warnings[0]["code"]


def test_refusals_are_reported_together() -> None:
    with pytest.raises(InputError) as caught:
        review_request(request(restore_faces=True, script_name="x", override_settings={"sd_unet": "my.safetensors"}))
    assert [p.field for p in caught.value.problems] == ["restore_faces", "script_name", "override_settings.sd_unet"]


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_honoured_fields_reach_the_job(name: str) -> None:
    # Honoured means the translated job changes with the field (what the worker renders from).
    if name == "sampler_index":
        assert translated(request(sampler_index="Euler a"))["sampler_name"] == "Euler a"
        return
    assert translated(request(**{name: CHANGED[name]})) != translated(request()), name
    assert review_request(request(**{name: CHANGED[name]})) == []


def test_no_effect_fields_change_nothing_and_warn_about_nothing() -> None:
    names = [n for n, r in FIELD_RULES.items() if r.treatment is Treatment.NO_EFFECT]
    assert set(names) == {"do_not_save_samples", "do_not_save_grid", "refiner_switch_at"}
    values = {"do_not_save_samples": True, "do_not_save_grid": True, "refiner_switch_at": 0.8}
    assert review_request(request(**values)) == []
    assert translated(request(**values)) == translated(request())


def test_refiner_checkpoint_none_spellings_are_not_a_refiner() -> None:
    assert review_request(request(refiner_checkpoint="", refiner_switch_at=0.8)) == []
    assert review_request(request(refiner_checkpoint="None")) == []


def test_unknown_fields_are_named_not_used() -> None:
    req = request(denoising_strenght=0.3, send_image=False)
    warnings = review_request(req)
    assert [(w["code"], w["field"]) for w in warnings] == [
        ("unknown_field", "denoising_strenght"),
        ("unknown_field", "send_image"),
    ]
    assert translated(req) == translated(request())


def test_many_unknown_fields_are_counted_and_odd_names_are_escaped() -> None:
    fields = {f"extra_{i}": i for i in range(MAX_NAMED + 5)}
    warnings = review_request(request(**fields))
    assert len(warnings) == MAX_NAMED + 1
    assert "5 more" in warnings[-1]["message"]
    odd = review_request(request(**{"bad\x00name\u00e9" + "x" * 100: 1}))
    assert odd[0]["field"].startswith("bad\\x00name\\xe9xxx")  # escaped: a NUL cannot be stored as JSON text
    assert odd[0]["field"].isprintable()
    assert len(odd[0]["field"]) <= 64


# ----------------------------------------------------------------------------------------------------------------
# override_settings

# Options of the webui (v1.10.1) that clients send in override_settings or POST /sdapi/v1/options, beyond the job
# contract's own keys: the ones that change a render and some that do not (saving, UI, system).
REFERENCE_OPTIONS: dict[str, Any] = {
    "sd_unet": "unet.safetensors",
    "upscaler_for_img2img": "R-ESRGAN 4x+",
    "face_restoration": True,
    "tiling": True,
    "token_merging_ratio": 0.3,
    "token_merging_ratio_img2img": 0.3,
    "sd_vae_encode_method": "TAESD",
    "sd_vae_decode_method": "TAESD",
    "sd_noise_schedule": "Zero Terminal SNR",
    "enable_quantization": True,
    "sd_hypernetwork": "anime",
    "sdxl_crop_top": 16,
    "sdxl_crop_left": 16,
    "samples_save": False,
    "grid_save": False,
    "jpeg_quality": 95,
    "enable_pnginfo": False,
    "face_restoration_model": "GFPGAN",
    "upcast_attn": True,
    "cross_attention_optimization": "sdp",
    "outdir_img2img_samples": "/tmp/out",
    "localization": "None",
}


def option_treatment(key: str) -> Treatment:
    if key in TRANSLATED_OPTIONS:
        return Treatment.HONOURED
    if key in CONTRACT_REFUSED_OPTIONS:
        return Treatment.REFUSED
    if key in CONTRACT_WARNED_OPTIONS:
        return Treatment.WARNED
    if key in SUPPORTED_OVERRIDE_KEYS:
        return Treatment.HONOURED
    return Treatment.REFUSED if key in OPTION_RULES else Treatment.WARNED


def test_option_tables_do_not_overlap_the_contract() -> None:
    # A webui option the job contract learns to honour must leave OPTION_RULES (it would be dead there).
    assert not set(OPTION_RULES) & set(SUPPORTED_OVERRIDE_KEYS)
    assert set(CONTRACT_WARNED_OPTIONS + CONTRACT_REFUSED_OPTIONS) <= set(SUPPORTED_OVERRIDE_KEYS)
    assert set(OPTION_RULES) <= set(REFERENCE_OPTIONS)


@pytest.mark.parametrize("key", sorted(set(REFERENCE_OPTIONS) - set(SUPPORTED_OVERRIDE_KEYS)))
def test_each_webui_option_is_honoured_refused_or_named(key: str) -> None:
    value = REFERENCE_OPTIONS[key]
    if option_treatment(key) is Treatment.HONOURED:
        assert review_request(request(override_settings={key: value})) == []
        assert translated(request(override_settings={key: value}))[key] == value  # a job field now
        return
    if option_treatment(key) is Treatment.REFUSED:
        with pytest.raises(InputError) as caught:
            review_request(request(override_settings={key: value}))
        assert caught.value.field == f"override_settings.{key}"
        assert caught.value.code == "unsupported"
        # At its default the option changes nothing and passes quietly.
        assert review_request(request(override_settings={key: OPTION_RULES[key].defaults[0]})) == []
    else:
        warnings = review_request(request(override_settings={key: value}))
        assert [(w["code"], w["field"]) for w in warnings] == [("ignored_setting", f"override_settings.{key}")]
    assert translated(request(override_settings={key: value}))["override_settings"] == {}


def test_contract_options_are_honoured_or_handled_by_the_contract() -> None:
    for key in SUPPORTED_OVERRIDE_KEYS:
        assert review_overrides({key: object()}) == []  # the spec checks these values, not the policy


def test_sd_vae_is_own_vae_or_a_file_name_for_the_scheduler_to_check() -> None:
    # The contract takes any name; the scheduler refuses names its models folder lacks (tests/api/test_model_files.py).
    base = {"init_images": [IMAGE]}
    for value in ("Automatic", "None", "vae-ft-mse-840000-ema-pruned.safetensors"):
        job = parse_job({**base, "override_settings": {"sd_vae": value}}, SpecLimits())
        assert job.override_settings["sd_vae"] == value


def test_contract_warnings() -> None:
    base: dict[str, Any] = {"init_images": [IMAGE]}
    assert job_warnings(parse_job(base, SpecLimits())) == []
    assert job_warnings(parse_job({**base, "override_settings": {"samples_format": "png"}}, SpecLimits())) == []
    job = parse_job(
        {
            **base,
            "override_settings": {"initial_noise_multiplier": 0.5, "samples_format": "webp"},
        },
        SpecLimits(),
    )
    assert [(w["code"], w["field"]) for w in job_warnings(job)] == [
        ("no_effect", "override_settings.initial_noise_multiplier"),
    ]


# ----------------------------------------------------------------------------------------------------------------
# samples_format in the answer


@pytest.mark.parametrize(("samples_format", "pil_format"), [("jpg", "JPEG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_answer_images_follow_samples_format(samples_format: str, pil_format: str) -> None:
    infotext = "a cät\nSteps: 2, Sampler: Euler"
    png = encode_png(Image.new("RGB", (64, 64), (200, 40, 40)), infotext)
    encoded = answer_image(png, samples_format)
    with Image.open(io.BytesIO(encoded)) as picture:
        assert picture.format == pil_format
        assert picture.mode == "RGB"
        assert abs(picture.getpixel((10, 10))[0] - 200) <= 4  # type: ignore[index]
    assert answer_infotext(encoded) == infotext
    assert answer_image(png, "png") == png
    assert answer_infotext(png) == infotext
    assert base64.b64encode(encoded)  # what the route sends


def test_tiling_field_wins_over_the_option_and_infotext_fills_it() -> None:
    assert translated(request())["tiling"] is False
    assert translated(request(tiling=False, override_settings={"tiling": True}))["tiling"] is False
    assert translated(request(tiling=None, override_settings={"tiling": True}))["tiling"] is True
    assert translated(request(infotext="cat\nSteps: 4, Tiling: True"))["tiling"] is True
    # Not kept as a tenant option: named instead.
    assert [w["field"] for w in review_overrides({"tiling": True}, prefix="", translated=False)] == ["tiling"]


def test_infotext_parameters_the_farm_does_not_apply_are_named() -> None:
    text = (
        "a cat\nNegative prompt: dog\nSteps: 12, Sampler: Euler, Face restoration: CodeFormer, Model hash: abc, "
        "Token merging ratio: 0.5, Version: v1.10.1"
    )
    warnings = review_request(request(infotext=text))
    assert [(w["code"], w["field"]) for w in warnings] == [("ignored_infotext", "infotext")]
    assert warnings[0]["message"].endswith("not applied: Face restoration, Token merging ratio")
    assert review_request(request(infotext="a cat\nSteps: 12, Sampler: Euler, Model hash: abc")) == []


@pytest.mark.parametrize("key", sorted(INFOTEXT_KEYS_READ))
def test_each_infotext_key_said_to_be_read_is_read(key: str) -> None:
    values = {
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "Size": "128x128",
        "Seed resize from": "128x128",
        "Tiling": "True",
        "Inpaint area": "Whole picture",
        "Mask mode": "Inpaint not masked",
        "Masked content": "latent noise",
        "Model": "other-model",
        "RNG": "CPU",
    }
    value = values.get(key, "3")
    with_key = translated(request(infotext=f"p\nSteps: 20, {key}: {value}" if key != "Steps" else "p\nSteps: 3"))
    without = translated(request(infotext="p\nSteps: 20" if key != "Steps" else "p\nSampler: Euler"))
    assert with_key != without, key
