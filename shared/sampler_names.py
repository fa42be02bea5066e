"""A1111 sampler and schedule names, as the webui spells them, and how a request's name is matched.

This is contract, not implementation: the spec validates names against these tables (no torch), and
`worker.engine.sampling` maps each one onto a diffusers scheduler with the reference's sigma schedule.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerName:
    name: str  # the webui's label, e.g. "DPM++ 2M"
    aliases: tuple[str, ...]  # e.g. ("k_dpmpp_2m",)
    default_schedule: str  # the schedule that "Automatic" means for this sampler
    timestep_sampler: bool = False  # DDIM-style: steps over discrete timesteps, not sigmas


@dataclass(frozen=True)
class ScheduleName:
    name: str  # lower-case id, e.g. "karras"
    label: str  # what the webui shows, e.g. "Karras"


SAMPLERS: tuple[SamplerName, ...] = (
    SamplerName("DPM++ 2M", ("k_dpmpp_2m",), "karras"),
    SamplerName("DPM++ SDE", ("k_dpmpp_sde",), "karras"),
    SamplerName("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "exponential"),
    SamplerName("DPM++ 2S a", ("k_dpmpp_2s_a",), "karras"),
    SamplerName("Euler a", ("k_euler_a", "k_euler_ancestral"), "uniform"),
    SamplerName("Euler", ("k_euler",), "uniform"),
    SamplerName("LMS", ("k_lms",), "uniform"),
    SamplerName("Heun", ("k_heun",), "uniform"),
    SamplerName("DPM2", ("k_dpm_2",), "karras"),
    SamplerName("DPM2 a", ("k_dpm_2_a",), "karras"),
    SamplerName("DDIM", ("ddim",), "uniform", timestep_sampler=True),
    SamplerName("UniPC", ("unipc",), "uniform", timestep_sampler=True),
)

SCHEDULES: tuple[ScheduleName, ...] = (
    ScheduleName("automatic", "Automatic"),
    ScheduleName("uniform", "Uniform"),
    ScheduleName("karras", "Karras"),
    ScheduleName("exponential", "Exponential"),
)

SAMPLER_LABELS: tuple[str, ...] = tuple(s.name for s in SAMPLERS)
SCHEDULE_LABELS: tuple[str, ...] = tuple(s.label for s in SCHEDULES)

_SAMPLER_BY_KEY: dict[str, SamplerName] = {
    key.lower(): sampler for sampler in SAMPLERS for key in (sampler.name, *sampler.aliases)
}
_SCHEDULE_BY_KEY: dict[str, ScheduleName] = {
    key.lower(): schedule for schedule in SCHEDULES for key in (schedule.name, schedule.label)
}


def find_sampler(name: str) -> SamplerName | None:
    """The sampler whose label or alias is `name` (case-insensitive), or None."""
    return _SAMPLER_BY_KEY.get(name.strip().lower())


def find_schedule(name: str) -> ScheduleName | None:
    """The schedule whose id or label is `name` (case-insensitive), or None."""
    return _SCHEDULE_BY_KEY.get(name.strip().lower())


def split_sampler_and_schedule(name: str) -> tuple[SamplerName, ScheduleName | None] | None:
    """Match names like "DPM++ 2M Karras" that carry their schedule as a suffix (the webui's old names).

    Returns (sampler, schedule) with schedule None for a plain sampler name, or None if nothing matches.
    """
    sampler = find_sampler(name)
    if sampler is not None:
        return sampler, None
    head, _, tail = name.strip().rpartition(" ")
    schedule = find_schedule(tail) if head else None
    sampler = find_sampler(head) if schedule else None
    if sampler is None or schedule is None:
        return None
    return sampler, schedule
