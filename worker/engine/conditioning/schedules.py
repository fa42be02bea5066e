"""Scheduled conditionings: which prompt tensor the UNet sees at each evaluation of the CFG denoiser (docs/engine.md,
"Prompt encoding" — Schedules and the step counter; AND).

A prompt with editing (`[a:b:10]`) or alternation (`[a|b]`) becomes a *schedule*: a list of `(end_at_step, cond)`
entries in increasing `end_at_step`. At evaluation `k` (the CFG denoiser's call counter, from 0) the first entry whose
`end_at_step ≥ k` is used; when there is none (a sampler that calls the model more often than planned) the first
entry is.

An image's positive prompt is split on AND into weighted sub-prompts, each with its own schedule
(`MulticondBatch`); the negative prompt has one schedule per image (`CondBatch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

__all__ = [
    "CondBatch",
    "MulticondBatch",
    "PromptSchedule",
    "ScheduledCond",
    "WeightedSchedule",
    "cond_at",
    "constant_schedule",
    "entry_at",
    "stack_padded",
]


@dataclass(frozen=True, eq=False)
class ScheduledCond:
    """One entry of a schedule: `cond` `(T, C)` is used up to and including evaluation `end_at_step`. SDXL conds
    also carry the pooled vector `(P,)` of their text (the UNet's `text_embeds`); None for SD 1.x/2.x."""

    end_at_step: int
    cond: torch.Tensor
    pooled: torch.Tensor | None = None


PromptSchedule = tuple[ScheduledCond, ...]


def constant_schedule(cond: torch.Tensor, steps: int = 1) -> PromptSchedule:
    """A schedule that uses `cond` `(T, C)` throughout."""
    return (ScheduledCond(steps, cond),)


def entry_at(schedule: PromptSchedule, step: int) -> ScheduledCond:
    """The entry used at evaluation `step`: the first entry ending at or after it, else the first entry."""
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry
    return schedule[0]


def cond_at(schedule: PromptSchedule, step: int) -> torch.Tensor:
    """The cond used at evaluation `step` (see `entry_at`)."""
    return entry_at(schedule, step).cond


def _stack_pooled(entries: Sequence[ScheduledCond]) -> torch.Tensor | None:
    """`(N, P)` of the entries' pooled vectors; None when they carry none (SD 1.x/2.x)."""
    pooled = [entry.pooled for entry in entries]
    if any(p is None for p in pooled):
        return None
    return torch.stack(cast(list[torch.Tensor], pooled))


def stack_padded(conds: Sequence[torch.Tensor]) -> torch.Tensor:
    """`(N, T, C)` from conds `(T_i, C)`; shorter ones are padded to the longest by repeating their last token vector
    (how the reference stacks the AND sub-prompts of a batch)."""
    longest = max(c.shape[0] for c in conds)
    padded = [c if c.shape[0] == longest else torch.cat([c, c[-1:].expand(longest - c.shape[0], -1)]) for c in conds]
    return torch.stack(padded)


@dataclass(frozen=True, eq=False)
class CondBatch:
    """One schedule per image (the negative prompts of a batch)."""

    images: tuple[PromptSchedule, ...]

    def at(self, step: int) -> torch.Tensor:
        """`(B, T, C)` at evaluation `step`."""
        return stack_padded([cond_at(schedule, step) for schedule in self.images])

    def pooled_at(self, step: int) -> torch.Tensor | None:
        """`(B, P)` pooled vectors at evaluation `step` (SDXL), else None."""
        return _stack_pooled([entry_at(schedule, step) for schedule in self.images])


@dataclass(frozen=True, eq=False)
class WeightedSchedule:
    """One AND sub-prompt: its schedule and its CFG weight."""

    schedule: PromptSchedule
    weight: float


@dataclass(frozen=True, eq=False)
class MulticondBatch:
    """The positive prompts of a batch: per image, its AND sub-prompts (at least one each)."""

    images: tuple[tuple[WeightedSchedule, ...], ...]

    def at(self, step: int) -> tuple[list[list[tuple[int, float]]], torch.Tensor]:
        """At evaluation `step`: per image the `(row, weight)` of each sub-prompt, and the rows `(R, T, C)` — all
        sub-prompts of all images in order, padded to one length by repeating their last token vector."""
        conds_list: list[list[tuple[int, float]]] = []
        rows: list[torch.Tensor] = []
        for sub_prompts in self.images:
            entries = []
            for sub in sub_prompts:
                entries.append((len(rows), sub.weight))
                rows.append(cond_at(sub.schedule, step))
            conds_list.append(entries)
        return conds_list, stack_padded(rows)

    def pooled_at(self, step: int) -> torch.Tensor | None:
        """`(R, P)` pooled vectors of the rows `at(step)` gives, in the same order (SDXL), else None."""
        return _stack_pooled([entry_at(sub.schedule, step) for subs in self.images for sub in subs])

    @classmethod
    def single(cls, conds: torch.Tensor) -> MulticondBatch:
        """One sub-prompt of weight 1 per image, constant: `conds` `(B, T, C)`."""
        return cls(tuple((WeightedSchedule(constant_schedule(c), 1.0),) for c in conds))
