"""The sampler steps written here rather than taken from diffusers (docs/engine.md "Samplers").

Each is a few lines from the published maths (Karras et al. 2022 for Euler/Heun/DPM2 and churn, Lu et al. 2022 for
DPM-Solver++ and its SDE variants, Luo et al. 2023 for LCM); no code is taken from the reference or from
k-diffusion. See the package docstring for η, the ancestral split and where the noise comes from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["STEP_FUNCTIONS", "Denoise", "Noise", "Step", "StepFunction", "ancestral_split"]

Denoise = Callable[[torch.Tensor, float], torch.Tensor]  # (x_σ, σ) -> blended x0
#: ``noise(σ, σ_next)``: unit noise for a step from σ to σ_next — the per-image generators (ancestral samplers) or
#: the Brownian trees (SDE samplers), which read the interval.
Noise = Callable[[float, float], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Step:
    """One step of a k-diffusion sampler from σ to σ_next.

    Attributes:
        x: the latent at σ (k-space; after churn, at σ̂).
        sigma, sigma_next: where the step starts (σ̂ with churn) and where it goes.
        x0: the (mask-blended) x0 prediction at σ, already computed by the loop.
        denoise: the model as ``(x_σ, σ) -> blended x0``, for the samplers that evaluate it a second time.
        noise: fresh unit noise for an interval (see :data:`Noise`).
        eta: η, the amount of ancestral/stochastic noise.
        s_noise: the noise multiplier of the samplers the reference gives one (DPM2 a, DPM++ 2S a, the SDE samplers).
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
    s_noise: float = 1.0


#: ``step(Step) -> x_next``.
StepFunction = Callable[[Step], torch.Tensor]


