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
(UniPC only for flow models). Where a scheduler's step reads nothing but its ``sigmas`` array, the plan sets that
array to the reference's schedule after ``set_timesteps`` (LMS, DPM++ 2M, UniPC; see
:mod:`worker.engine.diffusers_internals`, which holds every such reach into diffusers). The two-evaluation samplers
(Heun, DPM2, DPM2 a, DPM++ SDE, DPM++ 2S a) keep hidden interleaved state in diffusers (``sigmas_interpol``, a
BrownianTree needing ``torchsde``, or no ancestral variant at all), and diffusers' Euler a and DPM++ 2M SDE have no
η, so these steps are written here, a few lines each (:mod:`.step_functions`). DDIM uses ``DDIMScheduler`` with
"leading" spacing and ``steps_offset=1``, which yields exactly the reference's timesteps.

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
* Euler, LMS, Heun, DPM2, DPM++ 2M, UniPC take no η and ignore it (:attr:`SamplingPlan.uses_eta` is False; which
  samplers take η is written once, in ``shared.job.steps``); the
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

Modules
-------
:mod:`.schedules` (the model's training schedule, the sigma schedules), :mod:`.plan` (:class:`SamplingPlan` and
:func:`plan_img2img`; the strength → steps rule itself is ``shared.job.steps``), :mod:`.step_functions` (the steps
written here), :mod:`.loop` (:func:`run_sampler`).
"""

from __future__ import annotations

from worker.engine.sampling.loop import (
    DenoiseEps,
    DenoiseEpsCfgPP,
    StepInfo,
    StopSampling,
    run_sampler,
    v_prediction_to_eps,
)
from worker.engine.sampling.plan import SamplerOptions, SamplingPlan, plan_img2img, sampler_default_eta
from worker.engine.sampling.schedules import (
    ModelSchedule,
    discard_penultimate_sigma,
    exponential_sigmas,
    karras_sigmas,
    model_alphas_cumprod,
    model_sigmas,
    timestep_schedule,
    uniform_sigmas,
)

__all__ = [
    "DenoiseEps",
    "DenoiseEpsCfgPP",
    "ModelSchedule",
    "SamplerOptions",
    "SamplingPlan",
    "StepInfo",
    "StopSampling",
    "discard_penultimate_sigma",
    "exponential_sigmas",
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
