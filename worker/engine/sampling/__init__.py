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
All 20 samplers and 12 schedules of the reference; docs/engine.md "Samplers" has the table (how each is implemented,
its Automatic schedule, the test that checks it), "Schedules" the formulas and "Sampler options" the options. In
short: LMS and UniPC run on diffusers schedulers whose sigma array is set to the reference's schedule, DDIM on
``DDIMScheduler`` with "leading" spacing and ``steps_offset=1`` (the reference's timesteps); every other step is
written here from the published maths (:mod:`.step_functions`, :mod:`.whole_runs` for DPM fast/adaptive and
Restart, the PLMS and DDIM CFG++ loops in :mod:`.loop`). No code is taken from the reference or from k-diffusion;
k-diffusion is the tests' oracle (``tests/unit/test_sampling_kdiffusion_parity.py``).

η (eta, the amount of ancestral/stochastic noise)
-------------------------------------------------
:func:`run_sampler` takes ``eta``; None means the sampler's default (:func:`sampler_default_eta`,
:attr:`SamplingPlan.default_eta`), the reference's option defaults: ``opts.eta_ancestral`` = 1.0 for Euler a, DPM2 a,
DPM++ 2S a, the four SDE samplers, DPM fast and DPM adaptive; ``opts.eta_ddim`` = 0.0 for DDIM and DDIM CFG++. The
ancestral split of a step σ → σ_next is σ_up = min(σ_next, η·√(σ_next²·(σ² − σ_next²)/σ²)),
σ_down = √(σ_next² − σ_up²): the deterministic step goes to σ_down and fresh noise of size σ_up is added. DPM++ 2M SDE
with h = log σ − log σ_next: x' = (σ_next/σ)·e^(−ηh)·x + (1 − e^(−(1+η)h))·x0 + correction
+ σ_next·√(1 − e^(−2ηh))·noise. DDIM's η is the DDIM paper's σ_t = η·√((1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)).
The others take no η and ignore it (which samplers take η is written once, in ``shared.job.steps``).

Noise
-----
The SDE samplers (DPM++ SDE, DPM++ 2M SDE, DPM++ 2M SDE Heun, DPM++ 3M SDE) draw from Brownian trees seeded with the
batch's seeds (:mod:`.brownian`); every other draw comes from the per-image generators
(``randn_like_from_generators``), as the reference's hijacked ``torch.randn_like``.

Known deviations from the reference
-----------------------------------
* UniPC runs diffusers' discrete UniPC on the reference's time points; the reference uses its own continuous-time
  implementation, so expect small numerical differences. Its "vary_coeff" variant is refused.
* The x0 in :class:`StepInfo` and the value returned on :class:`StopSampling` are the blended (CFG-combined) x0;
  processing replaces both with the denoiser's cond-only x0, the reference's default "Prompt" content (P17).

Modules
-------
:mod:`.schedules` (the model's training schedule, the sigma schedules), :mod:`.plan` (:class:`SamplingPlan`,
:class:`SamplerOptions` and :func:`plan_img2img`; the strength → steps rule itself is ``shared.job.steps``),
:mod:`.step_functions` (the steps written here), :mod:`.whole_runs`, :mod:`.brownian`, :mod:`.settings` (the job's
sampler options as the reference resolves them), :mod:`.loop` (:func:`run_sampler`).
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
