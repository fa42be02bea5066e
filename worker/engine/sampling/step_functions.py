"""The sampler steps written here rather than taken from diffusers (img2img-semantics.md §3.2).

Heun, DPM2, DPM2 a, DPM++ SDE and DPM++ 2S a evaluate the model twice per step and keep hidden interleaved state in
diffusers (``sigmas_interpol``, a BrownianTree needing ``torchsde``, or no ancestral variant at all); diffusers'
Euler a and DPM++ 2M SDE have no η. Each is a few lines from the published maths (Karras et al. 2022, Lu et al.
2022); no code is taken from the reference or from k-diffusion. See the package docstring for η and the ancestral
split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["STEP_FUNCTIONS", "Denoise", "Noise", "Step", "StepFunction"]

Denoise = Callable[[torch.Tensor, float], torch.Tensor]  # (x_σ, σ) -> blended x0
Noise = Callable[[], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Step:
    """One step of a k-diffusion sampler from σ to σ_next.

    Attributes:
        x: the latent at σ (k-space).
        sigma, sigma_next: where the step starts and where it goes.
        x0: the (mask-blended) x0 prediction at σ, already computed by the loop.
        denoise: the model as ``(x_σ, σ) -> blended x0``, for the samplers that evaluate it a second time.
        noise: fresh unit noise from the per-image generators.
        eta: η, the amount of ancestral/stochastic noise.
        state: persists across the steps of one run (multistep samplers keep their history here).
    """

    x: torch.Tensor
    sigma: float
    sigma_next: float
    x0: torch.Tensor
    denoise: Denoise
    noise: Noise
    eta: float
    state: dict[str, Any]


#: ``step(Step) -> x_next``.
StepFunction = Callable[[Step], torch.Tensor]


def _ancestral(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step: σ_up² = σ_to²(σ_from² − σ_to²)/σ_from² (× η²), σ_down² = σ_to² − σ_up²."""
    if sigma_to == 0:
        return 0.0, 0.0
    up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - up**2), up


def _dpmpp_first_order(x: torch.Tensor, s: float, s_to: float, x0: torch.Tensor) -> torch.Tensor:
    # First-order DPM-Solver++ in λ = −log σ from σ to σ_to; the limit σ_to → 0 is x0 itself.
    if s_to == 0:
        return x0
    return (s_to / s) * x - math.expm1(-(math.log(s) - math.log(s_to))) * x0


def _add_noise(x: torch.Tensor, step: Step, size: float) -> torch.Tensor:
    # A step whose σ_up is 0 (η = 0, or the last step onto σ = 0) draws nothing.
    return x + step.noise() * size if size > 0 else x


def _step_euler_ancestral(step: Step) -> torch.Tensor:
    # Euler onto σ_down, then fresh noise of size σ_up (η = 0: plain Euler).
    x, s = step.x, step.sigma
    s_down, s_up = _ancestral(s, step.sigma_next, step.eta)
    x = x + (x - step.x0) / s * (s_down - s)
    return _add_noise(x, step, s_up)


def _step_heun(step: Step) -> torch.Tensor:
    # Heun (Karras 2022, Alg. 1 without churn): Euler predictor, trapezoid corrector; plain Euler onto σ = 0.
    x, s, s_next = step.x, step.sigma, step.sigma_next
    d = (x - step.x0) / s
    x_pred = x + d * (s_next - s)
    if s_next == 0:
        return x_pred
    d_next = (x_pred - step.denoise(x_pred, s_next)) / s_next
    return x + (d + d_next) / 2 * (s_next - s)


def _dpm2_onto(step: Step, s_to: float) -> torch.Tensor:
    # DPM-Solver-2 in σ from σ to s_to: the derivative at the log-σ midpoint; plain Euler onto σ = 0.
    x, s = step.x, step.sigma
    d = (x - step.x0) / s
    if s_to == 0:
        return x + d * (s_to - s)
    s_mid = math.exp((math.log(s) + math.log(s_to)) / 2)
    x_mid = x + d * (s_mid - s)
    d_mid = (x_mid - step.denoise(x_mid, s_mid)) / s_mid
    return x + d_mid * (s_to - s)


def _step_dpm2(step: Step) -> torch.Tensor:
    return _dpm2_onto(step, step.sigma_next)


def _step_dpm2_ancestral(step: Step) -> torch.Tensor:
    # DPM2 onto σ_down, then fresh noise of size σ_up.
    s_down, s_up = _ancestral(step.sigma, step.sigma_next, step.eta)
    return _add_noise(_dpm2_onto(step, s_down), step, s_up)


def _step_dpmpp_2s_ancestral(step: Step) -> torch.Tensor:
    # DPM-Solver++(2S) in λ = −log σ onto σ_down (midpoint r = 1/2), then ancestral noise.
    x, s, d0 = step.x, step.sigma, step.x0
    s_down, s_up = _ancestral(s, step.sigma_next, step.eta)
    if s_down == 0:
        x = x + (x - d0) / s * (s_down - s)
    else:
        h = math.log(s) - math.log(s_down)
        s_mid = math.exp(-(-math.log(s) + h / 2))
        x_mid = (s_mid / s) * x - math.expm1(-h / 2) * d0
        d_mid = step.denoise(x_mid, s_mid)
        x = (s_down / s) * x - math.expm1(-h) * d_mid
    return _add_noise(x, step, s_up)


def _step_dpmpp_sde(step: Step) -> torch.Tensor:
    # DPM-Solver++ SDE (r = 1/2): an ancestral (η) half step to the λ-midpoint, a second evaluation there, then an
    # ancestral (η) full step using the midpoint's x0. Plain Euler onto σ = 0.
    x, s, s_next, d0, eta = step.x, step.sigma, step.sigma_next, step.x0, step.eta
    if s_next == 0:
        return x + (x - d0) / s * (s_next - s)
    lam, lam_next = -math.log(s), -math.log(s_next)
    s_mid = math.exp(-(lam + (lam_next - lam) / 2))
    down, up = _ancestral(s, s_mid, eta)
    x_mid = _add_noise(_dpmpp_first_order(x, s, down, d0), step, up)
    d_mid = step.denoise(x_mid, s_mid)
    down, up = _ancestral(s, s_next, eta)
    return _add_noise(_dpmpp_first_order(x, s, down, d_mid), step, up)


def _step_dpmpp_2m_sde(step: Step) -> torch.Tensor:
    # SDE-DPM-Solver++(2M), midpoint form, with η scaling the stochastic part (see the package docstring). The first
    # step is first order; the step onto σ = 0 returns the x0 prediction.
    x, s, s_next, d0, eta, state = step.x, step.sigma, step.sigma_next, step.x0, step.eta, step.state
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
        x = x + step.noise() * (s_next * math.sqrt(-math.expm1(-2.0 * eta_h)))
    return x


STEP_FUNCTIONS: dict[str, StepFunction] = {
    "own:euler_ancestral": _step_euler_ancestral,
    "own:heun": _step_heun,
    "own:dpm2": _step_dpm2,
    "own:dpm2_ancestral": _step_dpm2_ancestral,
    "own:dpmpp_2s_ancestral": _step_dpmpp_2s_ancestral,
    "own:dpmpp_sde": _step_dpmpp_sde,
    "own:dpmpp_2m_sde": _step_dpmpp_2m_sde,
}
