"""Samplers that choose their own points, so the loop hands them the whole run: DPM fast, DPM adaptive (Lu et al.
2022, DPM-Solver with a PID step-size controller) and Restart (Xu et al. 2023). docs/engine.md "Samplers" states what
each does; written from the papers and that description, no code taken from the reference or from k-diffusion.

Each gets ``denoise(x, σ) -> x0`` (blended), ``noise()`` (unit noise from the per-image generators) and
``on_step(i, σ, x0)`` (the progress callback; it may raise to stop).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from worker.engine.sampling.schedules import karras_sigmas
from worker.engine.sampling.step_functions import ancestral_split

__all__ = ["dpm_adaptive", "dpm_fast", "dpm_fast_orders", "restart", "restart_step_list"]

Denoise = Callable[[torch.Tensor, float], torch.Tensor]
Noise = Callable[[], torch.Tensor]
OnStep = Callable[[int, float, torch.Tensor], None]


# ----------------------------------------------------------------------------------------------------------------
# DPM-Solver in t = −log σ, with ε = (x − x0)/σ


class _Solver:
    """DPM-Solver-1/2/3 steps in t = −log σ; ε at the start point is evaluated once per step and reused."""

    def __init__(self, denoise: Denoise) -> None:
        self._denoise = denoise

    @staticmethod
    def sigma(t: float) -> float:
        return math.exp(-t)

    def eps(self, x: torch.Tensor, t: float) -> torch.Tensor:
        s = self.sigma(t)
        return (x - self._denoise(x, s)) / s

    def first(self, x: torch.Tensor, t: float, t_next: float, eps: torch.Tensor) -> torch.Tensor:
        return x - self.sigma(t_next) * math.expm1(t_next - t) * eps

    def second(
        self, x: torch.Tensor, t: float, t_next: float, eps: torch.Tensor, cache: dict[str, torch.Tensor], r1: float
    ) -> torch.Tensor:
        h = t_next - t
        s1 = t + r1 * h
        if "r1" not in cache:
            cache["r1"] = self.eps(x - self.sigma(s1) * math.expm1(r1 * h) * eps, s1)
        e1 = cache["r1"]
        sn = self.sigma(t_next)
        return x - sn * math.expm1(h) * eps - sn / (2 * r1) * math.expm1(h) * (e1 - eps)

    def third(
        self, x: torch.Tensor, t: float, t_next: float, eps: torch.Tensor, cache: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        r1, r2 = 1 / 3, 2 / 3
        h = t_next - t
        s1, s2 = t + r1 * h, t + r2 * h
        if "r1" not in cache:
            cache["r1"] = self.eps(x - self.sigma(s1) * math.expm1(r1 * h) * eps, s1)
        e1 = cache["r1"]
        u2 = (
            x
            - self.sigma(s2) * math.expm1(r2 * h) * eps
            - self.sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e1 - eps)
        )
        e2 = self.eps(u2, s2)
        sn = self.sigma(t_next)
        return x - sn * math.expm1(h) * eps - sn / r2 * (math.expm1(h) / h - 1) * (e2 - eps)


def _eta_target(t: float, t_next: float, t_end: float, eta: float) -> tuple[float, float]:
    # The deterministic target t' (σ_down, never past the end) and the noise σ_up that tops it back up to σ(t_next).
    if not eta:
        return t_next, 0.0
    s_down, _ = ancestral_split(math.exp(-t), math.exp(-t_next), eta)
    t_down = min(t_end, -math.log(s_down)) if s_down > 0 else t_end
    up = math.sqrt(max(math.exp(-t_next) ** 2 - math.exp(-t_down) ** 2, 0.0))
    return t_down, up


def dpm_fast_orders(nfe: int) -> list[int]:
    """DPM fast's orders for nfe model calls: ⌊nfe/3⌋ + 1 steps, third order but for the last one or two."""
    m = nfe // 3 + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


def dpm_fast(
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    nfe: int,
    denoise: Denoise,
    noise: Noise,
    on_step: OnStep,
    eta: float,
    s_noise: float,
) -> torch.Tensor:
    """DPM fast: t = −log σ evenly from σ_max to σ_min in ⌊nfe/3⌋ + 1 steps of order 3 (last ones 2/1), η noise
    after each step (drawn every step, as the reference draws it)."""
    solver = _Solver(denoise)
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    orders = dpm_fast_orders(nfe)
    ts = torch.linspace(t_start, t_end, len(orders) + 1, dtype=torch.float64).tolist()
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_to, up = _eta_target(t, t_next, t_end, eta)
        cache: dict[str, torch.Tensor] = {}
        eps = solver.eps(x, t)
        on_step(i, solver.sigma(t), x - solver.sigma(t) * eps)
        if order == 1:
            x = solver.first(x, t, t_to, eps)
        elif order == 2:
            x = solver.second(x, t, t_to, eps, cache, r1=0.5)
        else:
            x = solver.third(x, t, t_to, eps, cache)
        x = x + noise() * (up * s_noise)
    return x


