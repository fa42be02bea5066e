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

import torch

from shared.sampler_names import ScheduleName

__all__ = [
    "ModelSchedule",
    "discard_penultimate_sigma",
    "exponential_sigmas",
    "k_sigmas",
    "karras_sigmas",
    "model_alphas_cumprod",
    "model_sigmas",
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


def k_sigmas(
    schedule: ScheduleName, n: int, model: ModelSchedule, sigma_min: float, sigma_max: float, rho: float
) -> torch.Tensor:
    """The k-diffusion schedule `schedule` (uniform, Karras or exponential) of n steps.

    Raises:
        ValueError: for another schedule (Automatic must be resolved first), or as the schedule functions.
    """
    if schedule.name == "uniform":
        return uniform_sigmas(n, model.sigmas)
    if schedule.name == "karras":
        return karras_sigmas(n, sigma_min, sigma_max, rho)
    if schedule.name == "exponential":
        return exponential_sigmas(n, sigma_min, sigma_max)
    raise ValueError(f"schedule {schedule.label!r} is not supported")


def vp_sigma_at(model: ModelSchedule, u: torch.Tensor) -> torch.Tensor:
    """σ-equivalent at fractional timesteps u, interpolating log ᾱ linearly (the reference's continuous VP model)."""
    log_acp = model.alphas_cumprod.log()
    u = u.to(torch.float32)
    low, high, w = u.floor().long(), u.ceil().long(), u.frac()
    acp = ((1 - w) * log_acp[low] + w * log_acp[high]).exp()
    return ((1 - acp) / acp) ** 0.5
