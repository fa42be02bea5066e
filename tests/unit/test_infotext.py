from __future__ import annotations

from shared.infotext import create_infotext, format_value, parse_infotext
from worker.engine.options import DEFAULT_OPTIONS, Options


def test_infotext_orders_keys_as_the_reference_and_drops_none() -> None:
    text = create_infotext(
        "a cat",
        "blurry",
        {"Seed": 5, "Steps": 20, "Sampler": "Euler", "Size": "64x64", "Denoising strength": 0.75, "VAE": None},
        {"Mask blur": 4, "Inpaint area": "Only masked", "Masked content": None},
    )
    assert text == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler, Seed: 5, Size: 64x64, Denoising strength: 0.75, Mask blur: 4, "
        "Inpaint area: Only masked"
    )


def test_awkward_values_are_quoted_and_parse_back() -> None:
    assert format_value("a, b") == '"a, b"'
    assert format_value(7.0) == "7"
    assert format_value(7.5) == "7.5"
    text = create_infotext("p", "", {"Steps": 4, "Model": "name:with,comma"}, {"Mask mode": "Inpaint not masked"})
    prompt, negative, params = parse_infotext(text)
    assert (prompt, negative) == ("p", "")
    assert params == {"Steps": "4", "Model": "name:with,comma", "Mask mode": "Inpaint not masked"}


def test_multiline_prompts_survive() -> None:
    text = create_infotext("line one\nline two", "neg one\nneg two", {"Steps": 1}, {})
    assert parse_infotext(text) == ("line one\nline two", "neg one\nneg two", {"Steps": "1"})


def test_overrides_change_a_copy_but_not_the_noise_multiplier() -> None:
    changed = DEFAULT_OPTIONS.with_overrides(
        {"img2img_fix_steps": True, "initial_noise_multiplier": 0.5, "sd_model_checkpoint": "x"}
    )
    assert changed.img2img_fix_steps is True
    # Resolved before overrides apply in the reference (semantics §1): an override has no effect.
    assert changed.initial_noise_multiplier == 1.0
    assert Options() == DEFAULT_OPTIONS