class _PidController:
    """Step-size control for DPM adaptive: integral control of 1/error with an arctan limiter (coefficients
    p = 0, i = 1, d = 0 as the reference uses them)."""

    def __init__(self, h: float, order: float, accept_safety: float = 0.81, eps: float = 1e-8) -> None:
        self.h = h
        self.b1, self.b2, self.b3 = 1.0 / order, 0.0, 0.0
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose(self, error: float) -> bool:
        inv = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


def dpm_adaptive(
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    denoise: Denoise,
    noise: Noise,
    on_step: OnStep,
    eta: float,
    s_noise: float,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
) -> torch.Tensor:
    """DPM adaptive (order 3): each attempt compares a 2nd-order (r1 = 1/3) and a 3rd-order solution; the scaled
    RMS difference drives the PID controller; accepted steps move on (plus η noise), rejected ones retry with a
    smaller h. Three model calls per attempt; the step count is not known in advance."""
    solver = _Solver(denoise)
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    atol_t = torch.tensor(atol)
    rtol_t = torch.tensor(rtol)
    s = t_start
    x_prev = x
    pid = _PidController(h_init, 1.5 if eta else 3.0)
    attempt = 0
    while s < t_end - 1e-5:
        t = min(t_end, s + pid.h)
        t_to, up = _eta_target(s, t, t_end, eta)
        cache: dict[str, torch.Tensor] = {}
        eps = solver.eps(x, s)
        x0 = x - solver.sigma(s) * eps
        x_low = solver.second(x, s, t_to, eps, cache, r1=1 / 3)
        x_high = solver.third(x, s, t_to, eps, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5)
        if pid.propose(error):
            x_prev = x_low
            x = x_high + noise() * (up * s_noise)
            s = t
        on_step(attempt, solver.sigma(s), x0)
        attempt += 1
    return x


# ----------------------------------------------------------------------------------------------------------------
# Restart


def restart_step_list(sigmas: torch.Tensor) -> list[tuple[float, float]]:
    """The (σ, σ_next) pairs Restart walks for a schedule of n = len(sigmas) − 1 steps.

    With n ≥ 20 the main schedule is rebuilt as Karras (ρ = 7) of n − k·K steps from sigmas[0] to sigmas[−2]
    (k = 9 restart steps, K = 1 restart; n ≥ 36: k = n // 4, K = 2), and after the point nearest σ = 0.1 the run
    jumps back up to the point nearest σ = 2 and walks down again K times along a Karras schedule of k steps
    between them (each jump adds fresh noise). Below 20 steps it is Heun on the schedule as given.
    """
    steps = sigmas.numel() - 1
    restarts: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = 9, 1
        if steps >= 36:
            restart_steps, restart_times = steps // 4, 2
        sigmas = karras_sigmas(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0]))
        restarts = {0.1: (restart_steps + 1, restart_times, 2.0)}
    at_index = {int(torch.argmin((sigmas - key).abs())): value for key, value in restarts.items()}
    pairs: list[tuple[float, float]] = []
    for i in range(sigmas.numel() - 1):
        pairs.append((float(sigmas[i]), float(sigmas[i + 1])))
        if i + 1 in at_index:
            n_restart, times, sigma_top = at_index[i + 1]
            low, high = i + 1, int(torch.argmin((sigmas - sigma_top).abs()))
            if high < low:
                segment = karras_sigmas(n_restart, float(sigmas[low]), float(sigmas[high]))[:-1].tolist()
                for _ in range(times):
                    pairs.extend(itertools.pairwise(segment))
    return pairs


def restart(
    x: torch.Tensor, sigmas: torch.Tensor, denoise: Denoise, noise: Noise, on_step: OnStep, s_noise: float = 1.0
) -> torch.Tensor:
    """Restart sampling: Heun steps along :func:`restart_step_list`; where a pair starts above where the last one
    ended, noise of size s_noise·√(σ² − σ_last²) is added first."""
    last: float | None = None
    for i, (s, s_next) in enumerate(restart_step_list(sigmas)):
        if last is not None and last < s:
            x = x + noise() * (s_noise * math.sqrt(s * s - last * last))
        x0 = denoise(x, s)
        on_step(i, s, x0)
        d = (x - x0) / s
        x_pred = x + d * (s_next - s)
        if s_next == 0:
            x = x_pred
        else:
            d_next = (x_pred - denoise(x_pred, s_next)) / s_next
            x = x + (d + d_next) / 2 * (s_next - s)
        last = s_next
    return x
