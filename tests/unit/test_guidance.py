"""The CFG denoiser (worker/engine/guidance.py) with a fake UNet whose output is known: the AND sum, the schedule
lookup per evaluation, cond and uncond of different lengths, the pad options, negative guidance minimum sigma, the
edit-model three passes and the "Prompt" x0 (docs/engine.md, "Prompt encoding")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from worker.engine.conditioning.schedules import (
    CondBatch,
    MulticondBatch,
    ScheduledCond,
    WeightedSchedule,
    constant_schedule,
)
from worker.engine.guidance import CFGDenoiser

WIDTH = 4  # token vector width of the fake conds
LATENT = (1, 4, 2, 2)


def ctx(value: float, tokens: int = 77) -> torch.Tensor:
    """A cond `(tokens, WIDTH)` whose first vector is `value` (what the fake UNet reads) and the rest `value` too."""
    return torch.full((tokens, WIDTH), float(value))


@dataclass
class FakeUNet:
    """ε = the context's first value + 0.1 × the image-conditioning channels' mean, per row; records every call."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, model_input: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> Any:
        self.calls.append(
            {
                "rows": model_input.shape[0],
                "tokens": encoder_hidden_states.shape[1],
                "values": encoder_hidden_states[:, 0, 0].tolist(),
                "context": encoder_hidden_states.clone(),
            }
        )
        value = encoder_hidden_states[:, 0, 0].reshape(-1, 1, 1, 1)
        eps = torch.zeros(model_input.shape[0], 4, *model_input.shape[2:]) + value
        if model_input.shape[1] > 4:
            eps = eps + 0.1 * model_input[:, 4:].mean(dim=1, keepdim=True)
        return type("Out", (), {"sample": eps})()


def single(value: float, tokens: int = 77) -> CondBatch:
    return CondBatch((constant_schedule(ctx(value, tokens)),))


def multicond(*subs: tuple[float, float], tokens: int = 77) -> MulticondBatch:
    """One image whose sub-prompts are (context value, weight)."""
    return MulticondBatch((tuple(WeightedSchedule(constant_schedule(ctx(v, tokens)), w) for v, w in subs),))


def call(denoiser: CFGDenoiser, sigma: float = 5.0, timestep: float = 900.0) -> torch.Tensor:
    x = torch.ones(LATENT)
    return denoiser(x, torch.full((1,), timestep), sigma)


def test_and_weights_enter_the_cfg_sum() -> None:
    unet = FakeUNet()
    denoiser = CFGDenoiser(unet, multicond((1.0, 1.0), (3.0, 0.5)), single(0.5), None, cfg_scale=7.0)
    eps = call(denoiser)
    # u + Σ w·cfg·(c − u) = 0.5 + 7·(1·0.5 + 0.5·2.5)
    assert torch.allclose(eps, torch.full(LATENT, 0.5 + 7.0 * (0.5 + 1.25)))
    assert [(c["rows"], c["values"]) for c in unet.calls] == [(3, [1.0, 3.0, 0.5])]  # one batch: conds then uncond


def test_negative_and_weights_and_several_images() -> None:
    unet = FakeUNet()
    conds = MulticondBatch(
        (
            (WeightedSchedule(constant_schedule(ctx(2.0)), 1.0),),
            (WeightedSchedule(constant_schedule(ctx(1.0)), 1.0), WeightedSchedule(constant_schedule(ctx(4.0)), -0.5)),
        )
    )
    uncond = CondBatch((constant_schedule(ctx(0.0)), constant_schedule(ctx(1.0))))
    eps = CFGDenoiser(unet, conds, uncond, None, cfg_scale=2.0)(torch.ones(2, 4, 2, 2), torch.full((2,), 9.0), 3.0)
    assert torch.allclose(eps[0], torch.full((4, 2, 2), 0.0 + 2.0 * 2.0))
    assert torch.allclose(eps[1], torch.full((4, 2, 2), 1.0 + 2.0 * (0.0 - 0.5 * 3.0)))
    assert unet.calls[0]["values"] == [2.0, 1.0, 4.0, 0.0, 1.0]


