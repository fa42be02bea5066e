"""A1111 sampler and schedule names, as the webui spells them, and how a request's name is matched.

This is contract, not implementation: the spec validates names against these tables (no torch), and
`worker.engine.sampling` maps each one onto its implementation with the reference's sigma schedule. The tables follow
the reference's order and fields (docs/engine.md "Samplers": the `/sdapi/v1/samplers` and `/sdapi/v1/schedulers`
listings answer with them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplerName:
    name: str  # the webui's label, e.g. "DPM++ 2M"
    aliases: tuple[str, ...]  # e.g. ("k_dpmpp_2m",)
    default_schedule: str  # the schedule that "Automatic" means for this sampler
    timestep_sampler: bool = False  # DDIM-style: steps over discrete timesteps, not sigmas
    # The reference's sampler options as its listing shows them (scheduler, second_order, brownian_noise, ...).
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def brownian_noise(self) -> bool:
        """SDE samplers whose noise comes from a Brownian tree seeded with the batch's seeds."""
        return bool(self.options_dict.get("brownian_noise", False))

    @property
    def second_order(self) -> bool:
        """Samplers that evaluate the model twice per step (prompt schedules are built for twice the steps)."""
        return bool(self.options_dict.get("second_order", False))

    @property
    def discards_penultimate_sigma(self) -> bool:
        return bool(self.options_dict.get("discard_next_to_last_sigma", False))


@dataclass(frozen=True)
class ScheduleName:
    name: str  # lower-case id, e.g. "karras"
    label: str  # what the webui shows, e.g. "Karras"
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0  # -1: the schedule takes no ρ
    need_inner_model: bool = False  # built from the model's own discretisation rather than σ_min/σ_max alone


_KARRAS: tuple[tuple[str, Any], ...] = (("scheduler", "karras"),)
_EXPONENTIAL: tuple[tuple[str, Any], ...] = (("scheduler", "exponential"),)

# "uniform" as the default schedule means the reference's Automatic for samplers without a scheduler option: the
# model's own discretisation (for LCM, its own 50-step one).
SAMPLERS: tuple[SamplerName, ...] = (
    SamplerName("DPM++ 2M", ("k_dpmpp_2m",), "karras", options=_KARRAS),
    SamplerName(
        "DPM++ SDE",
        ("k_dpmpp_sde",),
        "karras",
        options=(*_KARRAS, ("second_order", True), ("brownian_noise", True)),
    ),
    SamplerName("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "exponential", options=(*_EXPONENTIAL, ("brownian_noise", True))),
    SamplerName(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        "exponential",
        options=(*_EXPONENTIAL, ("brownian_noise", True), ("solver_type", "heun")),
    ),
    SamplerName(
        "DPM++ 2S a", ("k_dpmpp_2s_a",), "karras", options=(*_KARRAS, ("uses_ensd", True), ("second_order", True))
    ),
    SamplerName(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        "exponential",
        options=(*_EXPONENTIAL, ("discard_next_to_last_sigma", True), ("brownian_noise", True)),
    ),
    SamplerName("Euler a", ("k_euler_a", "k_euler_ancestral"), "uniform", options=(("uses_ensd", True),)),
    SamplerName("Euler", ("k_euler",), "uniform"),
    SamplerName("LMS", ("k_lms",), "uniform"),
    SamplerName("Heun", ("k_heun",), "uniform", options=(("second_order", True),)),
    SamplerName(
        "DPM2",
        ("k_dpm_2",),
        "karras",
        options=(*_KARRAS, ("discard_next_to_last_sigma", True), ("second_order", True)),
    ),
    SamplerName(
        "DPM2 a",
        ("k_dpm_2_a",),
        "karras",
        options=(*_KARRAS, ("discard_next_to_last_sigma", True), ("uses_ensd", True), ("second_order", True)),
    ),
    SamplerName("DPM fast", ("k_dpm_fast",), "uniform", options=(("uses_ensd", True),)),
    SamplerName("DPM adaptive", ("k_dpm_ad",), "uniform", options=(("uses_ensd", True),)),
    SamplerName("Restart", ("restart",), "karras", options=(*_KARRAS, ("second_order", True))),
    SamplerName("DDIM", ("ddim",), "uniform", timestep_sampler=True),
    SamplerName("DDIM CFG++", ("ddim_cfgpp",), "uniform", timestep_sampler=True),
    SamplerName("PLMS", ("plms",), "uniform", timestep_sampler=True),
    SamplerName("UniPC", ("unipc",), "uniform", timestep_sampler=True),
    SamplerName("LCM", ("lcm",), "uniform"),
)

SCHEDULES: tuple[ScheduleName, ...] = (
    ScheduleName("automatic", "Automatic"),
    ScheduleName("uniform", "Uniform", need_inner_model=True),
    ScheduleName("karras", "Karras", default_rho=7.0),
    ScheduleName("exponential", "Exponential"),
    ScheduleName("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleName("sgm_uniform", "SGM Uniform", aliases=("SGMUniform",), need_inner_model=True),
    ScheduleName("kl_optimal", "KL Optimal"),
    ScheduleName("align_your_steps", "Align Your Steps"),
    ScheduleName("simple", "Simple", need_inner_model=True),
    ScheduleName("normal", "Normal", need_inner_model=True),
    ScheduleName("ddim", "DDIM", need_inner_model=True),
    ScheduleName("beta", "Beta", need_inner_model=True),
)

SAMPLER_LABELS: tuple[str, ...] = tuple(s.name for s in SAMPLERS)
SCHEDULE_LABELS: tuple[str, ...] = tuple(s.label for s in SCHEDULES)

_SAMPLER_BY_KEY: dict[str, SamplerName] = {
    key.lower(): sampler for sampler in SAMPLERS for key in (sampler.name, *sampler.aliases)
}
_SCHEDULE_BY_KEY: dict[str, ScheduleName] = {
    key.lower(): schedule for schedule in SCHEDULES for key in (schedule.name, schedule.label, *schedule.aliases)
}


def find_sampler(name: str) -> SamplerName | None:
    """The sampler whose label or alias is `name` (case-insensitive), or None."""
    return _SAMPLER_BY_KEY.get(name.strip().lower())


def find_schedule(name: str) -> ScheduleName | None:
    """The schedule whose id, label or alias is `name` (case-insensitive), or None."""
    return _SCHEDULE_BY_KEY.get(name.strip().lower())


def split_sampler_and_schedule(name: str) -> tuple[SamplerName, ScheduleName | None] | None:
    """Match names like "DPM++ 2M Karras" that carry their schedule as a suffix (the webui's old names).

    Returns (sampler, schedule) with schedule None for a plain sampler name, or None if nothing matches. The longest
    sampler name wins ("DPM++ 2M SDE Heun" is a sampler, not "DPM++ 2M SDE" with a schedule "Heun").
    """
    sampler = find_sampler(name)
    if sampler is not None:
        return sampler, None
    words = name.strip().split(" ")
    for cut in range(len(words) - 1, 0, -1):
        head, tail = " ".join(words[:cut]), " ".join(words[cut:])
        schedule = find_schedule(tail)
        sampler = find_sampler(head) if schedule else None
        if sampler is not None and schedule is not None:
            return sampler, schedule
    return None
