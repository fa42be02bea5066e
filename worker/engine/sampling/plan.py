"""The sampling plan: what one img2img sampling run does, built once per job from the sampler, the schedule, the
steps and the strength (img2img-semantics.md §3.2, §7.4), and the diffusers scheduler behind each sampler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler

from shared.job.steps import default_eta, img2img_steps
from shared.sampler_names import SamplerName, ScheduleName, find_schedule, split_sampler_and_schedule
from worker.engine.diffusers_internals import load_k_schedule, quiet_numpy_array_deprecation, use_training_alphas
from worker.engine.sampling.schedules import (
    ModelSchedule,
    discard_penultimate_sigma,
    k_sigmas,
    timestep_schedule,
    vp_sigma_at,
)

__all__ = ["SamplingPlan", "plan_img2img", "sampler_default_eta"]

#: Samplers whose reference configuration drops the second-to-last sigma (§3.2 "discard penultimate sigma").
_DISCARD_PENULTIMATE_BY_DEFAULT = frozenset({"DPM2", "DPM2 a"})


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """Everything :func:`run_sampler` needs for one img2img sampling run.

    Attributes:
        sampler: the A1111 sampler.
        schedule_type: the resolved schedule label for the infotext "Schedule type" ("Automatic" for DDIM/UniPC,
            which ignore schedules like the reference).
        implementation: "diffusers:<SchedulerClass>" or "own:<step>" (a step of `step_functions`).
        scheduler: the configured diffusers scheduler (explicit sigmas / timesteps loaded), or None for own steps and
            zero-step plans. :func:`run_sampler` works on a copy, so a plan can be reused.
        steps: the requested steps (infotext "Steps").
        schedule_steps: steps the schedule was built for (differs with img2img_fix_steps).
        t_enc: the reference's t_enc.
        sigmas: the full k-diffusion schedule (schedule_steps + 1 values, ending in 0); empty for timestep samplers.
        sigma_sched: the σ values traversed, start first; k-diffusion: ``sigmas[schedule_steps − t_enc − 1:]``.
            For timestep samplers: the σ-equivalents of the start and every evaluated point plus the end point.
        call_timesteps: the model timestep of each step (fractional for k-diffusion samplers), descending.
        timesteps: timestep samplers: the full ascending schedule of :func:`timestep_schedule`; else None.
        start_sigma: σ of the noised init latent (0.0 for a zero-step plan).
        start_timestep: timestep samplers: ``timesteps[t_enc]`` where the noise is added; else None.
        total_steps: number of sampling steps (callbacks); 0 means the output is the init latent (§7.4).
        model_calls: number of ``denoise_eps`` calls (Heun/DPM2/… make two per step except the last). Exact for
            η ≤ 1; with η > 1 DPM2 a / DPM++ 2S a can reach σ_down = 0 early and make fewer (a one-call Euler step).
        is_timestep_sampler: DDIM/UniPC (VP latents, noise added with √ᾱ).
        discard_penultimate_sigma: whether the schedule dropped its penultimate sigma.
        extra_generation_params: infotext entries this plan adds ("Schedule type", "Discard penultimate sigma").
        model: the model's training schedule.
        default_eta: the η this sampler uses when :func:`run_sampler` gets none (1.0 for the ancestral and SDE
            samplers, 0.0 for DDIM); None for samplers that take no η.
    """

    sampler: SamplerName
    schedule_type: str
    implementation: str
    scheduler: Any  # a configured diffusers SchedulerMixin, or None
    steps: int
    schedule_steps: int
    t_enc: int
    sigmas: torch.Tensor
    sigma_sched: torch.Tensor
    call_timesteps: torch.Tensor
    timesteps: torch.Tensor | None
    start_sigma: float
    start_timestep: int | None
    total_steps: int
    model_calls: int
    is_timestep_sampler: bool
    discard_penultimate_sigma: bool
    model: ModelSchedule
    extra_generation_params: Mapping[str, object] = field(default_factory=dict)
    default_eta: float | None = None

    @property
    def uses_eta(self) -> bool:
        """Whether this sampler takes η (ancestral/SDE samplers and DDIM); the others ignore it."""
        return self.default_eta is not None


def _resolve_sampler(sampler: SamplerName | str) -> tuple[SamplerName, ScheduleName | None]:
    if isinstance(sampler, SamplerName):
        return sampler, None
    found = split_sampler_and_schedule(sampler)
    if found is None:
        raise ValueError(f"unknown sampler {sampler!r}")
    return found


def _resolve_schedule(sampler: SamplerName, schedule: ScheduleName | str | None) -> ScheduleName:
    if isinstance(schedule, str):
        found = find_schedule(schedule)
        if found is None:
            raise ValueError(f"unknown schedule {schedule!r}")
        schedule = found
    if schedule is None or schedule.name == "automatic":
        default = find_schedule(sampler.default_schedule)
        if default is None:
            raise ValueError(f"sampler {sampler.name!r} has an unknown default schedule {sampler.default_schedule!r}")
        return default
    return schedule


# Sampler → (implementation, diffusers class or None, constructor overrides, VP-space step, two calls per step).
_FORCED = {"prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0}
_NO_SIGMA_CONVERSIONS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}


@dataclass(frozen=True)
class _SamplerImpl:
    implementation: str
    scheduler_class: Any = None  # a diffusers SchedulerMixin subclass
    options: Mapping[str, Any] = field(default_factory=dict)
    vp_space: bool = False  # the scheduler's sample is x_σ/√(1+σ²) rather than x_σ
    two_calls: bool = False  # own steps that evaluate the model twice per step (not on the last step)


_IMPLS: dict[str, _SamplerImpl] = {
    "Euler": _SamplerImpl(
        "diffusers:EulerDiscreteScheduler", EulerDiscreteScheduler, {**_FORCED, **_NO_SIGMA_CONVERSIONS}
    ),
    "Euler a": _SamplerImpl("own:euler_ancestral"),
    "LMS": _SamplerImpl("diffusers:LMSDiscreteScheduler", LMSDiscreteScheduler, {**_FORCED, **_NO_SIGMA_CONVERSIONS}),
    "DPM++ 2M": _SamplerImpl(
        "diffusers:DPMSolverMultistepScheduler",
        DPMSolverMultistepScheduler,
        {
            **_FORCED,
            **_NO_SIGMA_CONVERSIONS,
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "solver_type": "midpoint",
            "final_sigmas_type": "zero",
            "lower_order_final": True,
            "euler_at_final": False,
            "thresholding": False,
            "use_lu_lambdas": False,
        },
        vp_space=True,
    ),
    "DPM++ 2M SDE": _SamplerImpl("own:dpmpp_2m_sde"),
    "Heun": _SamplerImpl("own:heun", two_calls=True),
    "DPM2": _SamplerImpl("own:dpm2", two_calls=True),
    "DPM2 a": _SamplerImpl("own:dpm2_ancestral", two_calls=True),
    "DPM++ SDE": _SamplerImpl("own:dpmpp_sde", two_calls=True),
    "DPM++ 2S a": _SamplerImpl("own:dpmpp_2s_ancestral", two_calls=True),
    "DDIM": _SamplerImpl(
        "diffusers:DDIMScheduler",
        DDIMScheduler,
        {
            "prediction_type": "epsilon",
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "clip_sample": False,
            "set_alpha_to_one": False,
            "thresholding": False,
            "rescale_betas_zero_snr": False,
        },
        vp_space=True,
    ),
    "UniPC": _SamplerImpl(
        "diffusers:UniPCMultistepScheduler",
        UniPCMultistepScheduler,
        {
            **_FORCED,
            **_NO_SIGMA_CONVERSIONS,
            "solver_order": 3,
            "solver_type": "bh1",
            "predict_x0": True,
            "lower_order_final": True,
            "thresholding": False,
            "use_flow_sigmas": False,
        },
        vp_space=True,
    ),
}


def _make_scheduler(impl: _SamplerImpl, config: Mapping[str, Any]) -> Any:
    assert impl.scheduler_class is not None
    with quiet_numpy_array_deprecation():
        return impl.scheduler_class.from_config(dict(config), **impl.options)


def _implementation(sampler: SamplerName) -> _SamplerImpl:
    impl = _IMPLS.get(sampler.name)
    if impl is None:
        raise ValueError(f"sampler {sampler.name!r} has no implementation")
    return impl


def sampler_default_eta(sampler: SamplerName | str) -> float | None:
    """The η a sampler uses by default (the reference's opts.eta_ancestral = 1.0 for Euler a, DPM2 a, DPM++ 2S a,
    DPM++ SDE and DPM++ 2M SDE; opts.eta_ddim = 0.0 for DDIM), or None for a sampler that takes no η.

    Raises:
        ValueError: for an unknown sampler name or a sampler without an implementation.
    """
    sampler_name, _ = _resolve_sampler(sampler)
    _implementation(sampler_name)
    return default_eta(sampler_name.name)


def _two_call_model_calls(sigma_sched: torch.Tensor) -> int:
    # Two evaluations per step, one on a step that ends at σ = 0 (it is a plain Euler step there).
    return sum(2 if float(s) > 0 else 1 for s in sigma_sched[1:])


@dataclass(frozen=True)
class _Request:
    """What every plan of one call shares: the sampler, the steps and the model's schedule."""

    sampler: SamplerName
    impl: _SamplerImpl
    steps: int
    schedule_steps: int
    t_enc: int
    model: ModelSchedule


