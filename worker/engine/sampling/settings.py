"""The sampler options of one job, resolved as the reference resolves them (docs/engine.md "Sampler options").

The job's `s_churn`, `s_tmin`, `s_tmax`, `s_noise` fields default to the webui options of the same names. A sampler
gets only the ones it takes (churn: Euler, Heun, DPM2; s_noise: those and DPM fast, DPM2 a, DPM++ 2S a, the SDE
samplers). Then an *option* that differs from the sampler's default (churn 0, tmin 0, tmax ∞, noise 1) overrides the
job's value and is written to the infotext ("Sigma churn", "Sigma tmin", "Sigma tmax", "Sigma noise"); a value sent
only in the job is used but not written — the reference's behaviour, kept so that the same request gives the same
picture and the same infotext.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from worker.engine.options import Options
from worker.engine.sampling.plan import CHURN_SAMPLERS, S_NOISE_SAMPLERS, SamplerOptions

__all__ = ["JobSamplerFields", "resolve_sampler_options"]


@dataclass(frozen=True)
class JobSamplerFields:
    """The job's own sampler fields (None: the option's value)."""

    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None


# (field, infotext key, the sampler's default): the order the reference writes them in.
_SIGMA_PARAMS = (
    ("s_churn", "Sigma churn", 0.0),
    ("s_tmin", "Sigma tmin", 0.0),
    ("s_tmax", "Sigma tmax", math.inf),
    ("s_noise", "Sigma noise", 1.0),
)


def resolve_sampler_options(
    sampler_name: str, job: JobSamplerFields, options: Options, *, sdxl: bool = False
) -> tuple[SamplerOptions, dict[str, object]]:
    """The :class:`SamplerOptions` for a job with this (label) sampler, and the infotext entries they add."""
    takes = (
        {"s_churn", "s_tmin", "s_tmax", "s_noise"}
        if sampler_name in CHURN_SAMPLERS
        else {"s_noise"}
        if sampler_name in S_NOISE_SAMPLERS
        else set()
    )
    values: dict[str, float] = {}
    infotext: dict[str, object] = {}
    for name, key, default in _SIGMA_PARAMS:
        option = float(getattr(options, name))
        sent = getattr(job, name)
        value = float(sent) if sent is not None else option
        if name == "s_tmax":  # 0 means no upper bound, for the option as for the field
            value, option = value or math.inf, option or math.inf
        if name in takes and option != default:
            value = option
            infotext[key] = option
        values[name] = value if name in takes else default
    resolved = SamplerOptions(
        s_churn=values["s_churn"],
        s_tmin=values["s_tmin"],
        s_tmax=values["s_tmax"],
        s_noise=values["s_noise"],
        sigma_min=options.sigma_min or None,
        sigma_max=options.sigma_max or None,
        rho=options.rho or None,
        always_discard_penultimate_sigma=options.always_discard_next_to_last_sigma,
        sgm_noise_multiplier=options.sgm_noise_multiplier,
        uni_pc_variant=options.uni_pc_variant,
        uni_pc_skip_type=options.uni_pc_skip_type,
        uni_pc_order=options.uni_pc_order,
        uni_pc_lower_order_final=options.uni_pc_lower_order_final,
        beta_dist_alpha=options.beta_dist_alpha,
        beta_dist_beta=options.beta_dist_beta,
        sdxl=sdxl,
    )
    return resolved, infotext
