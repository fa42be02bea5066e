"""The img2img sampling loop: run a :class:`SamplingPlan` from the noised init latent (img2img-semantics.md §3.2,
§3.3): the start point, the per-step x0 blend, the step callback and the early stop."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler

from worker.engine.diffusers_internals import mark_input_scaled, quiet_numpy_array_deprecation
from worker.engine.noise import NoiseGenerator, randn_like_from_generators
from worker.engine.sampling.brownian import BrownianNoise
from worker.engine.sampling.plan import CHURN_SAMPLERS, S_NOISE_SAMPLERS, SamplingPlan
from worker.engine.sampling.step_functions import STEP_FUNCTIONS, Noise, Step
from worker.engine.sampling.whole_runs import dpm_adaptive, dpm_fast, restart

__all__ = ["DenoiseEps", "DenoiseEpsCfgPP", "StepInfo", "StopSampling", "run_sampler", "v_prediction_to_eps"]


#: ``denoise_eps(x_in, timestep, sigma) -> eps``: the model (with CFG) as the sampler sees it.
DenoiseEps = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
#: DDIM CFG++'s model: ``(x_in, timestep, sigma) -> (eps guided with cfg_scale/12.5, the unconditional eps)``.
DenoiseEpsCfgPP = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


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


def v_prediction_to_eps(v: torch.Tensor, x_in: torch.Tensor, sigma: float) -> torch.Tensor:
    """ε from a v-prediction output, for a VP-scaled input ``x_in`` at noise level σ: ε = σ_vp·x_in + α·v."""
    alpha = 1.0 / math.sqrt(1.0 + sigma * sigma)
    return (sigma * alpha) * x_in + alpha * v


@dataclass(eq=False)
class _Run:
    """One call of :func:`run_sampler`: what both loops read, and ``last_x0``, the most recent x0 prediction (the
    reference's ``last_latent``, starting with the clean init latent), which an interrupted run returns."""

    plan: SamplingPlan
    init: torch.Tensor
    noise: torch.Tensor
    denoise_eps: DenoiseEps
    generators: Sequence[NoiseGenerator] | None
    callback: Callable[[StepInfo], None] | None
    extra_noise: float
    eta: float
    last_x0: torch.Tensor
    seeds: Sequence[int] | None = None
    denoise_eps_cfgpp: DenoiseEpsCfgPP | None = None


def run_sampler(
    plan: SamplingPlan,
    x_init_latent: torch.Tensor,
    noise: torch.Tensor,
    denoise_eps: DenoiseEps,
    *,
    blend_x0: Callable[[torch.Tensor], torch.Tensor] | None = None,
    blend_xt_before: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generators: Sequence[NoiseGenerator] | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    extra_noise: float = 0.0,
    noise_multiplier: float = 1.0,
    eta: float | None = None,
    seeds: Sequence[int] | None = None,
    denoise_eps_cfgpp: DenoiseEpsCfgPP | None = None,
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
        noise: unit-variance noise of the same shape (see ``worker.engine.noise.create_noise``).
        denoise_eps: ``(x_in, timestep (B,), sigma) -> eps``; see the package docstring for the scaling of x_in.
        blend_x0: mask blend of the x0 prediction (k-diffusion samplers).
        blend_xt_before: mask blend of the noisy model input (timestep samplers).
        generators: per-image generators for ancestral/churn/DDIM-η noise (the ones ``create_noise`` returned,
            opaque here: only passed to ``worker.engine.noise``); None uses the global torch RNG.
        callback: called with a :class:`StepInfo` after each step; it may raise :class:`StopSampling`.
        extra_noise: opts.img2img_extra_noise (0 = off).
        noise_multiplier: the initial noise multiplier.
        eta: η, the amount of ancestral/stochastic noise (see the package docstring); None uses the sampler's
            default (:attr:`SamplingPlan.default_eta`: 1.0 for the ancestral and SDE samplers, 0.0 for DDIM).
            Samplers without η (``plan.uses_eta`` False) ignore it.
        seeds: the batch's seeds, one per image: the SDE samplers' Brownian trees are seeded with them. Without
            them those samplers draw from ``generators`` instead (not the reference's noise).
        denoise_eps_cfgpp: DDIM CFG++ only (required there): the model with CFG at cfg_scale/12.5, also returning
            the unconditional ε.

    Returns:
        The sampled latent; a zero-step plan (strength 0, §7.4) returns a copy of ``x_init_latent``. If
        :class:`StopSampling` is raised, the last x0 prediction (the init latent if the model was never called).

    Raises:
        ValueError: if ``noise`` and ``x_init_latent`` differ in shape, ``eta`` is negative or not finite, or DDIM
            CFG++ gets no ``denoise_eps_cfgpp``.
    """
    if noise.shape != x_init_latent.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and init latent {tuple(x_init_latent.shape)} differ in shape")
    if eta is not None and not (math.isfinite(eta) and eta >= 0.0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    eta_value = float(eta) if eta is not None else (plan.default_eta if plan.default_eta is not None else 0.0)
    if plan.start_sigma == 0.0:  # §7.4: strength 0 runs no denoising step
        return x_init_latent.clone()
    noise = noise * noise_multiplier if noise_multiplier != 1.0 else noise
    if plan.implementation == "own:ddim_cfgpp" and denoise_eps_cfgpp is None:
        raise ValueError("DDIM CFG++ needs denoise_eps_cfgpp (the guided and the unconditional eps)")
    run = _Run(
        plan,
        x_init_latent,
        noise,
        denoise_eps,
        generators,
        callback,
        extra_noise,
        eta_value,
        x_init_latent,
        seeds,
        denoise_eps_cfgpp,
    )
    with quiet_numpy_array_deprecation():
        try:
            if plan.is_timestep_sampler:
                return _run_timestep(run, blend_xt_before)
            return _run_k(run, blend_x0)
        except StopSampling:
            # §3.3/§5.3: an interrupted run returns the last x0 prediction (the reference's last_latent).
            return run.last_x0


def _batch_t(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)


def _lcm_x0(plan: SamplingPlan, x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    # LCM's consistency boundary condition on the x0 prediction (docs/engine.md, LCM): with τ = 10·t(σ) and
    # σ_data = 0.5, x0' = c_out·x0 + c_skip·x, c_skip = σ_data²/(τ² + σ_data²), c_out = τ/√(τ² + σ_data²).
    tau = 10.0 * plan.model.model_timestep(sigma)
    c_skip = 0.25 / (tau * tau + 0.25)
    c_out = tau / math.sqrt(tau * tau + 0.25)
    return c_out * x0 + c_skip * x


def _noise_source(run: _Run, x: torch.Tensor) -> Noise:
    """Where a k-diffusion step's fresh noise comes from: the Brownian trees of the batch's seeds for the SDE
    samplers, the per-image generators (the reference's hijacked randn_like) for the others."""
    brownian_range = run.plan.brownian_range
    if brownian_range is not None and run.seeds is not None:
        return BrownianNoise(x, brownian_range[0], brownian_range[1], run.seeds)

    def from_generators(sigma: float, sigma_next: float) -> torch.Tensor:
        del sigma, sigma_next
        return randn_like_from_generators(x, run.generators)

    return from_generators


def _run_k(run: _Run, blend_x0: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    plan, noise, eta, callback = run.plan, run.noise, run.eta, run.callback
    opts = plan.options
    sig = [float(s) for s in plan.sigma_sched]
    n = len(sig) - 1
    # §3.2: x = init + noise·σ_start; with the SGM noise multiplier the noise is scaled by √(1 + σ_start²).
    start_scale = math.sqrt(1.0 + sig[0] * sig[0]) if opts.sgm_noise_multiplier else sig[0]
    x = run.init + noise * start_scale
    if run.extra_noise > 0:
        x = x + noise * run.extra_noise
    lcm = plan.implementation == "own:lcm"

    def denoise(x_: torch.Tensor, sigma: float) -> torch.Tensor:
        x_in = x_ / math.sqrt(sigma * sigma + 1.0)
        eps = run.denoise_eps(x_in, _batch_t(plan.model.model_timestep(sigma), x_), sigma)
        x0 = x_ - sigma * eps
        if lcm:
            x0 = _lcm_x0(plan, x_, x0, sigma)
        if blend_x0 is not None:  # §3.3: blend the x0 prediction with the clean init latent
            x0 = blend_x0(x0)
        run.last_x0 = x0
        return x0

    def on_step(i: int, sigma: float, x0: torch.Tensor) -> None:
        # DPM adaptive may take more steps than its estimate; the total then grows with the step.
        if callback is not None:
            callback(StepInfo(step=i, total_steps=max(plan.total_steps, i + 1), sigma=sigma, x0_preview=x0))

    def rnd() -> torch.Tensor:
        return randn_like_from_generators(x, run.generators)

    s_noise = opts.s_noise if plan.sampler.name in S_NOISE_SAMPLERS else 1.0
    if plan.implementation == "run:dpm_fast":
        return dpm_fast(x, sig[-2], sig[0], n, denoise, rnd, on_step, eta, s_noise)
    if plan.implementation == "run:dpm_adaptive":
        return dpm_adaptive(x, sig[-2], sig[0], denoise, rnd, on_step, eta, s_noise)
    if plan.implementation == "run:restart":
        return restart(x, plan.sigma_sched, denoise, rnd, on_step)

    step_fn = STEP_FUNCTIONS.get(plan.implementation)
    step_noise = _noise_source(run, x)
    step_state: dict[str, Any] = {}
    scheduler = copy.deepcopy(plan.scheduler) if plan.scheduler is not None else None
    churn = opts.s_churn > 0 and plan.sampler.name in CHURN_SAMPLERS
    for i in range(n):
        s, s_next = sig[i], sig[i + 1]
        if churn:
            # Karras churn: raise σ by γ where s_tmin ≤ σ ≤ s_tmax, adding noise to match. The reference draws the
            # churn noise at every step, used or not, so the generators advance the same way.
            gamma = min(opts.s_churn / n, math.sqrt(2.0) - 1.0) if opts.s_tmin <= s <= opts.s_tmax else 0.0
            churn_noise = rnd() * opts.s_noise
            if gamma > 0:
                s_hat = s * (gamma + 1.0)
                x = x + churn_noise * math.sqrt(s_hat * s_hat - s * s)
                s = s_hat
        x0 = denoise(x, s)
        if step_fn is not None:
            x = step_fn(Step(x, s, s_next, x0, denoise, step_noise, eta, step_state, s_noise))
        else:
            assert scheduler is not None
            eps = (x - x0) / s  # ε' consistent with the blended x0
            t = scheduler.timesteps[i]
            mark_input_scaled(scheduler)  # `denoise` scaled the model input already
            if isinstance(scheduler, LMSDiscreteScheduler):
                x = scheduler.step(eps, t, x, order=4).prev_sample
            else:
                x = scheduler.step(eps, t, x).prev_sample
        on_step(i, sig[i], x0)
    return x


def _run_timestep(run: _Run, blend_xt_before: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    plan, noise = run.plan, run.noise
    assert plan.start_timestep is not None
    acp_start = float(plan.model.alphas_cumprod[plan.start_timestep])
    x = math.sqrt(acp_start) * run.init + math.sqrt(1.0 - acp_start) * noise
    if run.extra_noise > 0:
        x = x + noise * run.extra_noise * math.sqrt(acp_start)
    if plan.implementation in ("own:plms", "own:ddim_cfgpp"):
        return _run_own_timestep(run, x, blend_xt_before)
    assert plan.scheduler is not None
    eta, callback = run.eta, run.callback
    scheduler = copy.deepcopy(plan.scheduler)
    n = plan.call_timesteps.numel()
    sig = [float(s) for s in plan.sigma_sched]
    for i in range(n):
        t = plan.call_timesteps[i]
        sigma = sig[i + 1]  # sigma_sched[0] is the noise level of the start point
        x_in = blend_xt_before(x) if blend_xt_before is not None else x  # §3.3 mask_before_denoising
        eps = run.denoise_eps(x_in, _batch_t(float(t), x), sigma)
        acp = 1.0 / (1.0 + sigma * sigma)
        x0 = (x_in - math.sqrt(1.0 - acp) * eps) / math.sqrt(acp)
        run.last_x0 = x0
        if isinstance(scheduler, DDIMScheduler):
            # η > 0: σ_t·noise with the noise from the per-image generators (η = 0 draws nothing).
            variance_noise = randn_like_from_generators(x, run.generators) if eta > 0 else None
            x = scheduler.step(eps, int(t), x, eta=eta, variance_noise=variance_noise).prev_sample
        else:
            x = scheduler.step(eps, t, x).prev_sample
        if callback is not None:
            callback(StepInfo(step=i, total_steps=n, sigma=sigma, x0_preview=x0))
    return x


def _run_own_timestep(
    run: _Run, x: torch.Tensor, blend_xt_before: Callable[[torch.Tensor], torch.Tensor] | None
) -> torch.Tensor:
    """PLMS and DDIM CFG++ over the reference's timesteps[t_enc−1] … timesteps[1], each step going to the previous
    timestep (docs/engine.md "Samplers")."""
    plan, callback = run.plan, run.callback
    assert plan.timesteps is not None
    timesteps = plan.timesteps
    acp_table = plan.model.alphas_cumprod
    n = plan.call_timesteps.numel()
    t_enc = n + 1
    old_eps: list[torch.Tensor] = []

    def acp_at(index: int) -> float:
        return float(acp_table[int(timesteps[index])]) if index >= 0 else float(acp_table[0])

    def model(x_: torch.Tensor, index: int) -> torch.Tensor:
        acp = acp_at(index)
        x_in = blend_xt_before(x_) if blend_xt_before is not None else x_  # §3.3 mask_before_denoising
        t = float(timesteps[index])
        return run.denoise_eps(x_in, _batch_t(t, x_), math.sqrt((1.0 - acp) / acp))

    def ddim_move(x_: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = (x_ - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        return math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps, x0

    for i in range(n):
        index = t_enc - 1 - i
        a_t, a_prev = acp_at(index), acp_at(index - 1)
        if plan.implementation == "own:ddim_cfgpp":
            assert run.denoise_eps_cfgpp is not None
            x_in = blend_xt_before(x) if blend_xt_before is not None else x
            t = float(timesteps[index])
            eps, eps_uncond = run.denoise_eps_cfgpp(x_in, _batch_t(t, x), math.sqrt((1.0 - a_t) / a_t))
            # CFG++: the x0 of the guided ε, the direction back to x_t from the unconditional ε; η as DDIM's.
            sigma_t = run.eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
            x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
            x = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - sigma_t * sigma_t, 0.0)) * eps_uncond
            if sigma_t > 0:
                x = x + sigma_t * randn_like_from_generators(x, run.generators)
        else:
            # PLMS: pseudo improved Euler on the first step, then Adams-Bashforth of order 2, 3, 4 on ε.
            eps = model(x, index)
            if not old_eps:
                x_next, _ = ddim_move(x, eps, a_t, a_prev)
                eps_prime = (eps + model(x_next, max(index - 1, 0))) / 2
            elif len(old_eps) == 1:
                eps_prime = (3 * eps - old_eps[-1]) / 2
            elif len(old_eps) == 2:
                eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
            else:
                eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
            x, x0 = ddim_move(x, eps_prime, a_t, a_prev)
            old_eps = [*old_eps, eps][-3:]
        run.last_x0 = x0
        if callback is not None:
            callback(StepInfo(step=i, total_steps=n, sigma=math.sqrt((1.0 - a_t) / a_t), x0_preview=x0))
    return x
