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
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler

from worker.engine.diffusers_internals import mark_input_scaled, quiet_numpy_array_deprecation
from worker.engine.noise import NoiseGenerator, randn_like_from_generators
from worker.engine.sampling.plan import SamplingPlan
from worker.engine.sampling.step_functions import STEP_FUNCTIONS, Step

__all__ = ["DenoiseEps", "StepInfo", "StopSampling", "run_sampler", "v_prediction_to_eps"]


#: ``denoise_eps(x_in, timestep, sigma) -> eps``: the model (with CFG) as the sampler sees it.
DenoiseEps = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


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
        generators: per-image generators for ancestral/SDE/DDIM-η noise (the ones ``create_noise`` returned);
            None uses the global torch RNG.
        callback: called with a :class:`StepInfo` after each step; it may raise :class:`StopSampling`.
        extra_noise: opts.img2img_extra_noise (0 = off).
        noise_multiplier: the initial noise multiplier.
        eta: η, the amount of ancestral/stochastic noise (see the package docstring); None uses the sampler's
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
    run = _Run(plan, x_init_latent, noise, denoise_eps, generators, callback, extra_noise, eta_value, x_init_latent)
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


def _run_k(run: _Run, blend_x0: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    plan, noise, eta, callback = run.plan, run.noise, run.eta, run.callback
    sig = [float(s) for s in plan.sigma_sched]
    n = len(sig) - 1
    x = run.init + noise * sig[0]
    if run.extra_noise > 0:
        x = x + noise * run.extra_noise

    def denoise(x_: torch.Tensor, sigma: float) -> torch.Tensor:
        x_in = x_ / math.sqrt(sigma * sigma + 1.0)
        eps = run.denoise_eps(x_in, _batch_t(float(plan.model.sigma_to_t(sigma)), x_), sigma)
        x0 = x_ - sigma * eps
        if blend_x0 is not None:  # §3.3: blend the x0 prediction with the clean init latent
            x0 = blend_x0(x0)
        run.last_x0 = x0
        return x0

    def rnd() -> torch.Tensor:
        return randn_like_from_generators(x, run.generators)

    step_fn = STEP_FUNCTIONS.get(plan.implementation)
    step_state: dict[str, Any] = {}
    scheduler = copy.deepcopy(plan.scheduler) if plan.scheduler is not None else None
    for i in range(n):
        s, s_next = sig[i], sig[i + 1]
        x0 = denoise(x, s)
        if step_fn is not None:
            x = step_fn(Step(x, s, s_next, x0, denoise, rnd, eta, step_state))
        else:
            assert scheduler is not None
            eps = (x - x0) / s  # ε' consistent with the blended x0
            t = scheduler.timesteps[i]
            mark_input_scaled(scheduler)  # `denoise` scaled the model input already
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


def _run_timestep(run: _Run, blend_xt_before: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    plan, noise, eta, callback = run.plan, run.noise, run.eta, run.callback
    assert plan.start_timestep is not None
    assert plan.scheduler is not None
    acp_start = float(plan.model.alphas_cumprod[plan.start_timestep])
    x = math.sqrt(acp_start) * run.init + math.sqrt(1.0 - acp_start) * noise
    if run.extra_noise > 0:
        x = x + noise * run.extra_noise * math.sqrt(acp_start)
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
