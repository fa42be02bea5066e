"""Side by side with diffusers' own `StableDiffusionImg2ImgPipeline` on the same tiny model, where the semantics
coincide: no mask, sampler Euler with the reference's uniform sigma list, the same number of steps.

Settings that make the two runs the same computation:

* **Init latent**: diffusers treats a 4-channel `image` tensor as latents (no VAE encode, no generator draw), so
  `p.init_latent` from our `init()` is passed as `image`.
* **Noise**: `generator=[torch.Generator().manual_seed(seed + i) for each image]`: one CPU generator per image, whose
  first draw is the initial noise, as ours (`worker.engine.noise`, randn source "GPU" = the CPU here).
* **Schedule**: `EulerDiscreteScheduler.from_config(model.scheduler_config)` with `sigmas=` our full plan
  (`p.plan.sigmas`, steps + 1 values ending in 0), and `strength = (t_enc + 1) / steps + 1e-6` (capped at 1) so that
  diffusers' `int(steps · strength)` is t_enc + 1 (the 1e-6 guards the float floor): it then starts at the same sigma
  and runs the same t_enc + 1 steps. (With the plain strength diffusers runs one step fewer and starts one index
  later, img2img-semantics.md §3.2.)
* **Timesteps**: diffusers converts each sigma to the UNet's timestep through its own ᾱ (float32 betas), we through the
  reference's ᾱ (float64 betas, float32 product, as the reference's buffer). The timesteps then differ by up to 3e-4
  (998.9999 vs 999.0) and the final latents by up to ~1.4e-4. Loading the reference's ᾱ into diffusers' scheduler
  (`scheduler.alphas_cumprod = plan.model.alphas_cumprod`) makes the timesteps identical; what is left (up to ~3e-5 in
  the latent) is float rounding: diffusers steps with the UNet's ε while ours steps with ε recomputed from the
  (mask-blendable) x0, ε' = (x − x0)/σ, and the CFG batch order differs.
* **Prompts**: the same prompt, negative prompt "" on both, the same guidance scale (two-pass CFG).

Measured (CPU, float32, 64×64): the decoded pictures agree exactly after diffusers' float output is truncated to
uint8 as ours is (§4.1), except 0-2 pixel channels out of 12,288 that differ by one level (values sitting on a level
boundary). The test allows ±1 level on at most 0.1 % of the values and a latent difference below 1e-3.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

from worker.engine.models import LoadedModel
from worker.engine.processing import StableDiffusionProcessingImg2Img, process_images

from .conftest import PROMPT, SEED, MakeJob, pixels

CFG_SCALE = 7.0


def diffusers_pipeline(model: LoadedModel, scheduler: EulerDiscreteScheduler) -> Any:
    # The pipeline runs our model's own parts, and no safety checker, as our renderer has none.
    parts = {"vae": model.vae, "text_encoder": model.text_encoder, "tokenizer": model.tokenizer, "unet": model.unet}
    pipe: Any = StableDiffusionImg2ImgPipeline(
        **parts, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render_ours(p: StableDiffusionProcessingImg2Img) -> tuple[list[np.ndarray[Any, Any]], torch.Tensor]:
    """Our pictures (uint8 as int16) and the final latents before decoding."""
    finals: list[torch.Tensor] = []
    sample = p.sample

    def capture(*args: Any) -> torch.Tensor:
        finals.append(sample(*args))
        return finals[-1]

    p.sample = capture  # type: ignore[method-assign,assignment]
    processed = process_images(p)
    return [pixels(image) for image in processed.images], torch.cat(finals)


@pytest.mark.parametrize("reference_alphas", [False, True], ids=["diffusers-alphas", "reference-alphas"])
@pytest.mark.parametrize(
    ("steps", "strength", "batch_size"),
    [(6, 0.75, 1), (10, 1.0, 1), (10, 0.5, 2)],
)
def test_euler_img2img_matches_diffusers_pipeline(
    make_job: MakeJob,
    tiny_model: LoadedModel,
    steps: int,
    strength: float,
    batch_size: int,
    reference_alphas: bool,
) -> None:
    p = make_job(
        sampler_name="Euler",
        steps=steps,
        denoising_strength=strength,
        batch_size=batch_size,
        cfg_scale=CFG_SCALE,
        negative_prompt="",
    )
    ours, our_latents = render_ours(p)
    plan = p.plan
    assert plan is not None
    assert p.init_latent is not None
    assert plan.t_enc == int(min(strength, 0.999) * steps)

    scheduler = EulerDiscreteScheduler.from_config(tiny_model.scheduler_config)
    if reference_alphas:
        scheduler.alphas_cumprod = plan.model.alphas_cumprod.clone()
    pipe = diffusers_pipeline(tiny_model, scheduler)
    calls: list[int] = []
    hook = tiny_model.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        common: dict[str, Any] = {
            "prompt": [PROMPT] * batch_size,
            "negative_prompt": [""] * batch_size,
            "image": p.init_latent,
            "strength": min((plan.t_enc + 1) / steps + 1e-6, 1.0),
            "sigmas": plan.sigmas.tolist(),
            "guidance_scale": CFG_SCALE,
        }
        theirs_latent = pipe(
            **common,
            generator=[torch.Generator().manual_seed(SEED + i) for i in range(batch_size)],
            output_type="latent",
        ).images
        theirs = pipe(
            **common, generator=[torch.Generator().manual_seed(SEED + i) for i in range(batch_size)], output_type="np"
        ).images
    finally:
        hook.remove()

    # The same number of steps from the same sigma: diffusers made t_enc + 1 UNet calls per run (CFG batched).
    assert len(calls) == 2 * (plan.t_enc + 1) == 2 * plan.total_steps
    assert float(pipe.scheduler.sigmas[pipe.scheduler.begin_index or 0]) == pytest.approx(plan.start_sigma, rel=1e-6)

    latent_gap = float((theirs_latent - our_latents).abs().max())
    assert latent_gap < 1e-3
    for i in range(batch_size):
        truncated = np.floor(theirs[i] * 255.0).astype(np.int16)  # ours truncates to uint8 (§4.1)
        gap = np.abs(ours[i] - truncated)
        assert gap.max() <= 1
        assert (gap > 0).mean() < 1e-3
