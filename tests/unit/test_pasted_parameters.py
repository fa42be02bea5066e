"""scheduler/a1111/pasted_parameters.py: `POST /sdapi/v1/png-info`'s `parameters`, key for key as the webui's paste
parses an infotext (the expected dicts are written out here from the reference's behaviour)."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.a1111.pasted_parameters import pasted_parameters

# What the webui fills in for every key an infotext lacks.
FILLED: dict[str, Any] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}


def test_a_farm_infotext_reads_as_the_webui_reads_it() -> None:
    text = (
        "a red, square cat\nsecond line\nNegative prompt: blur\nugly\n"
        "Steps: 6, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 64x48, Model hash: "
        'f7b0b88c44, Model: x, Denoising strength: 0.6, Lora hashes: "style: 0123456789ab, other: ba9876543210", '
        "Version: renderfarm 0.1.0"
    )
    assert pasted_parameters(text) == {
        **FILLED,
        "Prompt": "a red, square cat\nsecond line",
        "Negative prompt": "blur\nugly",
        "Steps": "6",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "42",
        "Size-1": "64",
        "Size-2": "48",
        "Model hash": "f7b0b88c44",
        "Model": "x",
        "Denoising strength": "0.6",
        "Lora hashes": "style: 0123456789ab, other: ba9876543210",
        "Version": "renderfarm 0.1.0",  # not a webui version: no compatibility keys
    }


def test_a_last_line_of_fewer_than_three_pairs_is_prompt_text() -> None:
    parsed = pasted_parameters("photo\nSteps: 20, Seed: 1")
    assert parsed["Prompt"] == "photo\nSteps: 20, Seed: 1"
    assert "Steps" not in parsed
    assert pasted_parameters("") == {**FILLED, "Prompt": "", "Negative prompt": ""}


def test_a_hypernet_becomes_a_tag_and_emphasis_is_named_only_when_used() -> None:
    parsed = pasted_parameters("a (cat:1.2)\nSteps: 2, Seed: 1, Hypernet: anime, Hypernet strength: 0.5")
    assert parsed["Prompt"] == "a (cat:1.2)<hypernet:anime:0.5>"
    assert parsed["Emphasis"] == "Original"
    assert "Emphasis" not in pasted_parameters("a cat BREAK dog\nSteps: 2, Seed: 1, CFG scale: 7")


def test_the_old_hires_fix_first_pass_becomes_the_size() -> None:
    parsed = pasted_parameters("x\nSteps: 2, Size: 1024x768, First pass size: 0x0, Seed: 1")
    # 0×0: the size scaled to 512² pixels, each side rounded up to a multiple of 64.
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Hires resize-1"], parsed["Hires resize-2"]) == (
        640,
        448,
        1024,
        768,
    )
    explicit = pasted_parameters("x\nSteps: 2, Size: 1024x768, First pass size: 512x384, Seed: 1")
    assert (explicit["Size-1"], explicit["Size-2"]) == (512, 384)


SWITCH = "Refiner switch by sampling steps"  # implied by a refiner of a version before 1.8.0


@pytest.mark.parametrize(
    ("version", "keys"),
    [
        (
            "v1.5.1",
            {"Old prompt editing timelines": True, "Pad conds v0": True, "Downcast alphas_cumprod": True, SWITCH: True},
        ),
        ("v1.7.0-224-g1234abc", {"Downcast alphas_cumprod": True, SWITCH: True}),
        ("v1.7.0-225-g1234abc", {SWITCH: True}),
        ("1.8.0-RC", {SWITCH: True}),
        ("1.10.1", {}),
        ("f2.0.1v1.10.1-previous-3-g1", {}),  # another program's version
    ],
)
def test_old_webui_versions_get_their_compatibility_keys(version: str, keys: dict[str, bool]) -> None:
    parsed = pasted_parameters(f"a [b:c:3]\nSteps: 2, Sampler: DDIM, Refiner: xl, Version: {version}")
    compatibility = ("Old prompt editing timelines", "Pad conds v0", "Downcast alphas_cumprod")
    got = {key: parsed[key] for key in compatibility if key in parsed}
    if parsed["Refiner switch by sampling steps"]:
        got["Refiner switch by sampling steps"] = True
    assert got == keys