def ancestral_split(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step: σ_up² = σ_to²(σ_from² − σ_to²)/σ_from² (× η²), σ_down² = σ_to² − σ_up²."""
    if sigma_to == 0 or eta == 0:
        return sigma_to, 0.0
    up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - up**2), up


def _dpmpp_first_order(x: torch.Tensor, s: float, s_to: float, x0: torch.Tensor) -> torch.Tensor:
    # First-order DPM-Solver++ in λ = −log σ from σ to σ_to; the limit σ_to → 0 is x0 itself.
    if s_to == 0:
        return x0
    return (s_to / s) * x - math.expm1(-(math.log(s) - math.log(s_to))) * x0


def _add_noise(x: torch.Tensor, step: Step, size: float, interval: tuple[float, float] | None = None) -> torch.Tensor:
    # A step whose σ_up is 0 (η = 0, or the last step onto σ = 0) draws nothing: nothing later reads the stream.
    if size <= 0:
        return x
    a, b = interval if interval is not None else (step.sigma, step.sigma_next)
    return x + step.noise(a, b) * (step.s_noise * size)


def _step_euler(step: Step) -> torch.Tensor:
    # Euler in σ (Karras 2022, Alg. 2 without the second evaluation).
    return step.x + (step.x - step.x0) / step.sigma * (step.sigma_next - step.sigma)


def _step_euler_ancestral(step: Step) -> torch.Tensor:
    # Euler onto σ_down, then fresh noise of size σ_up (η = 0: plain Euler). The reference gives Euler a no s_noise.
    x, s = step.x, step.sigma
    s_down, s_up = ancestral_split(s, step.sigma_next, step.eta)
    x = x + (x - step.x0) / s * (s_down - s)
    return x + step.noise(s, step.sigma_next) * s_up if s_up > 0 else x


def _step_heun(step: Step) -> torch.Tensor:
    # Heun (Karras 2022, Alg. 2): Euler predictor, trapezoid corrector; plain Euler onto σ = 0.
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
    # DPM2 onto σ_down, then fresh noise of size s_noise·σ_up.
    s_down, s_up = ancestral_split(step.sigma, step.sigma_next, step.eta)
    return _add_noise(_dpm2_onto(step, s_down), step, s_up)


def _step_dpmpp_2s_ancestral(step: Step) -> torch.Tensor:
    # DPM-Solver++(2S) in λ = −log σ onto σ_down (midpoint r = 1/2), then ancestral noise.
    x, s, d0 = step.x, step.sigma, step.x0
    s_down, s_up = ancestral_split(s, step.sigma_next, step.eta)
    if s_down == 0:
        x = x + (x - d0) / s * (s_down - s)
    else:
        h = math.log(s) - math.log(s_down)
        s_mid = math.exp(-(-math.log(s) + h / 2))
        x_mid = (s_mid / s) * x - math.expm1(-h / 2) * d0
        d_mid = step.denoise(x_mid, s_mid)
        x = (s_down / s) * x - math.expm1(-h) * d_mid
    return _add_noise(x, step, s_up)


def _f32_log_midpoint(s: float, s_next: float) -> float:
    # σ at the λ-midpoint computed in float32 as the reference does, because the Brownian tree is queried there:
    # the same float32 σ gives the same increment.
    t = -torch.tensor(s, dtype=torch.float32).log()
    t_next = -torch.tensor(s_next, dtype=torch.float32).log()
    return float((-(t + (t_next - t) * 0.5)).exp())


def _step_dpmpp_2m(step: Step) -> torch.Tensor:
    # DPM-Solver++(2M) in λ = −log σ: first order on the first step, then the x0 prediction extrapolated with the
    # previous one (r = h_prev/h): x0' = (1 + 1/(2r))·x0 − 1/(2r)·x0_prev. Onto σ = 0 it is the x0 prediction.
    x, s, s_next, d0, state = step.x, step.sigma, step.sigma_next, step.x0, step.state
    old_x0: torch.Tensor | None = state.get("old_x0")
    h_last: float | None = state.get("h_last")
    state["old_x0"] = d0
    if s_next == 0:
        return d0
    h = math.log(s) - math.log(s_next)
    state["h_last"] = h
    if old_x0 is not None and h_last is not None:
        half_inv_r = h / (2.0 * h_last)
        d0 = (1.0 + half_inv_r) * d0 - half_inv_r * old_x0
    return (s_next / s) * x - math.expm1(-h) * d0


def _step_dpmpp_sde(step: Step) -> torch.Tensor:
    # DPM-Solver++ SDE (r = 1/2): an ancestral (η) half step to the λ-midpoint, a second evaluation there, then an
    # ancestral (η) full step using the midpoint's x0. Plain Euler onto σ = 0. Noise over [σ, σ_mid] and [σ, σ_next].
    x, s, s_next, d0, eta = step.x, step.sigma, step.sigma_next, step.x0, step.eta
    if s_next == 0:
        return x + (x - d0) / s * (s_next - s)
    s_mid = _f32_log_midpoint(s, s_next)
    down, up = ancestral_split(s, s_mid, eta)
    x_mid = _add_noise(_dpmpp_first_order(x, s, down, d0), step, up, (s, s_mid))
    d_mid = step.denoise(x_mid, s_mid)
    down, up = ancestral_split(s, s_next, eta)
    return _add_noise(_dpmpp_first_order(x, s, down, d_mid), step, up, (s, s_next))


def _dpmpp_2m_sde(step: Step, heun: bool) -> torch.Tensor:
    # SDE-DPM-Solver++(2M) with η scaling the stochastic part, h = log σ − log σ_next:
    #   x' = (σ_next/σ)·e^(−ηh)·x + (1 − e^(−(1+η)h))·x0 + correction + s_noise·σ_next·√(1 − e^(−2ηh))·noise
    # correction (r = h_prev/h): midpoint ½(1 − e^(−(1+η)h))·(x0 − x0_prev)/r; Heun
    # (1 − (1 − e^(−(1+η)h))/((1+η)h))·(x0 − x0_prev)/r. The first step is first order; the step onto σ = 0 returns
    # the x0 prediction.
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
        ratio = h / h_last  # 1/r
        weight = (1.0 - gain / (h + eta_h)) if heun else 0.5 * gain
        x = x + weight * ratio * (d0 - old_x0)
    state["h_last"] = h
    if eta > 0:
        x = x + step.noise(s, s_next) * (s_next * math.sqrt(-math.expm1(-2.0 * eta_h)) * step.s_noise)
    return x


def _step_dpmpp_2m_sde(step: Step) -> torch.Tensor:
    return _dpmpp_2m_sde(step, heun=False)


def _step_dpmpp_2m_sde_heun(step: Step) -> torch.Tensor:
    return _dpmpp_2m_sde(step, heun=True)


def _step_dpmpp_3m_sde(step: Step) -> torch.Tensor:
    # SDE-DPM-Solver++(3M): the exponential-integrator step of 2M SDE with φ-functions of h_η = (1+η)h on the
    # first and second divided differences of the last three x0 predictions (first and second order on the first
    # two steps); the step onto σ = 0 returns the x0 prediction.
    x, s, s_next, d0, eta, state = step.x, step.sigma, step.sigma_next, step.x0, step.eta, step.state
    x0_1: torch.Tensor | None = state.get("x0_1")
    x0_2: torch.Tensor | None = state.get("x0_2")
    h_1: float | None = state.get("h_1")
    h_2: float | None = state.get("h_2")
    h: float | None = state.get("h")
    if s_next == 0:
        x = d0
    else:
        h = math.log(s) - math.log(s_next)
        h_eta = h * (eta + 1.0)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * d0
        phi_2 = math.expm1(-h_eta) / h_eta + 1.0
        if x0_2 is not None and x0_1 is not None and h_1 is not None and h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (d0 - x0_1) / r0
            d1_1 = (x0_1 - x0_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif x0_1 is not None and h_1 is not None:
            x = x + phi_2 * ((d0 - x0_1) / (h_1 / h))
        if eta > 0:
            x = x + step.noise(s, s_next) * (s_next * math.sqrt(-math.expm1(-2.0 * h * eta)) * step.s_noise)
    state.update(x0_1=d0, x0_2=x0_1, h=h, h_1=h, h_2=h_1)
    return x


def _step_lcm(step: Step) -> torch.Tensor:
    # LCM: jump to the (consistency) x0 prediction, then re-noise to σ_next with fresh unit noise.
    x = step.x0
    return x + step.noise(step.sigma, step.sigma_next) * step.sigma_next if step.sigma_next > 0 else x


STEP_FUNCTIONS: dict[str, StepFunction] = {
    "own:euler": _step_euler,
    "own:euler_ancestral": _step_euler_ancestral,
    "own:heun": _step_heun,
    "own:dpm2": _step_dpm2,
    "own:dpm2_ancestral": _step_dpm2_ancestral,
    "own:dpmpp_2m": _step_dpmpp_2m,
    "own:dpmpp_2s_ancestral": _step_dpmpp_2s_ancestral,
    "own:dpmpp_sde": _step_dpmpp_sde,
    "own:dpmpp_2m_sde": _step_dpmpp_2m_sde,
    "own:dpmpp_2m_sde_heun": _step_dpmpp_2m_sde_heun,
    "own:dpmpp_3m_sde": _step_dpmpp_3m_sde,
    "own:lcm": _step_lcm,
}
