"""The sampling plan: what one img2img sampling run does, built once per job from the sampler, the schedule, the
steps and the strength (img2img-semantics.md §3.2, §7.4), and the diffusers scheduler behind each sampler."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler

from shared.job.steps import default_eta, img2img_steps
from shared.sampler_names import SamplerName, ScheduleName, find_schedule, split_sampler_and_schedule
from worker.engine.diffusers_internals import load_k_schedule, quiet_numpy_array_deprecation, use_training_alphas
from worker.engine.sampling.schedules import (
    BETA_DIST_ALPHA,
    BETA_DIST_BETA,
    LcmModelSchedule,
    ModelSchedule,
    ScheduleArgs,
    discard_penultimate_sigma,
    k_sigmas,
    timestep_schedule,
    vp_sigma_at,
)
from worker.engine.sampling.whole_runs import dpm_fast_orders, restart_step_list

__all__ = ["SamplerOptions", "SamplingPlan", "plan_img2img", "sampler_default_eta"]

#: UniPC's variants and skip types as the webui names them (docs/engine.md "Samplers", UniPC options).
UNI_PC_VARIANTS = ("bh1", "bh2", "vary_coeff")
UNI_PC_SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


@dataclass(frozen=True)
class SamplerOptions:
    """The sampler options of a job: the reference's `s_*` fields (already resolved against the options) and the
    webui options that change sampling (docs/engine.md "Sampler options").

    Attributes:
        s_churn, s_tmin, s_tmax, s_noise: churn (Euler, Heun, DPM2: σ is raised by γ = min(s_churn/n, √2 − 1) where
            s_tmin ≤ σ ≤ s_tmax) and the noise multiplier (DPM2 a, DPM++ 2S a, the SDE samplers, DPM fast and the
            churn noise). s_tmax = inf means no upper bound.
        sigma_min, sigma_max, rho: the options' overrides of the schedule (None: the model's range, the schedule's
            own ρ).
        always_discard_penultimate_sigma: opts.always_discard_next_to_last_sigma.
        sgm_noise_multiplier: the start noise is scaled by √(1 + σ²) instead of σ (k-diffusion samplers).
        uni_pc_variant, uni_pc_skip_type, uni_pc_order, uni_pc_lower_order_final: UniPC's options.
        beta_dist_alpha, beta_dist_beta: the Beta schedule's shape.
        sdxl: the model is SDXL (Align Your Steps uses the SDXL list).
    """

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    always_discard_penultimate_sigma: bool = False
    sgm_noise_multiplier: bool = False
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    beta_dist_alpha: float = BETA_DIST_ALPHA
    beta_dist_beta: float = BETA_DIST_BETA
    sdxl: bool = False


#: Samplers the reference gives churn (s_churn, s_tmin, s_tmax) and which take s_noise.
CHURN_SAMPLERS = frozenset({"Euler", "Heun", "DPM2"})
S_NOISE_SAMPLERS = frozenset(
    {
        *CHURN_SAMPLERS,
        "DPM fast",
        "DPM2 a",
        "DPM++ 2S a",
        "DPM++ SDE",
        "DPM++ 2M SDE",
        "DPM++ 2M SDE Heun",
        "DPM++ 3M SDE",
    }
)


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
        options: the sampler options this plan runs with (churn, s_noise, the SGM noise multiplier, UniPC's).
    """

    @property
    def brownian_range(self) -> tuple[float, float] | None:
        """SDE samplers: [σ_min, σ_max] of the Brownian trees — the smallest non-zero and the largest sigma of the
        whole schedule (not only the part img2img runs), as the reference builds them; else None."""
        if not self.sampler.brownian_noise or not self.sigmas.numel():
            return None
        positive = self.sigmas[self.sigmas > 0]
        return float(positive.min()), float(self.sigmas.max())

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
    options: SamplerOptions = field(default_factory=SamplerOptions)

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


# Sampler → (implementation, diffusers class or None, constructor overrides, two calls per step).
_FORCED = {"prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0}
_NO_SIGMA_CONVERSIONS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}


@dataclass(frozen=True)
class _SamplerImpl:
    implementation: str
    scheduler_class: Any = None  # a diffusers SchedulerMixin subclass
    options: Mapping[str, Any] = field(default_factory=dict)
    two_calls: bool = False  # own steps that evaluate the model twice per step (not on the last step)


_DDIM_OPTIONS = {
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "thresholding": False,
    "rescale_betas_zero_snr": False,
}

