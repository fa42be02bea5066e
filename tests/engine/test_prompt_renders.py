"""Whole renders with the tiny model and the prompt language (docs/engine.md, "Prompt encoding"): prompts over 75
tokens, prompt editing, AND, emphasis, negative guidance minimum sigma. The tiny tokenizer has one token per
character, so a prompt of more than 75 characters is more than 75 tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from shared.infotext import parse_infotext
from worker.engine.models import LoadedModel

from .conftest import PROMPT, Render, pixels

# 6 × 17 letters + 5 commas = 107 tokens (the tiny tokenizer drops spaces).
LONG_PROMPT = ", ".join([PROMPT] * 6)


@contextmanager
def unet_contexts(model: LoadedModel) -> Iterator[list[tuple[int, int]]]:
    """Record (rows, context tokens) of every UNet call."""
    calls: list[tuple[int, int]] = []

    def record(_module: Any, args: Any, kwargs: Any) -> None:
        context = kwargs["encoder_hidden_states"]
        calls.append((int(context.shape[0]), int(context.shape[1])))

    handle = model.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def differs(a: Any, b: Any) -> bool:
    return bool(np.abs(pixels(a) - pixels(b)).max() > 0)


@pytest.fixture
def plain(render: Render) -> Any:
    return render()[1].images[0]


def test_a_prompt_over_75_tokens_is_encoded_in_two_chunks(render: Render, tiny_model: LoadedModel, plain: Any) -> None:
    long_prompt = LONG_PROMPT
    with unet_contexts(tiny_model) as calls:
        _, processed = render(prompt=long_prompt)
    # cond (154 tokens) and uncond (77) differ in length: two UNet batches per evaluation, as the reference does.
    assert calls[:2] == [(1, 154), (1, 77)]
    assert differs(processed.images[0], plain)


def test_pad_cond_uncond_puts_them_in_one_batch_and_is_written(render: Render, tiny_model: LoadedModel) -> None:
    long_prompt = LONG_PROMPT
    with unet_contexts(tiny_model) as calls:
        _, processed = render(prompt=long_prompt, override_settings={"pad_cond_uncond": True})
    assert calls[0] == (2, 154)
    assert parse_infotext(processed.infotexts[0])[2]["Pad conds"] == "True"


def test_prompt_editing_switches_the_cond(render: Render, tiny_model: LoadedModel, plain: Any) -> None:
    with unet_contexts(tiny_model) as calls:
        _, edited = render(prompt=f"[{PROMPT}:a blue ball on the floor:2]")
    assert len(calls) == 5  # 6 steps at strength 0.75: t_enc + 1 = 5 evaluations; the switch after evaluation 2
    assert differs(edited.images[0], plain)
    _, before_only = render(prompt=f"[{PROMPT}:a blue ball on the floor:10]")  # never switches within 6 steps
    assert not differs(before_only.images[0], plain)


def test_and_prompts_add_rows_and_change_the_picture(render: Render, tiny_model: LoadedModel, plain: Any) -> None:
    with unet_contexts(tiny_model) as calls:
        _, anded = render(prompt=f"{PROMPT} AND a blue ball:0.5")
    assert calls[0] == (3, 77)  # two sub-prompts and the uncond
    assert differs(anded.images[0], plain)


def test_emphasis_changes_the_picture_and_its_mode_is_written(render: Render, plain: Any) -> None:
    _, weighted = render(prompt=f"({PROMPT}:1.4)")
    assert differs(weighted.images[0], plain)
    assert "Emphasis" not in parse_infotext(weighted.infotexts[0])[2]  # Original is not written
    _, no_norm = render(prompt=f"({PROMPT}:1.4)", override_settings={"emphasis": "No norm"})
    assert parse_infotext(no_norm.infotexts[0])[2]["Emphasis"] == "No norm"
    assert differs(no_norm.images[0], weighted.images[0])


def test_s_min_uncond_skips_every_other_uncond_and_is_written(render: Render, tiny_model: LoadedModel) -> None:
    with unet_contexts(tiny_model) as calls:
        _, processed = render(s_min_uncond=15.0)
    assert [rows for rows, _ in calls] == [2, 1, 2, 1, 2]
    assert float(parse_infotext(processed.infotexts[0])[2]["NGMS"]) == 15.0