_EMPTY = torch.zeros(0)


def _plan(
    request: _Request,
    schedule_type: str,
    extra: Mapping[str, object],
    *,
    discard: bool = False,
    scheduler: Any = None,
    sigmas: torch.Tensor = _EMPTY,
    sigma_sched: torch.Tensor = _EMPTY,
    call_timesteps: torch.Tensor = _EMPTY,
    timesteps: torch.Tensor | None = None,
    start_timestep: int | None = None,
) -> SamplingPlan:
    """The one place a :class:`SamplingPlan` is built; what follows from the traversed points is derived here.

    Without points (``sigma_sched`` empty) the plan runs no step: strength 0 (§7.4), whose output is the init latent.
    """
    total = call_timesteps.numel()
    return SamplingPlan(
        sampler=request.sampler,
        schedule_type=schedule_type,
        implementation=request.impl.implementation,
        scheduler=scheduler,
        steps=request.steps,
        schedule_steps=request.schedule_steps,
        t_enc=request.t_enc,
        sigmas=sigmas,
        sigma_sched=sigma_sched,
        call_timesteps=call_timesteps,
        timesteps=timesteps,
        start_sigma=float(sigma_sched[0]) if sigma_sched.numel() else 0.0,
        start_timestep=start_timestep,
        total_steps=total,
        model_calls=_two_call_model_calls(sigma_sched) if request.impl.two_calls else total,
        is_timestep_sampler=request.sampler.timestep_sampler,
        discard_penultimate_sigma=discard,
        model=request.model,
        extra_generation_params=extra,
        default_eta=default_eta(request.sampler.name),
    )