_IMPLS: dict[str, _SamplerImpl] = {
    "Euler": _SamplerImpl("own:euler"),
    "Euler a": _SamplerImpl("own:euler_ancestral"),
    "LMS": _SamplerImpl("diffusers:LMSDiscreteScheduler", LMSDiscreteScheduler, {**_FORCED, **_NO_SIGMA_CONVERSIONS}),
    "DPM++ 2M": _SamplerImpl("own:dpmpp_2m"),
    "DPM++ 2M SDE": _SamplerImpl("own:dpmpp_2m_sde"),
    "DPM++ 2M SDE Heun": _SamplerImpl("own:dpmpp_2m_sde_heun"),
    "DPM++ 3M SDE": _SamplerImpl("own:dpmpp_3m_sde"),
    "Heun": _SamplerImpl("own:heun", two_calls=True),
    "DPM2": _SamplerImpl("own:dpm2", two_calls=True),
    "DPM2 a": _SamplerImpl("own:dpm2_ancestral", two_calls=True),
    "DPM++ SDE": _SamplerImpl("own:dpmpp_sde", two_calls=True),
    "DPM++ 2S a": _SamplerImpl("own:dpmpp_2s_ancestral", two_calls=True),
    "DPM fast": _SamplerImpl("run:dpm_fast"),
    "DPM adaptive": _SamplerImpl("run:dpm_adaptive"),
    "Restart": _SamplerImpl("run:restart"),
    "LCM": _SamplerImpl("own:lcm"),
    "DDIM": _SamplerImpl("diffusers:DDIMScheduler", DDIMScheduler, _DDIM_OPTIONS),
    "DDIM CFG++": _SamplerImpl("own:ddim_cfgpp", DDIMScheduler, _DDIM_OPTIONS),
    "PLMS": _SamplerImpl("own:plms"),
    "UniPC": _SamplerImpl(
        "diffusers:UniPCMultistepScheduler",
        UniPCMultistepScheduler,
        {
            **_FORCED,
            **_NO_SIGMA_CONVERSIONS,
            "predict_x0": True,
            "thresholding": False,
            "use_flow_sigmas": False,
        },
    ),
}


def _make_scheduler(impl: _SamplerImpl, config: Mapping[str, Any], **extra: Any) -> Any:
    assert impl.scheduler_class is not None
    with quiet_numpy_array_deprecation():
        return impl.scheduler_class.from_config(dict(config), **impl.options, **extra)


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
    options: SamplerOptions


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
    total, calls = _counts(request, sigma_sched, call_timesteps)
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
        model_calls=calls,
        is_timestep_sampler=request.sampler.timestep_sampler,
        discard_penultimate_sigma=discard,
        model=request.model,
        extra_generation_params=extra,
        default_eta=default_eta(request.sampler.name),
        options=request.options,
    )


def _counts(request: _Request, sigma_sched: torch.Tensor, call_timesteps: torch.Tensor) -> tuple[int, int]:
    """(steps, model calls) of a run over these points; DPM adaptive's are estimates (t_enc + 1 steps, 3 calls
    each), as its count depends on the model's outputs."""
    impl, n = request.impl.implementation, call_timesteps.numel()
    if not sigma_sched.numel():
        return 0, 0
    if impl == "run:dpm_fast":
        return len(dpm_fast_orders(n)), n
    if impl == "run:dpm_adaptive":
        return n, 3 * n
    if impl == "run:restart":
        pairs = restart_step_list(sigma_sched)
        return len(pairs), sum(2 if b > 0 else 1 for _, b in pairs)
    if impl == "own:plms":
        return n, n + 1 if n else 0  # the first step evaluates the model twice
    if request.impl.two_calls:
        return n, _two_call_model_calls(sigma_sched)
    return n, n


def _model_schedule(sampler: SamplerName, scheduler_config: Mapping[str, Any]) -> ModelSchedule:
    training = ModelSchedule.from_config(scheduler_config)
    return LcmModelSchedule.from_training(training) if sampler.name == "LCM" else training


