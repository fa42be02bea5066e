"""The scheduled conditionings of a batch's prompts (docs/engine.md, "Prompt encoding" — Schedules, AND).

Every prompt's schedule is built for `N = steps × m` evaluations, `m = 2` for the samplers the reference flags as
second order (they evaluate the model about twice per step), 1 otherwise. All texts of one prompt's schedule are
encoded together (so they share one token length and, with emphasis "Original", one normalisation batch); identical
prompts are encoded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import torch

from shared.prompts import get_learned_conditioning_prompt_schedules, get_multicond_prompt_list
from worker.engine.conditioning.encoder import ConditioningEncoder
from worker.engine.conditioning.schedules import (
    CondBatch,
    MulticondBatch,
    PromptSchedule,
    ScheduledCond,
    WeightedSchedule,
)

__all__ = [
    "SECOND_ORDER_SAMPLERS",
    "learned_conditioning",
    "multicond_learned_conditioning",
    "old_timelines_differ",
    "schedule_steps",
]

#: The samplers whose schedules are built for twice the steps (the reference's second-order flag).
SECOND_ORDER_SAMPLERS: Final = frozenset({"DPM++ SDE", "DPM++ 2S a", "Heun", "DPM2", "DPM2 a", "Restart"})


def schedule_steps(steps: int, sampler_label: str) -> int:
    """`N`: the evaluations the prompt schedules are built for."""
    return steps * (2 if sampler_label in SECOND_ORDER_SAMPLERS else 1)


def _schedules(
    encoder: ConditioningEncoder,
    prompts: Sequence[str],
    steps: int,
    use_old_scheduling: bool,
    zero_empty: bool = False,
) -> list[PromptSchedule]:
    unique = list(dict.fromkeys(prompts))
    timelines = get_learned_conditioning_prompt_schedules(unique, steps, use_old_scheduling=use_old_scheduling)
    encoded: dict[str, PromptSchedule] = {}
    for prompt, timeline in zip(unique, timelines, strict=True):
        texts = [str(text) for _end, text in timeline]
        conds, pooled = encoder.encode_pooled(texts)
        if zero_empty and all(text == "" for text in texts):
            # SDXL's empty negative prompt: zeros for the context and the pooled vector (prompts-and-models.md §5.3).
            conds = torch.zeros_like(conds)
            pooled = torch.zeros_like(pooled) if pooled is not None else None
        encoded[prompt] = tuple(
            ScheduledCond(int(end), conds[i], pooled[i] if pooled is not None else None)
            for i, (end, _text) in enumerate(timeline)
        )
    return [encoded[prompt] for prompt in prompts]


def learned_conditioning(
    encoder: ConditioningEncoder,
    prompts: Sequence[str],
    steps: int,
    *,
    use_old_scheduling: bool = False,
    zero_empty: bool = False,
) -> CondBatch:
    """The negative prompts' conditionings: editing, alternation, emphasis, BREAK, embeddings — no AND.

    `zero_empty` (SDXL): a prompt every text of whose schedule is exactly "" gets zeros (context and pooled)."""
    return CondBatch(tuple(_schedules(encoder, prompts, steps, use_old_scheduling, zero_empty)))


def multicond_learned_conditioning(
    encoder: ConditioningEncoder, prompts: Sequence[str], steps: int, *, use_old_scheduling: bool = False
) -> MulticondBatch:
    """The positive prompts' conditionings: each prompt split on AND (with `:weight` suffixes) first, then each
    sub-prompt scheduled and encoded like a negative prompt."""
    per_prompt, flat, _indexes = get_multicond_prompt_list(list(prompts))
    schedules = _schedules(encoder, flat, steps, use_old_scheduling)
    return MulticondBatch(
        tuple(tuple(WeightedSchedule(schedules[index], float(weight)) for index, weight in subs) for subs in per_prompt)
    )


def old_timelines_differ(prompts: Sequence[str], steps: int) -> bool:
    """Whether the old and the new reading of the `when` numbers give different schedules for any prompt (then the
    reference writes "Old prompt editing timelines" into the infotext when the old reading is used)."""
    unique = list(dict.fromkeys(prompts))
    new = get_learned_conditioning_prompt_schedules(unique, steps, use_old_scheduling=False)
    old = get_learned_conditioning_prompt_schedules(unique, steps, use_old_scheduling=True)
    return [[list(e) for e in s] for s in new] != [[list(e) for e in s] for s in old]
