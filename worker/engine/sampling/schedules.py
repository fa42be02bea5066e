"""A model's training schedule and the reference's sigma schedules (img2img-semantics.md §3.2).

σ ("sigma") is the k-diffusion noise level of an ε-prediction model: ``x_σ = x0 + σ·ε``; the VP (DDPM) latent is
``x_vp = x_σ / √(1 + σ²)`` and ``ᾱ = 1 / (1 + σ²)``. Written from the published maths (Karras et al. 2022 for the
ρ-schedule); no code is taken from the reference or from k-diffusion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats as scipy_stats

from shared.sampler_names import ScheduleName

__all__ = [
    "AYS_SD1",
    "AYS_SDXL",
    "LcmModelSchedule",
    "ModelSchedule",
    "ScheduleArgs",
    "align_your_steps_sigmas",
    "beta_sigmas",
    "ddim_sigmas",
    "discard_penultimate_sigma",
    "exponential_sigmas",
    "k_sigmas",
    "karras_sigmas",
    "kl_optimal_sigmas",
    "model_alphas_cumprod",
    "model_sigmas",
    "normal_sigmas",
    "polyexponential_sigmas",
    "sgm_uniform_sigmas",
    "simple_sigmas",
    "timestep_schedule",
    "uniform_sigmas",
    "vp_sigma_at",
]

#: SD1/SD2/SDXL training schedule, used when a config leaves the betas out.
_SD_BETA_START = 0.00085
_SD_BETA_END = 0.012
_SD_TRAIN_STEPS = 1000


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

    def get_sigmas(self, n: int) -> torch.Tensor:
        """The model's own discretisation of n steps ("Uniform"): t = linspace(N−1, 0, n), σ(t), plus a trailing 0."""
        _check_n(n)
        t = torch.linspace(self.sigmas.numel() - 1, 0, n)
        return _append_zero(self.t_to_sigma(t))

    def model_timestep(self, sigma: float) -> float:
        """The UNet timestep of a k-diffusion step at σ (fractional, as the reference passes it)."""
        return float(self.sigma_to_t(sigma))


#: LCM's "original" schedule: 50 of the 1000 training timesteps, every 20th, ending at timestep 999.
LCM_ORIGINAL_STEPS = 50