def plan_img2img(
    sampler: SamplerName | str,
    schedule: ScheduleName | str | None,
    steps: int,
    strength: float,
    fix_steps: bool,
    scheduler_config: Mapping[str, Any],
    *,
    options: SamplerOptions | None = None,
    always_discard_penultimate_sigma: bool = False,
) -> SamplingPlan:
    """Plan an img2img sampling run as the reference does (§3.2), with the strength-0 fix (§7.4).

    Its `total_steps` is what `shared.job.steps.sampling_steps` counts for one batch (a test holds the two together).

    Args:
        sampler: a :class:`SamplerName` or a name/alias such as "DPM++ 2M" or "DPM++ 2M Karras".
        schedule: a :class:`ScheduleName`, its id/label, or None/"automatic" for the sampler's default. A schedule
            carried in the sampler name is used when this is None. Ignored by the timestep samplers.
        steps: the requested steps (≥ 1).
        strength: denoising strength in [0, 1]; 0 gives a plan with no steps (the output is the init latent).
        fix_steps: opts.img2img_fix_steps.
        scheduler_config: the model's diffusers scheduler config (betas, num_train_timesteps, ...).
        options: the sampler options (:class:`SamplerOptions`; default: the webui's defaults).
        always_discard_penultimate_sigma: shorthand for that option (or'ed with ``options``'). DPM2, DPM2 a and
            DPM++ 3M SDE always discard (the reference's sampler options); other samplers discard only with this
            option, which also adds "Discard penultimate sigma: True" to the infotext.

    Raises:
        ValueError: for an unknown sampler/schedule name, steps < 1, a strength outside [0, 1], or a timestep
            sampler whose schedule would need more steps than the model has timesteps.
    """
    opts = options if options is not None else SamplerOptions()
    if always_discard_penultimate_sigma and not opts.always_discard_penultimate_sigma:
        opts = dataclasses.replace(opts, always_discard_penultimate_sigma=True)
    sampler_name, named_schedule = _resolve_sampler(sampler)
    if schedule is None:
        schedule = named_schedule
    impl = _implementation(sampler_name)
    model = _model_schedule(sampler_name, scheduler_config)
    schedule_steps, t_enc = img2img_steps(steps, strength, fix_steps)
    request = _Request(sampler_name, impl, steps, schedule_steps, t_enc, model, opts)

    extra: dict[str, object] = {}
    discard = sampler_name.discards_penultimate_sigma
    if opts.always_discard_penultimate_sigma and not discard:
        discard = True
        extra["Discard penultimate sigma"] = True
    if sampler_name.timestep_sampler:
        return _plan_timestep(request, strength, scheduler_config, extra, discard)

    explicit = schedule if isinstance(schedule, ScheduleName) else find_schedule(schedule) if schedule else None
    if schedule is not None and explicit is None:
        raise ValueError(f"unknown schedule {schedule!r}")
    resolved = _resolve_schedule(sampler_name, explicit)
    # The reference's Automatic for a sampler without a schedule of its own is the model's discretisation with no
    # schedule options; any named schedule (also "Uniform" chosen by name) reads the σ/ρ overrides.
    own_discretisation = (explicit is None or explicit.name == "automatic") and sampler_name.default_schedule == (
        "uniform"
    )
    args = ScheduleArgs(
        model, model.sigma_min, model.sigma_max, None, opts.beta_dist_alpha, opts.beta_dist_beta, opts.sdxl
    )
    if not own_discretisation:
        extra["Schedule type"] = resolved.label
        args = _with_overrides(args, resolved, opts, extra)
    if opts.sgm_noise_multiplier:
        extra["SGM noise multiplier"] = True
    if strength == 0:
        # §7.4 (our fix): strength 0 runs no denoising step; the reference would run one at σ_min.
        return _plan(request, resolved.label, extra, discard=discard)

    # Built for one step more when discarding, then the second-to-last sigma is dropped.
    sigmas = k_sigmas(resolved, schedule_steps + (1 if discard else 0), args)
    if discard:
        sigmas = discard_penultimate_sigma(sigmas)
    # §3.2: the run starts from sigmas[steps − t_enc − 1] and walks the rest of the schedule.
    sigma_sched = sigmas[schedule_steps - t_enc - 1 :].clone()
    call_t = model.sigma_to_t(sigma_sched[:-1]).to(torch.float32)
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


def _with_overrides(
    args: ScheduleArgs, schedule: ScheduleName, opts: SamplerOptions, extra: dict[str, object]
) -> ScheduleArgs:
    """The options' σ_min/σ_max/ρ overrides (0 or None: off) and the Beta shape, with their infotext entries."""
    changes: dict[str, Any] = {}
    if opts.sigma_min and opts.sigma_min != args.model.sigma_min:
        changes["sigma_min"] = opts.sigma_min
        extra["Schedule min sigma"] = opts.sigma_min
    if opts.sigma_max and opts.sigma_max != args.model.sigma_max:
        changes["sigma_max"] = opts.sigma_max
        extra["Schedule max sigma"] = opts.sigma_max
    if schedule.default_rho != -1 and opts.rho:
        changes["rho"] = opts.rho
        extra["Schedule rho"] = opts.rho
    if schedule.name == "beta":
        extra["Beta schedule alpha"] = opts.beta_dist_alpha
        extra["Beta schedule beta"] = opts.beta_dist_beta
    return dataclasses.replace(args, **changes)


