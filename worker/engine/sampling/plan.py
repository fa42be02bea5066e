"""A1111 samplers and schedules on diffusers: sigma schedules, strength → steps, and the img2img sampling loop.

Semantics: img2img-semantics.md §3.2 (strength → steps, the schedules, the start point), §3.3 (mask handling during
sampling), §7.4 (strength 0 runs no denoising step). Written from that prose and the published maths (Karras et al.
2022 for Euler/Heun/DPM2 and the ρ-schedule, Lu et al. 2022 for DPM-Solver++); no code is taken from the reference
or from k-diffusion.

Conventions
-----------
* σ ("sigma") is the k-diffusion noise level of an ε-prediction model: ``x_σ = x0 + σ·ε`` (the "k-space" latent).
  The VP (DDPM) latent is ``x_vp = x_σ / √(1 + σ²)`` and ``ᾱ = 1 / (1 + σ²)``.
* The model hook ``denoise_eps(x_in, timestep, sigma)`` always receives the VP-scaled input (``x_σ / √(1 + σ²)``
  for k-diffusion samplers, the VP latent itself for timestep samplers), a ``(B,)`` float timestep tensor (fractional
  for k-diffusion samplers, as the reference passes it), and σ as a float; it must return ε (CFG already applied).
  A v-prediction model can be wrapped with :func:`v_prediction_to_eps`.

Sampler implementations
-----------------------
diffusers 0.42 accepts an explicit sigma list in ``set_timesteps(sigmas=...)`` only for ``EulerDiscreteScheduler``
(UniPC only for flow models). Where a scheduler's step reads nothing but its ``sigmas`` array, this module sets that
array to the reference's schedule after ``set_timesteps`` (LMS, DPM++ 2M, UniPC). The two-evaluation samplers (Heun,
DPM2, DPM2 a, DPM++ SDE, DPM++ 2S a) keep hidden interleaved state in diffusers (``sigmas_interpol``, a BrownianTree
needing ``torchsde``, or no ancestral variant at all), and diffusers' Euler a and DPM++ 2M SDE have no η, so these
steps are written here, a few lines each (see ``_STEP_FUNCTIONS``). DDIM uses ``DDIMScheduler`` with "leading"
spacing and ``steps_offset=1``, which yields exactly the reference's timesteps.

η (eta, the amount of ancestral/stochastic noise)
-------------------------------------------------
:func:`run_sampler` takes ``eta``; None means the sampler's default (:func:`sampler_default_eta`,
:attr:`SamplingPlan.default_eta`), the reference's option defaults:

* Euler a, DPM2 a, DPM++ 2S a, DPM++ SDE, DPM++ 2M SDE: ``opts.eta_ancestral`` = 1.0. The ancestral split of a step
  σ → σ_next is σ_up = min(σ_next, η·√(σ_next²·(σ² − σ_next²)/σ²)), σ_down = √(σ_next² − σ_up²): the deterministic
  step goes to σ_down and fresh noise of size σ_up is added (η = 0: Euler a is Euler, DPM2 a is DPM2, DPM++ 2S a
  is DPM-Solver++(2S)). DPM++ SDE uses the same split for both of its sub-steps. DPM++ 2M SDE (the published
  SDE-DPM-Solver++(2M), midpoint variant) with h = log σ − log σ_next: x' = (σ_next/σ)·e^(−ηh)·x + (1 − e^(−(1+η)h))·x0
  (+ the second-order correction ½(1 − e^(−(1+η)h))·(x0 − x0_prev)·h/h_prev) + σ_next·√(1 − e^(−2ηh))·noise;
  η = 1 is diffusers' "sde-dpmsolver++", η = 0 is the ODE DPM-Solver++(2M).
* DDIM: ``opts.eta_ddim`` = 0.0; η is the DDIM paper's σ_t = η·√((1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)).
* Euler, LMS, Heun, DPM2, DPM++ 2M, UniPC take no η and ignore it (:attr:`SamplingPlan.uses_eta` is False); the
  reference writes "Eta" into the infotext only for samplers that use it and only when it differs from that
  sampler's default.

The noise of every η step comes from the per-image generators (``randn_like_from_generators``); a step whose σ_up
is 0 (η = 0, or the last step onto σ = 0) draws nothing.

Known deviations from the reference
-----------------------------------
* DPM++ SDE and DPM++ 2M SDE draw their noise from the per-image generators (like the ancestral samplers), not from
  a BrownianTree seeded with the batch's seeds: same statistics, different numbers (no ``torchsde`` dependency).
* UniPC runs diffusers' discrete UniPC (order 3, bh1, lower-order final steps) on the reference's time-uniform points;
  the reference uses its own continuous-time implementation, so expect small numerical differences.
* The x0 preview and the value returned on :class:`StopSampling` are the blended (CFG-combined) x0, i.e. the
  reference's "Combined" live-preview content; its default "Prompt" preview needs the cond-only output.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler

from shared.sampler_names import (
    SamplerName,
    ScheduleName,
    find_schedule,
    split_sampler_and_schedule,
)
from worker.noise import randn_like_from_generators

__all__ = [
    "DenoiseEps",
    "ModelSchedule",
    "SamplingPlan",
    "StepInfo",
    "StopSampling",
    "discard_penultimate_sigma",
    "exponential_sigmas",
    "img2img_steps",
    "karras_sigmas",
    "model_alphas_cumprod",
    "model_sigmas",
    "plan_img2img",
    "run_sampler",
    "sampler_default_eta",
    "timestep_schedule",
    "uniform_sigmas",
    "v_prediction_to_eps",
]

#: ``denoise_eps(x_in, timestep, sigma) -> eps``: the model (with CFG) as the sampler sees it.
DenoiseEps = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]

#: Samplers whose reference configuration drops the second-to-last sigma (§3.2 "discard penultimate sigma").
_DISCARD_PENULTIMATE_BY_DEFAULT = frozenset({"DPM2", "DPM2 a"})

#: SD1/SD2/SDXL training schedule, used when a config leaves the betas out.
_SD_BETA_START = 0.00085
_SD_BETA_END = 0.012
_SD_TRAIN_STEPS = 1000


class StopSampling(Exception):
    """Raise from the step callback (or the denoiser hook) to stop sampling early.

    :func:`run_sampler` then returns the last x0 prediction, as the reference returns ``last_latent`` on an
    interrupt (§3.3, §5.3).
    """


@dataclass(frozen=True, eq=False)
class StepInfo:
    """What the callback sees after each sampling step.

    Attributes:
        step: 0-based index of the step that just finished (the reference's ``sampling_step``).
        total_steps: number of steps this run makes (the reference's ``sampling_steps``).
        sigma: the σ the step started from (k-diffusion units; the σ-equivalent of the timestep for DDIM/UniPC).
        x0_preview: the step's x0 prediction (after the mask blend), ``(B, C, h, w)``.
    """

    step: int
    total_steps: int
    sigma: float
    x0_preview: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# The model's training schedule
# ----------------------------------------------------------------------------------------------------------------


def model_alphas_cumprod(config: Mapping[str, Any]) -> torch.Tensor:
    """ᾱ_t for t = 0..N−1 from a diffusers scheduler config, as float32 (the reference's buffer precision).

    Supports ``trained_betas`` and the beta schedules "scaled_linear" (SD: √β linear, computed in float64 like the
    original LDM code) and "linear". Missing keys default to SD1's 0.00085..0.012, 1000 steps.

    Raises:
        ValueError: for another beta schedule or an empty schedule.
    """
    trained = config.get("trained_betas")
    if trained is not None:
        betas = torch.as_tensor(list(trained), dtype=torch.float64)
    else:
        n = int(config.get("num_train_timesteps", _SD_TRAIN_STEPS))
        start = float(config.get("beta_start", _SD_BETA_START))
        end = float(config.get("beta_end", _SD_BETA_END))
        kind = config.get("beta_schedule", "scaled_linear")
        if kind == "scaled_linear":
            betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
        elif kind == "linear":
            betas = torch.linspace(start, end, n, dtype=torch.float64)
        else:
            raise ValueError(f"unsupported beta_schedule {kind!r}; expected 'scaled_linear' or 'linear'")
    if betas.numel() == 0:
        raise ValueError("the training schedule is empty")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def model_sigmas(config: Mapping[str, Any]) -> torch.Tensor:
    """The N training sigmas σ_t = √((1 − ᾱ_t)/ᾱ_t), ascending, float32 (SD1: 0.0292 … 14.6146).

    Raises:
        ValueError: as :func:`model_alphas_cumprod`.
    """
    acp = model_alphas_cumprod(config)
    return ((1 - acp) / acp) ** 0.5


@dataclass(frozen=True, eq=False)
class ModelSchedule:
    """A model's discrete schedule: ᾱ, σ and log σ per training timestep, with σ ↔ t conversions."""

    alphas_cumprod: torch.Tensor
    sigmas: torch.Tensor
    log_sigmas: torch.Tensor

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelSchedule:
        """Build from a diffusers scheduler config (see :func:`model_alphas_cumprod`)."""
        acp = model_alphas_cumprod(config)
        sigmas = ((1 - acp) / acp) ** 0.5
        return cls(alphas_cumprod=acp, sigmas=sigmas, log_sigmas=sigmas.log())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ at (fractional) timesteps t ∈ [0, N−1], interpolating **log σ** linearly between integer steps (§3.2)."""
        t = t.to(torch.float32)
        low = t.floor().long()
        high = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp()

    def sigma_to_t(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The fractional timestep whose log-interpolated σ is ``sigma`` (clamped to [0, N−1]); float32 tensor."""
        s = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
        log_s = s.clamp_min(1e-10).log()
        n = self.log_sigmas.numel()
        # Index of the last training log σ that is ≤ log_s (0 if none), so that [low, low+1] brackets it.
        low = ((log_s[None, :] - self.log_sigmas[:, None]) >= 0).cumsum(0).argmax(0).clamp(max=n - 2)
        high = low + 1
        lo_v, hi_v = self.log_sigmas[low], self.log_sigmas[high]
        w = ((lo_v - log_s) / (lo_v - hi_v)).clamp(0, 1)
        return ((1 - w) * low + w * high).reshape(torch.as_tensor(sigma).shape)


# ----------------------------------------------------------------------------------------------------------------
# Sigma schedules (§3.2): each returns n+1 float32 values, descending, ending in 0
# ----------------------------------------------------------------------------------------------------------------


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"a schedule needs at least one step, got {n}")


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def uniform_sigmas(n: int, training_sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """The "Uniform"/"Automatic" discretisation of k-diffusion samplers (§3.2).

    t = linspace(N−1, 0, n) over the training timesteps, σ(t) by **log-σ** interpolation between integer timesteps
    (diffusers interpolates σ linearly), plus a trailing 0.

    Args:
        n: number of sampling steps (≥ 1).
        training_sigmas: the model's N training sigmas (default: SD1's, see :func:`model_sigmas`).

    Raises:
        ValueError: if n < 1.
    """
    _check_n(n)
    sig = model_sigmas({}) if training_sigmas is None else training_sigmas.to(torch.float32)
    sched = ModelSchedule(alphas_cumprod=1 / (1 + sig**2), sigmas=sig, log_sigmas=sig.log())
    t = torch.linspace(sig.numel() - 1, 0, n)
    return _append_zero(sched.t_to_sigma(t))


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule: σ_i = (σmax^(1/ρ) + i/(n−1)·(σmin^(1/ρ) − σmax^(1/ρ)))^ρ, plus a trailing 0.

    Raises:
        ValueError: if n < 1 or the sigmas are not 0 < sigma_min ≤ sigma_max.
    """
    _check_n(n)
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Exponential schedule: log σ evenly spaced from log σmax to log σmin, plus a trailing 0.

    Raises:
        ValueError: if n < 1 or the sigmas are not 0 < sigma_min ≤ sigma_max.
    """
    _check_n(n)
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def discard_penultimate_sigma(sigmas: torch.Tensor) -> torch.Tensor:
    """Drop the second-to-last value of a schedule (built for one step more), as §3.2 describes.

    Raises:
        ValueError: if the schedule has fewer than three values.
    """
    if sigmas.numel() < 3:
        raise ValueError("need at least three sigmas to discard the penultimate one")
    return torch.cat([sigmas[:-2], sigmas[-1:]])


def timestep_schedule(steps: int, num_train_timesteps: int = _SD_TRAIN_STEPS) -> torch.Tensor:
    """Timesteps of DDIM/UniPC (§3.2): ``clip(range(0, N, N // steps) + 1, 0, N − 1)``, ascending, int64.

    Raises:
        ValueError: if steps < 1 or steps > N (the stride N // steps would be 0).
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"timestep samplers need 1 <= steps <= {num_train_timesteps}, got {steps}")
    stride = num_train_timesteps // steps
    return (torch.arange(0, num_train_timesteps, stride)[:steps] + 1).clamp(0, num_train_timesteps - 1)


# ----------------------------------------------------------------------------------------------------------------
# Strength → steps (§3.2) and the plan
# ----------------------------------------------------------------------------------------------------------------


def img2img_steps(steps: int, denoising_strength: float, fix_steps: bool = False) -> tuple[int, int]:
    """The reference's strength → steps rule (§3.2), unchanged (the strength-0 fix lives in :func:`plan_img2img`).

    * default: ``(steps, int(min(s, 0.999)·steps))``;
    * ``fix_steps`` (opts.img2img_fix_steps): ``(int(steps / min(s, 0.999)), steps − 1)``, and ``(0, steps − 1)``
      when s = 0.

    Returns:
        ``(steps_for_schedule, t_enc)``.

    Raises:
        ValueError: if steps < 1 or the strength is not a number in [0, 1].
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= denoising_strength <= 1.0:  # also rejects NaN
        raise ValueError(f"denoising_strength must be in [0, 1], got {denoising_strength}")
    capped = min(denoising_strength, 0.999)
    if fix_steps:
        return (int(steps / capped) if denoising_strength > 0 else 0), steps - 1
    return steps, int(capped * steps)


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """Everything :func:`run_sampler` needs for one img2img sampling run.

    Attributes:
        sampler: the A1111 sampler.
        schedule_type: the resolved schedule label for the infotext "Schedule type" ("Automatic" for DDIM/UniPC,
            which ignore schedules like the reference).
        implementation: "diffusers:<SchedulerClass>" or "own:<step>" (a step written in this module).
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


def _k_sigmas(
    schedule: ScheduleName, n: int, model: ModelSchedule, sigma_min: float, sigma_max: float, rho: float
) -> torch.Tensor:
    if schedule.name == "uniform":
        return uniform_sigmas(n, model.sigmas)
    if schedule.name == "karras":
        return karras_sigmas(n, sigma_min, sigma_max, rho)
    if schedule.name == "exponential":
        return exponential_sigmas(n, sigma_min, sigma_max)
    raise ValueError(f"schedule {schedule.label!r} is not supported")


# Sampler → (implementation, diffusers class or None, constructor overrides, VP-space step, two calls per step).
#: The reference's option defaults: opts.eta_ancestral (k-diffusion ancestral/SDE samplers) and opts.eta_ddim.
_ETA_ANCESTRAL = 1.0
_ETA_DDIM = 0.0
_FORCED = {"prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0}
_NO_SIGMA_CONVERSIONS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}


@dataclass(frozen=True)
class _SamplerImpl:
    implementation: str
    scheduler_class: Any = None  # a diffusers SchedulerMixin subclass
    options: Mapping[str, Any] = field(default_factory=dict)
    vp_space: bool = False  # the scheduler's sample is x_σ/√(1+σ²) rather than x_σ
    two_calls: bool = False  # own steps that evaluate the model twice per step (not on the last step)
    default_eta: float | None = None  # None: the sampler takes no eta


_IMPLS: dict[str, _SamplerImpl] = {
    "Euler": _SamplerImpl(
        "diffusers:EulerDiscreteScheduler", EulerDiscreteScheduler, {**_FORCED, **_NO_SIGMA_CONVERSIONS}
    ),
    "Euler a": _SamplerImpl("own:euler_ancestral", default_eta=_ETA_ANCESTRAL),
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
    "DPM++ 2M SDE": _SamplerImpl("own:dpmpp_2m_sde", default_eta=_ETA_ANCESTRAL),
    "Heun": _SamplerImpl("own:heun", two_calls=True),
    "DPM2": _SamplerImpl("own:dpm2", two_calls=True),
    "DPM2 a": _SamplerImpl("own:dpm2_ancestral", two_calls=True, default_eta=_ETA_ANCESTRAL),
    "DPM++ SDE": _SamplerImpl("own:dpmpp_sde", two_calls=True, default_eta=_ETA_ANCESTRAL),
    "DPM++ 2S a": _SamplerImpl("own:dpmpp_2s_ancestral", two_calls=True, default_eta=_ETA_ANCESTRAL),
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
        default_eta=_ETA_DDIM,
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


@contextlib.contextmanager
def _quiet_numpy_array_deprecation() -> Iterator[None]:
    """diffusers' ``set_timesteps`` calls ``np.array(tensor)``, which NumPy 2 flags with a DeprecationWarning
    under this torch; the values are unaffected, so that one warning is silenced around the call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword")
        yield


def _make_scheduler(impl: _SamplerImpl, config: Mapping[str, Any]) -> Any:
    assert impl.scheduler_class is not None
    with _quiet_numpy_array_deprecation():
        return impl.scheduler_class.from_config(dict(config), **impl.options)


def _load_k_schedule(scheduler: Any, sigma_sched: torch.Tensor, call_t: torch.Tensor) -> None:
    """Reset a diffusers k-scheduler and load the reference's sigma list into it (see the module docstring)."""
    n = sigma_sched.numel() - 1
    if isinstance(scheduler, EulerDiscreteScheduler):
        with _quiet_numpy_array_deprecation():
            scheduler.set_timesteps(sigmas=sigma_sched.tolist())  # the only k-scheduler taking explicit sigmas
    else:
        with _quiet_numpy_array_deprecation():
            scheduler.set_timesteps(num_inference_steps=n)
        scheduler.sigmas = sigma_sched.clone().to(torch.float32)
        scheduler.timesteps = call_t.clone()
    scheduler.set_begin_index(0)


def sampler_default_eta(sampler: SamplerName | str) -> float | None:
    """The η a sampler uses by default (the reference's opts.eta_ancestral = 1.0 for Euler a, DPM2 a, DPM++ 2S a,
    DPM++ SDE and DPM++ 2M SDE; opts.eta_ddim = 0.0 for DDIM), or None for a sampler that takes no η.

    Raises:
        ValueError: for an unknown sampler name or a sampler without an implementation.
    """
    sampler_name, _ = _resolve_sampler(sampler)
    impl = _IMPLS.get(sampler_name.name)
    if impl is None:
        raise ValueError(f"sampler {sampler_name.name!r} has no implementation")
    return impl.default_eta


def _two_call_model_calls(sigma_sched: torch.Tensor) -> int:
    # Two evaluations per step, one on a step that ends at σ = 0 (it is a plain Euler step there).
    return sum(2 if float(s) > 0 else 1 for s in sigma_sched[1:])


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
    impl = _IMPLS.get(sampler_name.name)
    if impl is None:
        raise ValueError(f"sampler {sampler_name.name!r} has no implementation")
    model = ModelSchedule.from_config(scheduler_config)
    schedule_steps, t_enc = img2img_steps(steps, strength, fix_steps)
    extra: dict[str, object] = {}

    if sampler_name.timestep_sampler:
        return _plan_timestep(sampler_name, impl, steps, strength, schedule_steps, t_enc, model, scheduler_config)

    resolved = _resolve_schedule(sampler_name, schedule)
    extra["Schedule type"] = resolved.label
    discard = sampler_name.name in _DISCARD_PENULTIMATE_BY_DEFAULT
    if always_discard_penultimate_sigma and not discard:
        discard = True
        extra["Discard penultimate sigma"] = True
    if strength == 0:
        # §7.4 (our fix): strength 0 runs no denoising step; the reference would run one at σ_min.
        return _zero_step_plan(sampler_name, impl, resolved.label, steps, schedule_steps, t_enc, model, extra, discard)

    s_min = model.sigma_min if sigma_min is None else sigma_min
    s_max = model.sigma_max if sigma_max is None else sigma_max
    if discard:
        # Built for one step more, then the second-to-last sigma is dropped: still schedule_steps + 1 values.
        sigmas = discard_penultimate_sigma(_k_sigmas(resolved, schedule_steps + 1, model, s_min, s_max, rho))
    else:
        sigmas = _k_sigmas(resolved, schedule_steps, model, s_min, s_max, rho)
    # §3.2: t_enc + 1 denoising steps starting from sigmas[steps − t_enc − 1].
    sigma_sched = sigmas[schedule_steps - t_enc - 1 :].clone()
    call_t = model.sigma_to_t(sigma_sched[:-1])
    n = sigma_sched.numel() - 1
    scheduler: Any = None
    if impl.scheduler_class is not None:
        scheduler = _make_scheduler(impl, scheduler_config)
        _load_k_schedule(scheduler, sigma_sched, call_t)
    return SamplingPlan(
        sampler=sampler_name,
        schedule_type=resolved.label,
        implementation=impl.implementation,
        scheduler=scheduler,
        steps=steps,
        schedule_steps=schedule_steps,
        t_enc=t_enc,
        sigmas=sigmas,
        sigma_sched=sigma_sched,
        call_timesteps=call_t,
        timesteps=None,
        start_sigma=float(sigma_sched[0]),
        start_timestep=None,
        total_steps=n,
        model_calls=_two_call_model_calls(sigma_sched) if impl.two_calls else n,
        is_timestep_sampler=False,
        discard_penultimate_sigma=discard,
        model=model,
        extra_generation_params=extra,
        default_eta=impl.default_eta,
    )


def _zero_step_plan(
    sampler_name: SamplerName,
    impl: _SamplerImpl,
    schedule_type: str,
    steps: int,
    schedule_steps: int,
    t_enc: int,
    model: ModelSchedule,
    extra: Mapping[str, object],
    discard: bool,
) -> SamplingPlan:
    """A plan that runs no step (strength 0, §7.4): `run_sampler` returns the init latent unchanged."""
    empty = torch.zeros(0)
    return SamplingPlan(
        sampler=sampler_name,
        schedule_type=schedule_type,
        implementation=impl.implementation,
        scheduler=None,
        steps=steps,
        schedule_steps=schedule_steps,
        t_enc=t_enc,
        sigmas=empty,
        sigma_sched=empty,
        call_timesteps=empty,
        timesteps=None,
        start_sigma=0.0,
        start_timestep=None,
        total_steps=0,
        model_calls=0,
        is_timestep_sampler=sampler_name.timestep_sampler,
        discard_penultimate_sigma=discard,
        model=model,
        extra_generation_params=extra,
        default_eta=impl.default_eta,
    )


def _vp_sigma_at(model: ModelSchedule, u: torch.Tensor) -> torch.Tensor:
    """σ-equivalent at fractional timesteps u, interpolating log ᾱ linearly (the reference's continuous VP model)."""
    log_acp = model.alphas_cumprod.log()
    u = u.to(torch.float32)
    low, high, w = u.floor().long(), u.ceil().long(), u.frac()
    acp = ((1 - w) * log_acp[low] + w * log_acp[high]).exp()
    return ((1 - acp) / acp) ** 0.5


def _plan_timestep(
    sampler_name: SamplerName,
    impl: _SamplerImpl,
    steps: int,
    strength: float,
    schedule_steps: int,
    t_enc: int,
    model: ModelSchedule,
    scheduler_config: Mapping[str, Any],
) -> SamplingPlan:
    """DDIM / UniPC (§3.2): noise at ``timesteps[t_enc]``, sampler given ``timesteps[:t_enc]``."""
    n_train = model.alphas_cumprod.numel()
    extra: dict[str, object] = {"Schedule type": "Automatic"}
    empty = torch.zeros(0)
    if strength == 0:  # §7.4
        return _zero_step_plan(sampler_name, impl, "Automatic", steps, schedule_steps, t_enc, model, extra, False)
    timesteps = timestep_schedule(schedule_steps, n_train)
    start_t = int(timesteps[t_enc])
    scheduler = _make_scheduler(impl, scheduler_config)
    # The reference's ᾱ buffer (float64 betas, float32 product) rather than diffusers' float32 linspace.
    scheduler.alphas_cumprod = model.alphas_cumprod.clone()
    if sampler_name.name == "DDIM":
        # The reference's DDIM loop evaluates timesteps[t_enc−1] … timesteps[1] (t_enc − 1 calls) and each step goes
        # to the previous entry; DDIMScheduler's "leading"/offset-1 timesteps with the same stride give the same
        # prev_timestep = t − N // steps.
        with _quiet_numpy_array_deprecation():
            scheduler.set_timesteps(schedule_steps)
        call_t = timesteps[1:t_enc].flip(0)
        points = [timesteps[t_enc : t_enc + 1], call_t]
        if call_t.numel():
            points.append(timesteps[:1])  # the last step lands on timesteps[0]
        sigma_sched = _vp_sigma_at(model, torch.cat(points))
        call_timesteps = call_t.to(torch.float32)
    else:
        # UniPC: the reference runs a continuous-time UniPC with t_enc steps, time-uniform from
        # timesteps[t_enc−1] down to timestep 0 (the first evaluated point is one slot below the noise
        # level, like DDIM).
        if t_enc >= 1:
            u = torch.linspace(float(timesteps[t_enc - 1]), 0.0, t_enc + 1)
            sigmas_u = _vp_sigma_at(model, u)
            with _quiet_numpy_array_deprecation():
                scheduler.set_timesteps(num_inference_steps=t_enc)
            scheduler.sigmas = sigmas_u.clone()
            scheduler.timesteps = u[:-1].clone()
            scheduler.set_begin_index(0)
            call_timesteps = u[:-1]
            sigma_sched = torch.cat([_vp_sigma_at(model, timesteps[t_enc : t_enc + 1]), sigmas_u])
        else:
            call_timesteps = empty
            sigma_sched = _vp_sigma_at(model, timesteps[t_enc : t_enc + 1])
    n_calls = call_timesteps.numel()
    return SamplingPlan(
        sampler=sampler_name,
        schedule_type="Automatic",
        implementation=impl.implementation,
        scheduler=scheduler,
        steps=steps,
        schedule_steps=schedule_steps,
        t_enc=t_enc,
        sigmas=empty,
        sigma_sched=sigma_sched,
        call_timesteps=call_timesteps,
        timesteps=timesteps,
        start_sigma=float(sigma_sched[0]),
        start_timestep=start_t,
        total_steps=n_calls,
        model_calls=n_calls,
        is_timestep_sampler=True,
        discard_penultimate_sigma=False,
        model=model,
        extra_generation_params=extra,
        default_eta=impl.default_eta,
    )


# ----------------------------------------------------------------------------------------------------------------
# The sampling loop
# ----------------------------------------------------------------------------------------------------------------


def v_prediction_to_eps(v: torch.Tensor, x_in: torch.Tensor, sigma: float) -> torch.Tensor:
    """ε from a v-prediction output, for a VP-scaled input ``x_in`` at noise level σ: ε = σ_vp·x_in + α·v."""
    alpha = 1.0 / math.sqrt(1.0 + sigma * sigma)
    return (sigma * alpha) * x_in + alpha * v


def _ancestral(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step: σ_up² = σ_to²(σ_from² − σ_to²)/σ_from² (× η²), σ_down² = σ_to² − σ_up²."""
    if sigma_to == 0:
        return 0.0, 0.0
    up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - up**2), up


Denoise = Callable[[torch.Tensor, float], torch.Tensor]  # (x_σ, σ) -> blended x0
Noise = Callable[[], torch.Tensor]
#: ``step(x, σ, σ_next, x0, denoise, noise, η, state) -> x_next``; ``state`` persists across the steps of one run.
StepFunction = Callable[[torch.Tensor, float, float, torch.Tensor, Denoise, Noise, float, dict[str, Any]], torch.Tensor]


def _dpmpp_first_order(x: torch.Tensor, s: float, s_to: float, x0: torch.Tensor) -> torch.Tensor:
    # First-order DPM-Solver++ in λ = −log σ from σ to σ_to; the limit σ_to → 0 is x0 itself.
    if s_to == 0:
        return x0
    return (s_to / s) * x - math.expm1(-(math.log(s) - math.log(s_to))) * x0


def _step_euler_ancestral(
    x: torch.Tensor,
    s: float,
    s_next: float,
    d0: torch.Tensor,
    den: Denoise,
    rnd: Noise,
    eta: float,
    state: dict[str, Any],
) -> torch.Tensor:
    # Euler onto σ_down, then fresh noise of size σ_up (η = 0: plain Euler).
    s_down, s_up = _ancestral(s, s_next, eta)
    x = x + (x - d0) / s * (s_down - s)
    return x + rnd() * s_up if s_up > 0 else x


def _step_heun(
    x: torch.Tensor,
    s: float,
    s_next: float,
    d0: torch.Tensor,
    den: Denoise,
    rnd: Noise,
    eta: float,
    state: dict[str, Any],
) -> torch.Tensor:
    # Heun (Karras 2022, Alg. 1 without churn): Euler predictor, trapezoid corrector; plain Euler onto σ = 0.
    d = (x - d0) / s
    x_pred = x + d * (s_next - s)
    if s_next == 0:
        return x_pred
    d_next = (x_pred - den(x_pred, s_next)) / s_next
    return x + (d + d_next) / 2 * (s_next - s)


def _step_dpm2(
    x: torch.Tensor,
    s: float,
    s_next: float,
    d0: torch.Tensor,
    den: Denoise,
    rnd: Noise,
    eta: float,
    state: dict[str, Any],
) -> torch.Tensor:
    # DPM-Solver-2 in σ: derivative at the log-σ midpoint; plain Euler onto σ = 0.
    d = (x - d0) / s
    if s_next == 0:
        return x + d * (s_next - s)
    s_mid = math.exp((math.log(s) + math.log(s_next)) / 2)
    x_mid = x + d * (s_mid - s)
    d_mid = (x_mid - den(x_mid, s_mid)) / s_mid
    return x + d_mid * (s_next - s)


def _step_dpm2_ancestral(
    x: torch.Tensor,
    s: float,
    s_next: float,
    d0: torch.Tensor,
    den: Denoise,
    rnd: Noise,
    eta: float,
    state: dict[str, Any],
) -> torch.Tensor:
    # DPM2 onto σ_down, then fresh noise of size σ_up.
    s_down, s_up = _ancestral(s, s_next, eta)
    d = (x - d0) / s
    if s_down == 0:
        x = x + d * (s_down - s)
    else:
        s_mid = math.exp((math.log(s) + math.log(s_down)) / 2)
        x_mid = x + d * (s_mid - s)
        d_mid = (x_mid - den(x_mid, s_mid)) / s_mid
        x = x + d_mid * (s_down - s)
    return x + rnd() * s_up if s_up > 0 else x


def _step_dpmpp_2s_ancestral(
    x: torch.Tensor,
    s: float,
    s_next: float,
    d0: torch.Tensor,
    den: Denoise,
    rnd: Noise,
    eta: float,
    state: dict[str, Any],
) -> torch.Tensor:
    # DPM-Solver++(2S) in λ = −log σ onto σ_down (midpoint r = 1/2), then ancestral noise.
    s_down, s_up = _ancestral(s, s_next, eta)
    if s_down == 0:
        x = x + (x - d0) / s * (s_down - s)
    else:
        h = math.log(s) - math.log(s_down)
        s_mid = math.exp(-(-math.log(s) + h / 2))
        x_mid = (s_mid / s) * x - math.expm1(-h / 2) * d0
        d_mid = den(x_mid, s_mid)
        x = (s_down / s) * x - math.expm1(-h) * d_mid
    return x + rnd() * s_up if s_up > 0 else x


def _step_dpmpp_sde(
    x: torch.Tensor,
    s: float,
    s_next: float,
    d0: torch.Tensor,
    den: Denoise,
    rnd: Noise,
    eta: float,
    state: dict[str, Any],
) -> torch.Tensor:
    # DPM-Solver++ SDE (r = 1/2): an ancestral (η) half step to the λ-midpoint, a second evaluation there, then an
    # ancestral (η) full step using the midpoint's x0. Plain Euler onto σ = 0.
    if s_next == 0:
        return x + (x - d0) / s * (s_next - s)
    lam, lam_next = -math.log(s), -math.log(s_next)
    s_mid = math.exp(-(lam + (lam_next - lam) / 2))
    down, up = _ancestral(s, s_mid, eta)
    x_mid = _dpmpp_first_order(x, s, down, d0)
    if up > 0:
        x_mid = x_mid + rnd() * up
    d_mid = den(x_mid, s_mid)
    down, up = _ancestral(s, s_next, eta)
    x = _dpmpp_first_order(x, s, down, d_mid)
    return x + rnd() * up if up > 0 else x


def _step_dpmpp_2m_sde(
    x: torch.Tensor,
    s: float,
    s_next: float,
    d0: torch.Tensor,
    den: Denoise,
    rnd: Noise,
    eta: float,
    state: dict[str, Any],
) -> torch.Tensor:
    # SDE-DPM-Solver++(2M), midpoint form, with η scaling the stochastic part (see the module docstring). The first
    # step is first order; the step onto σ = 0 returns the x0 prediction.
    old_x0: torch.Tensor | None = state.get("old_x0")
    h_last: float | None = state.get("h_last")
    state["old_x0"] = d0
    if s_next == 0:
        return d0
    h = math.log(s) - math.log(s_next)
    eta_h = eta * h
    gain = -math.expm1(-h - eta_h)  # 1 − e^(−(1+η)h)
    x = (s_next / s) * math.exp(-eta_h) * x + gain * d0
    if old_x0 is not None and h_last is not None:
        x = x + (0.5 * gain * h / h_last) * (d0 - old_x0)
    state["h_last"] = h
    if eta > 0:
        x = x + rnd() * (s_next * math.sqrt(-math.expm1(-2.0 * eta_h)))
    return x


_STEP_FUNCTIONS: dict[str, StepFunction] = {
    "own:euler_ancestral": _step_euler_ancestral,
    "own:heun": _step_heun,
    "own:dpm2": _step_dpm2,
    "own:dpm2_ancestral": _step_dpm2_ancestral,
    "own:dpmpp_2s_ancestral": _step_dpmpp_2s_ancestral,
    "own:dpmpp_sde": _step_dpmpp_sde,
    "own:dpmpp_2m_sde": _step_dpmpp_2m_sde,
}


class _LastX0:
    """The most recent x0 prediction (the reference's ``last_latent``), starting with the clean init latent."""

    def __init__(self, init: torch.Tensor) -> None:
        self.value = init


def run_sampler(
    plan: SamplingPlan,
    x_init_latent: torch.Tensor,
    noise: torch.Tensor,
    denoise_eps: DenoiseEps,
    *,
    blend_x0: Callable[[torch.Tensor], torch.Tensor] | None = None,
    blend_xt_before: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    extra_noise: float = 0.0,
    noise_multiplier: float = 1.0,
    eta: float | None = None,
) -> torch.Tensor:
    """Run an img2img sampling plan (§3.2, §3.3) and return the final latent.

    Start point: k-diffusion samplers ``x = init + noise·σ_start`` (plus ``noise·extra_noise``); timestep samplers
    ``x = √ᾱ·init + √(1−ᾱ)·noise`` at ``timesteps[t_enc]`` (plus ``noise·extra_noise·√ᾱ``). ``noise`` is first
    multiplied by ``noise_multiplier`` (the initial noise multiplier, §2.9; ancestral noise is not scaled).

    At every model call of a k-diffusion sampler the ε output becomes ``x0 = x − σ·ε``, ``blend_x0`` is applied
    (the reference blends the x0 prediction with the clean init latent where the mask keeps it) and ``ε' = (x − x0')/σ``
    drives the step. Timestep samplers apply ``blend_xt_before`` to the model input only (mask_before_denoising);
    ``blend_x0`` is not used for them and ``blend_xt_before`` is not used for k-diffusion samplers.

    Args:
        plan: from :func:`plan_img2img`.
        x_init_latent: the clean init latent ``(B, C, h, w)`` (scaled by the VAE factor).
        noise: unit-variance noise of the same shape (see ``worker.noise.create_noise``).
        denoise_eps: ``(x_in, timestep (B,), sigma) -> eps``; see the module docstring for the scaling of x_in.
        blend_x0: mask blend of the x0 prediction (k-diffusion samplers).
        blend_xt_before: mask blend of the noisy model input (timestep samplers).
        generators: per-image generators for ancestral/SDE/DDIM-η noise (the ones ``create_noise`` returned);
            None uses the global torch RNG.
        callback: called with a :class:`StepInfo` after each step; it may raise :class:`StopSampling`.
        extra_noise: opts.img2img_extra_noise (0 = off).
        noise_multiplier: the initial noise multiplier.
        eta: η, the amount of ancestral/stochastic noise (see the module docstring); None uses the sampler's
            default (:attr:`SamplingPlan.default_eta`: 1.0 for the ancestral and SDE samplers, 0.0 for DDIM).
            Samplers without η (``plan.uses_eta`` False) ignore it.

    Returns:
        The sampled latent; a zero-step plan (strength 0, §7.4) returns a copy of ``x_init_latent``. If
        :class:`StopSampling` is raised, the last x0 prediction (the init latent if the model was never called).

    Raises:
        ValueError: if ``noise`` and ``x_init_latent`` differ in shape, or ``eta`` is negative or not finite.
    """
    if noise.shape != x_init_latent.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and init latent {tuple(x_init_latent.shape)} differ in shape")
    if eta is not None and not (math.isfinite(eta) and eta >= 0.0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    eta_value = float(eta) if eta is not None else (plan.default_eta if plan.default_eta is not None else 0.0)
    if plan.start_sigma == 0.0:  # §7.4: strength 0 runs no denoising step
        return x_init_latent.clone()
    noise = noise * noise_multiplier if noise_multiplier != 1.0 else noise
    last = _LastX0(x_init_latent)
    with _quiet_numpy_array_deprecation():
        try:
            if plan.is_timestep_sampler:
                return _run_timestep(
                    plan,
                    x_init_latent,
                    noise,
                    denoise_eps,
                    blend_xt_before,
                    generators,
                    callback,
                    last,
                    extra_noise,
                    eta_value,
                )
            return _run_k(
                plan, x_init_latent, noise, denoise_eps, blend_x0, generators, callback, last, extra_noise, eta_value
            )
        except StopSampling:
            # §3.3/§5.3: an interrupted run returns the last x0 prediction (the reference's last_latent).
            return last.value


def _batch_t(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)


def _run_k(
    plan: SamplingPlan,
    init: torch.Tensor,
    noise: torch.Tensor,
    denoise_eps: DenoiseEps,
    blend_x0: Callable[[torch.Tensor], torch.Tensor] | None,
    generators: Sequence[torch.Generator] | None,
    callback: Callable[[StepInfo], None] | None,
    last: _LastX0,
    extra_noise: float,
    eta: float,
) -> torch.Tensor:
    sig = [float(s) for s in plan.sigma_sched]
    n = len(sig) - 1
    x = init + noise * sig[0]
    if extra_noise > 0:
        x = x + noise * extra_noise

    def denoise(x_: torch.Tensor, sigma: float) -> torch.Tensor:
        x_in = x_ / math.sqrt(sigma * sigma + 1.0)
        eps = denoise_eps(x_in, _batch_t(float(plan.model.sigma_to_t(sigma)), x_), sigma)
        x0 = x_ - sigma * eps
        if blend_x0 is not None:  # §3.3: blend the x0 prediction with the clean init latent
            x0 = blend_x0(x0)
        last.value = x0
        return x0

    def rnd() -> torch.Tensor:
        return randn_like_from_generators(x, generators)

    step_fn = _STEP_FUNCTIONS.get(plan.implementation)
    step_state: dict[str, Any] = {}
    scheduler = copy.deepcopy(plan.scheduler) if plan.scheduler is not None else None
    for i in range(n):
        s, s_next = sig[i], sig[i + 1]
        x0 = denoise(x, s)
        if step_fn is not None:
            x = step_fn(x, s, s_next, x0, denoise, rnd, eta, step_state)
        else:
            assert scheduler is not None
            eps = (x - x0) / s  # ε' consistent with the blended x0
            t = scheduler.timesteps[i]
            # The model input was scaled by `denoise` (x/√(σ²+1), what scale_model_input computes); tell the
            # Euler/LMS schedulers so, or they warn.
            scheduler.is_scale_input_called = True
            if isinstance(scheduler, DPMSolverMultistepScheduler):
                # VP-space scheduler (DPM++ 2M, no η): sample is x_σ/√(1+σ²).
                x_vp = x / math.sqrt(1.0 + s * s)
                x_vp = scheduler.step(eps, t, x_vp).prev_sample
                x = x_vp * math.sqrt(1.0 + s_next * s_next)
            elif isinstance(scheduler, LMSDiscreteScheduler):
                x = scheduler.step(eps, t, x, order=4).prev_sample
            else:
                x = scheduler.step(eps, t, x).prev_sample
        if callback is not None:
            callback(StepInfo(step=i, total_steps=n, sigma=s, x0_preview=x0))
    return x


def _run_timestep(
    plan: SamplingPlan,
    init: torch.Tensor,
    noise: torch.Tensor,
    denoise_eps: DenoiseEps,
    blend_xt_before: Callable[[torch.Tensor], torch.Tensor] | None,
    generators: Sequence[torch.Generator] | None,
    callback: Callable[[StepInfo], None] | None,
    last: _LastX0,
    extra_noise: float,
    eta: float,
) -> torch.Tensor:
    assert plan.start_timestep is not None
    assert plan.scheduler is not None
    acp_start = float(plan.model.alphas_cumprod[plan.start_timestep])
    x = math.sqrt(acp_start) * init + math.sqrt(1.0 - acp_start) * noise
    if extra_noise > 0:
        x = x + noise * extra_noise * math.sqrt(acp_start)
    scheduler = copy.deepcopy(plan.scheduler)
    n = plan.call_timesteps.numel()
    sig = [float(s) for s in plan.sigma_sched]
    for i in range(n):
        t = plan.call_timesteps[i]
        sigma = sig[i + 1]  # sigma_sched[0] is the noise level of the start point
        x_in = blend_xt_before(x) if blend_xt_before is not None else x  # §3.3 mask_before_denoising
        eps = denoise_eps(x_in, _batch_t(float(t), x), sigma)
        acp = 1.0 / (1.0 + sigma * sigma)
        x0 = (x_in - math.sqrt(1.0 - acp) * eps) / math.sqrt(acp)
        last.value = x0
        if isinstance(scheduler, DDIMScheduler):
            # η > 0: σ_t·noise with the noise from the per-image generators (η = 0 draws nothing).
            variance_noise = randn_like_from_generators(x, generators) if eta > 0 else None
            x = scheduler.step(eps, int(t), x, eta=eta, variance_noise=variance_noise).prev_sample
        else:
            x = scheduler.step(eps, t, x).prev_sample
        if callback is not None:
            callback(StepInfo(step=i, total_steps=n, sigma=sigma, x0_preview=x0))
    return x