def plan_img2img(
    sampler: SamplerName | str,
    schedule: ScheduleName | str | None,
    steps: int,
    strength: float,
    fix_steps: bool,
    scheduler_config: Mapping[str, Any],
    *,
    always_discard_penultimate_sigma: bool = False,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
) -> SamplingPlan:
    """Plan an img2img sampling run as the reference does (§3.2), with the strength-0 fix (§7.4).

    Its `total_steps` is what `shared.job.steps.sampling_steps` counts for one batch (a test holds the two together).

    Args:
        sampler: a :class:`SamplerName` or a name/alias such as "DPM++ 2M" or "DPM++ 2M Karras".
        schedule: a :class:`ScheduleName`, its id/label, or None/"automatic" for the sampler's default. A schedule
            carried in the sampler name is used when this is None. Ignored by DDIM/UniPC.
        steps: the requested steps (≥ 1).
        strength: denoising strength in [0, 1]; 0 gives a plan with no steps (the output is the init latent).
        fix_steps: opts.img2img_fix_steps.
        scheduler_config: the model's diffusers scheduler config (betas, num_train_timesteps, ...).
        always_discard_penultimate_sigma: opts.always_discard_next_to_last_sigma. DPM2 and DPM2 a always discard
            (the reference's sampler options); other k-diffusion samplers discard only with this option, which also
            adds "Discard penultimate sigma: True" to the infotext.
        sigma_min, sigma_max: "Schedule min/max sigma" for Karras/exponential (default: the model's σ range).
        rho: "Schedule rho" for Karras (default 7).

    Raises:
        ValueError: for an unknown sampler/schedule name, steps < 1, a strength outside [0, 1], or a timestep
            sampler whose schedule would need more steps than the model has timesteps.
    """
    sampler_name, named_schedule = _resolve_sampler(sampler)
    if schedule is None:
        schedule = named_schedule
    impl = _implementation(sampler_name)
    model = ModelSchedule.from_config(scheduler_config)
    schedule_steps, t_enc = img2img_steps(steps, strength, fix_steps)
    request = _Request(sampler_name, impl, steps, schedule_steps, t_enc, model)

    if sampler_name.timestep_sampler:
        return _plan_timestep(request, strength, scheduler_config)

    resolved = _resolve_schedule(sampler_name, schedule)
    extra: dict[str, object] = {"Schedule type": resolved.label}
    discard = sampler_name.name in _DISCARD_PENULTIMATE_BY_DEFAULT
    if always_discard_penultimate_sigma and not discard:
        discard = True
        extra["Discard penultimate sigma"] = True
    if strength == 0:
        # §7.4 (our fix): strength 0 runs no denoising step; the reference would run one at σ_min.
        return _plan(request, resolved.label, extra, discard=discard)

    s_min = model.sigma_min if sigma_min is None else sigma_min
    s_max = model.sigma_max if sigma_max is None else sigma_max
    if discard:
        # Built for one step more, then the second-to-last sigma is dropped: still schedule_steps + 1 values.
        sigmas = discard_penultimate_sigma(k_sigmas(resolved, schedule_steps + 1, model, s_min, s_max, rho))
    else:
        sigmas = k_sigmas(resolved, schedule_steps, model, s_min, s_max, rho)
    # §3.2: t_enc + 1 denoising steps starting from sigmas[steps − t_enc − 1].
    sigma_sched = sigmas[schedule_steps - t_enc - 1 :].clone()
    call_t = model.sigma_to_t(sigma_sched[:-1])
    scheduler: Any = None
    if impl.scheduler_class is not None:
        scheduler = _make_scheduler(impl, scheduler_config)
        load_k_schedule(scheduler, sigma_sched, call_t)
    return _plan(
        request,
        resolved.label,
        extra,
        discard=discard,
        scheduler=scheduler,
        sigmas=sigmas,
        sigma_sched=sigma_sched,
        call_timesteps=call_t,
    )