@dataclass(frozen=True, eq=False)
class LcmModelSchedule(ModelSchedule):
    """LCM's discretisation (docs/engine.md "Samplers", LCM): the training ᾱ at timesteps 19, 39, …, 999 form the
    model's 50 sigmas; σ → t snaps to the nearest of them (t = 20·i + 19) and t → σ interpolates log σ over that
    table at (t − 19)/20. Its "Uniform" schedule runs t evenly from t(σ_max) = 999 to t(σ_min) = 19."""

    skip: int = 20

    @classmethod
    def from_training(cls, model: ModelSchedule, original_steps: int = LCM_ORIGINAL_STEPS) -> LcmModelSchedule:
        n = model.alphas_cumprod.numel()
        skip = n // original_steps
        index = torch.tensor([n - 1 - (original_steps - 1 - i) * skip for i in range(original_steps)])
        acp = model.alphas_cumprod[index]
        sigmas = ((1 - acp) / acp) ** 0.5
        return cls(alphas_cumprod=acp, sigmas=sigmas, log_sigmas=sigmas.log(), skip=skip)

    def sigma_to_t(self, sigma: float | torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32)
        nearest = (s.reshape(-1).log()[None, :] - self.log_sigmas[:, None]).abs().argmin(dim=0)
        return (nearest * self.skip + (self.skip - 1)).reshape(s.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        index = ((t - (self.skip - 1)) / self.skip).float().clamp(0, self.sigmas.numel() - 1)
        return super().t_to_sigma(index)

    def get_sigmas(self, n: int) -> torch.Tensor:
        _check_n(n)
        start = self.sigma_to_t(self.sigmas[-1])
        end = self.sigma_to_t(self.sigmas[0])
        return _append_zero(self.t_to_sigma(torch.linspace(float(start), float(end), n)))


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


def polyexponential_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Polyexponential: log σ = log σmin + r^ρ·(log σmax − log σmin) with r = linspace(1, 0, n), plus a trailing 0
    (ρ = 1 is the exponential schedule)."""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def sgm_uniform_sigmas(n: int, model: ModelSchedule, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """SGM Uniform: t evenly from t(σmax) to t(σmin) over n + 1 points, the last dropped, σ(t), plus a trailing 0
    (diffusers' "trailing" spacing with fractional t)."""
    _check_n(n)
    start = float(model.sigma_to_t(torch.tensor(sigma_max)))
    end = float(model.sigma_to_t(torch.tensor(sigma_min)))
    return _append_zero(model.t_to_sigma(torch.linspace(start, end, n + 1)[:-1]).to(torch.float32))


def normal_sigmas(n: int, model: ModelSchedule, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Normal: t evenly from t(σmax) to t(σmin) over n points (both ends included), σ(t), plus a trailing 0."""
    _check_n(n)
    start = float(model.sigma_to_t(torch.tensor(sigma_max)))
    end = float(model.sigma_to_t(torch.tensor(sigma_min)))
    return _append_zero(model.t_to_sigma(torch.linspace(start, end, n)).to(torch.float32))


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """KL Optimal: σ_i = tan((i/n)·atan σmin + (1 − i/n)·atan σmax) for i = 0..n — n + 1 values that end at σmin,
    **not** at 0 (the reference's schedule leaves the last σmin of noise in the latent)."""
    _check_n(n)
    a_min = torch.arctan(torch.tensor(sigma_min))
    a_max = torch.arctan(torch.tensor(sigma_max))
    ramp = torch.arange(n + 1) / n
    return torch.tan(ramp * a_min + (1.0 - ramp) * a_max)


#: The Align Your Steps lists of 11 sigmas (NVIDIA's published values for SD1.5 and SDXL).
AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def align_your_steps_sigmas(n: int, sdxl: bool = False) -> torch.Tensor:
    """Align Your Steps: the published list for the model family (SD1 or SDXL); for n ≠ 11 values, log σ is
    interpolated linearly at n evenly spaced points; plus a trailing 0. σmin/σmax are not used."""
    _check_n(n)
    table = AYS_SDXL if sdxl else AYS_SD1
    if n == len(table):
        values = [*table, 0.0]
    else:
        xs = np.linspace(0, 1, len(table))
        ys = np.log(np.asarray(table[::-1], dtype=np.float64))
        resampled = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1]
        values = [*resampled.tolist(), 0.0]
    return torch.tensor(values, dtype=torch.float32)


def simple_sigmas(n: int, model: ModelSchedule) -> torch.Tensor:
    """Simple: σ_i = sigmas[−(1 + ⌊i·N/n⌋)] of the model's N training sigmas, for i = 0..n−1, plus a trailing 0."""
    _check_n(n)
    stride = model.sigmas.numel() / n
    picked = [float(model.sigmas[-(1 + int(i * stride))]) for i in range(n)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def ddim_sigmas(n: int, model: ModelSchedule) -> torch.Tensor:
    """DDIM: the training sigmas at indices 1, 1 + k, 1 + 2k, … (k = max(N // n, 1)), descending, plus a trailing
    0. Its length is ``shared.job.steps.ddim_schedule_length(n) + 1``: not n + 1 unless N is a multiple of n."""
    _check_n(n)
    stride = max(model.sigmas.numel() // n, 1)
    picked = [float(model.sigmas[i]) for i in range(1, model.sigmas.numel(), stride)]
    return torch.tensor([*picked[::-1], 0.0], dtype=torch.float32)


#: The webui's defaults of the Beta schedule's options (beta_dist_alpha, beta_dist_beta).
BETA_DIST_ALPHA = 0.6
BETA_DIST_BETA = 0.6


def beta_sigmas(
    n: int, sigma_min: float, sigma_max: float, alpha: float = BETA_DIST_ALPHA, beta: float = BETA_DIST_BETA
) -> torch.Tensor:
    """Beta (Lee et al. 2024): σ_i = σmin + q_i·(σmax − σmin) with q_i the Beta(α, β) quantile of 1 − i/(n−1),
    plus a trailing 0."""
    _check_n(n)
    quantiles = [float(scipy_stats.beta.ppf(u, alpha, beta)) for u in 1 - np.linspace(0, 1, n)]
    return torch.tensor([*(sigma_min + q * (sigma_max - sigma_min) for q in quantiles), 0.0], dtype=torch.float32)


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")


@dataclass(frozen=True)
class ScheduleArgs:
    """What a schedule may read besides n: the model's discretisation, σ range, ρ, the Beta shape and the family."""

    model: ModelSchedule
    sigma_min: float
    sigma_max: float
    rho: float | None = None  # None: the schedule's default ρ
    beta_alpha: float = BETA_DIST_ALPHA
    beta_beta: float = BETA_DIST_BETA
    sdxl: bool = False


def k_sigmas(schedule: ScheduleName, n: int, args: ScheduleArgs) -> torch.Tensor:
    """The k-diffusion schedule `schedule` of n steps, as float32 (docs/engine.md "Schedules").

    Raises:
        ValueError: for Automatic (resolve it first) or an unknown schedule, or as the schedule functions.
    """
    name, model = schedule.name, args.model
    if name == "uniform":
        return model.get_sigmas(n)
    if name == "karras":
        return karras_sigmas(n, args.sigma_min, args.sigma_max, 7.0 if args.rho is None else args.rho)
    if name == "exponential":
        return exponential_sigmas(n, args.sigma_min, args.sigma_max)
    if name == "polyexponential":
        return polyexponential_sigmas(n, args.sigma_min, args.sigma_max, 1.0 if args.rho is None else args.rho)
    if name == "sgm_uniform":
        return sgm_uniform_sigmas(n, model, args.sigma_min, args.sigma_max)
    if name == "kl_optimal":
        return kl_optimal_sigmas(n, args.sigma_min, args.sigma_max)
    if name == "align_your_steps":
        return align_your_steps_sigmas(n, args.sdxl)
    if name == "simple":
        return simple_sigmas(n, model)
    if name == "normal":
        return normal_sigmas(n, model, args.sigma_min, args.sigma_max)
    if name == "ddim":
        return ddim_sigmas(n, model)
    if name == "beta":
        return beta_sigmas(n, args.sigma_min, args.sigma_max, args.beta_alpha, args.beta_beta)
    raise ValueError(f"schedule {schedule.label!r} is not supported")


def vp_sigma_at(model: ModelSchedule, u: torch.Tensor) -> torch.Tensor:
    """σ-equivalent at fractional timesteps u, interpolating log ᾱ linearly (the reference's continuous VP model)."""
    log_acp = model.alphas_cumprod.log()
    u = u.to(torch.float32)
    low, high, w = u.floor().long(), u.ceil().long(), u.frac()
    acp = ((1 - w) * log_acp[low] + w * log_acp[high]).exp()
    return ((1 - acp) / acp) ** 0.5