def test_schedule_entry_per_evaluation_counter() -> None:
    # [a:b:2] over N = 5 evaluations: a for evaluations 0, 1, 2; b for 3, 4, 5; after N the first entry again.
    schedule = (ScheduledCond(2, ctx(1.0)), ScheduledCond(5, ctx(2.0)))
    unet = FakeUNet()
    denoiser = CFGDenoiser(unet, MulticondBatch(((WeightedSchedule(schedule, 1.0),),)), single(0.0), None, 7.0)
    for _ in range(8):
        call(denoiser)
    assert [c["values"][0] for c in unet.calls] == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0]
    assert denoiser.step == 8


def test_negative_prompt_is_scheduled_too() -> None:
    uncond = CondBatch(((ScheduledCond(0, ctx(-1.0)), ScheduledCond(3, ctx(-2.0))),))
    unet = FakeUNet()
    denoiser = CFGDenoiser(unet, multicond((1.0, 1.0)), uncond, None, 7.0)
    for _ in range(3):
        call(denoiser)
    assert [c["values"][1] for c in unet.calls] == [-1.0, -2.0, -2.0]


def test_different_lengths_run_in_separate_batches() -> None:
    unet = FakeUNet()
    denoiser = CFGDenoiser(unet, multicond((1.0, 1.0), tokens=154), single(0.5), None, cfg_scale=3.0)
    eps = call(denoiser)
    assert [(c["rows"], c["tokens"]) for c in unet.calls] == [(1, 154), (1, 77)]
    assert torch.allclose(eps, torch.full(LATENT, 0.5 + 3.0 * 0.5))
    assert not denoiser.padded_cond_uncond


def test_pad_cond_uncond_appends_empty_prompt_vectors() -> None:
    unet = FakeUNet()
    empty = torch.full((77, WIDTH), 9.0)
    denoiser = CFGDenoiser(
        unet, multicond((1.0, 1.0), tokens=231), single(0.5), None, 3.0, pad_cond_uncond=True, empty_cond=empty
    )
    call(denoiser)
    assert [(c["rows"], c["tokens"]) for c in unet.calls] == [(2, 231)]
    uncond_row = unet.calls[0]["context"][1]
    assert torch.equal(uncond_row[:77], ctx(0.5))
    assert torch.equal(uncond_row[77:], torch.full((154, WIDTH), 9.0))
    assert denoiser.padded_cond_uncond


def test_pad_cond_uncond_pads_the_cond_when_it_is_shorter() -> None:
    unet = FakeUNet()
    empty = torch.full((77, WIDTH), 9.0)
    denoiser = CFGDenoiser(
        unet, multicond((1.0, 1.0)), single(0.5, tokens=154), None, 3.0, pad_cond_uncond=True, empty_cond=empty
    )
    call(denoiser)
    cond_row = unet.calls[0]["context"][0]
    assert cond_row.shape[0] == 154
    assert torch.equal(cond_row[77:], torch.full((77, WIDTH), 9.0))


@pytest.mark.parametrize(("cond_tokens", "uncond_tokens"), [(154, 77), (77, 154)])
def test_pad_cond_uncond_v0_repeats_or_truncates_the_uncond(cond_tokens: int, uncond_tokens: int) -> None:
    unet = FakeUNet()
    uncond = torch.arange(uncond_tokens * WIDTH, dtype=torch.float32).reshape(uncond_tokens, WIDTH)
    denoiser = CFGDenoiser(
        unet,
        multicond((1.0, 1.0), tokens=cond_tokens),
        CondBatch((constant_schedule(uncond),)),
        None,
        3.0,
        pad_cond_uncond=True,  # v0 wins when both are on
        pad_cond_uncond_v0=True,
    )
    call(denoiser)
    sent = unet.calls[0]["context"][1]
    assert sent.shape[0] == cond_tokens
    common = min(cond_tokens, uncond_tokens)
    assert torch.equal(sent[:common], uncond[:common])
    if cond_tokens > uncond_tokens:
        assert torch.equal(sent[common:], uncond[-1:].expand(cond_tokens - common, -1))
    assert denoiser.padded_cond_uncond_v0
    assert not denoiser.padded_cond_uncond