def _unipc_points(model: ModelSchedule, u_start: float, n: int, skip_type: str) -> torch.Tensor:
    """UniPC's n + 1 time points from timestep u_start down to 0, in the reference's continuous time
    t = (u + 1)/N: "time_uniform" even in t, "time_quadratic" even in √t, "logSNR" even in λ = log(α/σ) (log ᾱ
    interpolated linearly between integer timesteps)."""
    n_train = model.alphas_cumprod.numel()
    t_start, t_end = (u_start + 1) / n_train, 1 / n_train
    if skip_type == "time_uniform":
        t = torch.linspace(t_start, t_end, n + 1, dtype=torch.float64)
    elif skip_type == "time_quadratic":
        t = torch.linspace(math.sqrt(t_start), math.sqrt(t_end), n + 1, dtype=torch.float64) ** 2
    elif skip_type == "logSNR":
        half_log_acp = 0.5 * model.alphas_cumprod.to(torch.float64).log()  # log α at u = 0..N−1

        def lam(u: float) -> float:
            low = min(math.floor(u), n_train - 2)
            w = u - low
            log_alpha = (1 - w) * float(half_log_acp[low]) + w * float(half_log_acp[low + 1])
            return log_alpha - 0.5 * math.log(1 - math.exp(2 * log_alpha))

        lams = torch.linspace(lam(u_start), lam(0.0), n + 1, dtype=torch.float64)
        log_alphas = -0.5 * torch.logaddexp(torch.zeros_like(lams), -2 * lams)
        # Invert log α(u) (decreasing in u) by piecewise-linear interpolation.
        xs, ys = half_log_acp.flip(0).numpy(), torch.arange(n_train - 1, -1, -1, dtype=torch.float64).numpy()
        u = torch.from_numpy(np.interp(log_alphas.numpy(), xs, ys))
        return u.to(torch.float32)
    else:
        raise ValueError(f"unknown UniPC skip type {skip_type!r}; expected one of {', '.join(UNI_PC_SKIP_TYPES)}")
    return ((t * n_train) - 1).to(torch.float32)


def _plan_timestep(
    request: _Request,
    strength: float,
    scheduler_config: Mapping[str, Any],
    extra: dict[str, object],
    discard: bool,
) -> SamplingPlan:
    """DDIM / DDIM CFG++ / PLMS / UniPC (§3.2): noise at ``timesteps[t_enc]``, sampler given ``timesteps[:t_enc]``.
    With "discard penultimate sigma" the timesteps are built for one step more (the reference does that too)."""
    model, t_enc, opts = request.model, request.t_enc, request.options
    name = request.sampler.name
    extra = {"Schedule type": "Automatic", **extra}
    if strength == 0:  # §7.4
        return _plan(request, "Automatic", extra)
    schedule_steps = request.schedule_steps + (1 if discard else 0)
    timesteps = timestep_schedule(schedule_steps, model.alphas_cumprod.numel())
    start_t = int(timesteps[t_enc])
    scheduler: Any = None
    if name == "UniPC":
        if opts.uni_pc_variant not in ("bh1", "bh2"):
            raise ValueError(f"UniPC variant {opts.uni_pc_variant!r} is not supported; use 'bh1' or 'bh2'")
        scheduler = _make_scheduler(
            request.impl,
            scheduler_config,
            solver_order=opts.uni_pc_order,
            solver_type=opts.uni_pc_variant,
            lower_order_final=opts.uni_pc_lower_order_final,
        )
    elif request.impl.scheduler_class is not None:
        scheduler = _make_scheduler(request.impl, scheduler_config)
    if scheduler is not None:
        # The reference's ᾱ buffer (float64 betas, float32 product) rather than diffusers' float32 linspace.
        use_training_alphas(scheduler, model.alphas_cumprod)
    if name != "UniPC":
        # The reference's DDIM/PLMS loops evaluate timesteps[t_enc−1] … timesteps[1] (t_enc − 1 calls) and each step
        # goes to the previous entry (the last one lands on timesteps[0]); DDIMScheduler's "leading"/offset-1
        # timesteps with the same stride give the same prev_timestep = t − N // steps.
        if scheduler is not None:
            with quiet_numpy_array_deprecation():
                scheduler.set_timesteps(schedule_steps)
        call_t = timesteps[1:t_enc].flip(0)
        points = [timesteps[t_enc : t_enc + 1], call_t]
        if call_t.numel():
            points.append(timesteps[:1])
        sigma_sched = vp_sigma_at(model, torch.cat(points))
        call_timesteps = call_t.to(torch.float32)
    elif t_enc >= 1:
        # UniPC: the reference runs a continuous-time UniPC with t_enc steps from timesteps[t_enc−1] down to
        # timestep 0 (the first evaluated point is one slot below the noise level, like DDIM).
        u = _unipc_points(model, float(timesteps[t_enc - 1]), t_enc, opts.uni_pc_skip_type)
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