def _plan_timestep(request: _Request, strength: float, scheduler_config: Mapping[str, Any]) -> SamplingPlan:
    """DDIM / UniPC (§3.2): noise at ``timesteps[t_enc]``, sampler given ``timesteps[:t_enc]``."""
    model, schedule_steps, t_enc = request.model, request.schedule_steps, request.t_enc
    extra: dict[str, object] = {"Schedule type": "Automatic"}
    if strength == 0:  # §7.4
        return _plan(request, "Automatic", extra)
    timesteps = timestep_schedule(schedule_steps, model.alphas_cumprod.numel())
    start_t = int(timesteps[t_enc])
    scheduler = _make_scheduler(request.impl, scheduler_config)
    # The reference's ᾱ buffer (float64 betas, float32 product) rather than diffusers' float32 linspace.
    use_training_alphas(scheduler, model.alphas_cumprod)
    if request.sampler.name == "DDIM":
        # The reference's DDIM loop evaluates timesteps[t_enc−1] … timesteps[1] (t_enc − 1 calls) and each step goes
        # to the previous entry; DDIMScheduler's "leading"/offset-1 timesteps with the same stride give the same
        # prev_timestep = t − N // steps.
        with quiet_numpy_array_deprecation():
            scheduler.set_timesteps(schedule_steps)
        call_t = timesteps[1:t_enc].flip(0)
        points = [timesteps[t_enc : t_enc + 1], call_t]
        if call_t.numel():
            points.append(timesteps[:1])  # the last step lands on timesteps[0]
        sigma_sched = vp_sigma_at(model, torch.cat(points))
        call_timesteps = call_t.to(torch.float32)
    elif t_enc >= 1:
        # UniPC: the reference runs a continuous-time UniPC with t_enc steps, time-uniform from
        # timesteps[t_enc−1] down to timestep 0 (the first evaluated point is one slot below the noise
        # level, like DDIM).
        u = torch.linspace(float(timesteps[t_enc - 1]), 0.0, t_enc + 1)
        sigmas_u = vp_sigma_at(model, u)
        call_timesteps = u[:-1]
        load_k_schedule(scheduler, sigmas_u, call_timesteps)
        sigma_sched = torch.cat([vp_sigma_at(model, timesteps[t_enc : t_enc + 1]), sigmas_u])
    else:
        call_timesteps = _EMPTY
        sigma_sched = vp_sigma_at(model, timesteps[t_enc : t_enc + 1])
    return _plan(
        request,
        "Automatic",
        extra,
        scheduler=scheduler,
        sigma_sched=sigma_sched,
        call_timesteps=call_timesteps,
        timesteps=timesteps,
        start_timestep=start_t,
    )