def test_s_min_uncond_skips_the_uncond_on_odd_evaluations_below_the_threshold() -> None:
    unet = FakeUNet()
    denoiser = CFGDenoiser(unet, multicond((2.0, 1.0)), single(0.5), None, 7.0, s_min_uncond=1.0)
    high = [call(denoiser, sigma=3.0) for _ in range(2)]  # above the threshold: never skipped
    low = [call(denoiser, sigma=0.5) for _ in range(2)]  # evaluation 2 (even) full, 3 (odd) skipped
    assert [c["rows"] for c in unet.calls] == [2, 2, 2, 1]
    guided = 0.5 + 7.0 * 1.5
    assert all(torch.allclose(e, torch.full(LATENT, guided)) for e in [*high, low[0]])
    assert torch.allclose(low[1], torch.full(LATENT, 2.0))  # the cond alone: scale 1 on the cond's own output
    assert denoiser.skipped_uncond


def test_s_min_uncond_with_and_uses_the_first_sub_prompt_as_uncond() -> None:
    unet = FakeUNet()
    denoiser = CFGDenoiser(unet, multicond((2.0, 1.0), (4.0, 0.5)), single(0.5), None, 7.0, s_min_uncond=1.0)
    call(denoiser, sigma=0.5)
    eps = call(denoiser, sigma=0.5)
    assert torch.allclose(eps, torch.full(LATENT, 2.0 + 0.5 * (4.0 - 2.0)))


def test_s_min_uncond_all_and_timestep_samplers() -> None:
    unet = FakeUNet()
    every = CFGDenoiser(unet, multicond((2.0, 1.0)), single(0.5), None, 7.0, s_min_uncond=1.0, s_min_uncond_all=True)
    call(every, sigma=0.5)
    call(every, sigma=0.5)
    assert [c["rows"] for c in unet.calls] == [1, 1]
    # Timestep samplers compare the timestep: 900 is not below 1.0 even though σ is.
    unet = FakeUNet()
    timestep = CFGDenoiser(
        unet, multicond((2.0, 1.0)), single(0.5), None, 7.0, s_min_uncond=1.0, noise_level_is_timestep=True
    )
    call(timestep, sigma=0.5, timestep=900.0)
    call(timestep, sigma=0.5, timestep=900.0)
    assert [c["rows"] for c in unet.calls] == [2, 2]
    assert not timestep.skipped_uncond


def test_edit_model_three_passes() -> None:
    unet = FakeUNet()
    image = torch.full((1, 4, 2, 2), 10.0)  # adds 0.1·10 = 1 to ε where the image conditioning is present
    denoiser = CFGDenoiser(unet, multicond((2.0, 1.0)), single(0.5), image, 7.0, image_cfg_scale=1.5)
    eps = call(denoiser)
    text, image_only, neither = 3.0, 1.5, 0.5
    expected = neither + 7.0 * (text - image_only) + 1.5 * (image_only - neither)
    assert torch.allclose(eps, torch.full(LATENT, expected))
    assert [c["rows"] for c in unet.calls] == [3]


def test_edit_model_three_passes_with_different_lengths() -> None:
    # The reference fails here; the farm runs the cond rows and the two uncond passes in separate batches.
    unet = FakeUNet()
    image = torch.full((1, 4, 2, 2), 10.0)
    denoiser = CFGDenoiser(unet, multicond((2.0, 1.0), tokens=154), single(0.5), image, 7.0, image_cfg_scale=1.5)
    eps = call(denoiser)
    assert [(c["rows"], c["tokens"]) for c in unet.calls] == [(1, 154), (2, 77)]
    assert torch.allclose(eps, torch.full(LATENT, 0.5 + 7.0 * 1.5 + 1.5 * 1.0))


def test_edit_model_with_image_cfg_one_is_two_pass() -> None:
    unet = FakeUNet()
    image = torch.full((1, 4, 2, 2), 10.0)
    eps = call(CFGDenoiser(unet, multicond((2.0, 1.0)), single(0.5), image, 7.0, image_cfg_scale=1.0))
    assert [c["rows"] for c in unet.calls] == [2]
    assert torch.allclose(eps, torch.full(LATENT, 1.5 + 7.0 * (3.0 - 1.5)))


def test_last_prompt_x0_is_the_first_sub_prompt_alone() -> None:
    unet = FakeUNet()
    denoiser = CFGDenoiser(unet, multicond((2.0, 1.0), (4.0, 1.0)), single(0.5), None, 7.0)
    x = torch.full(LATENT, 3.0)
    sigma = 2.0
    denoiser(x, torch.full((1,), 500.0), sigma)
    assert denoiser.last_prompt_x0 is not None
    assert torch.allclose(denoiser.last_prompt_x0, torch.full(LATENT, 3.0 * math.sqrt(5.0) - sigma * 2.0))
