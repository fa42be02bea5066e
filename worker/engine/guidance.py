"""Classifier-free guidance: the UNet as the sampler sees it, ε(x, t) from one batched pass over the conditional and
unconditional prompts, or three passes for edit (InstructPix2Pix) models with an image CFG scale
(img2img-semantics.md §3.3)."""

from __future__ import annotations

from typing import Any, cast

import torch

from worker.engine.sampling import DenoiseEps

__all__ = ["cfg_denoiser"]


def cfg_denoiser(
    unet: Any,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    image_cond: torch.Tensor | None,
    cfg_scale: float,
    image_cfg_scale: float | None,
) -> DenoiseEps:
    """ε(x, t) with classifier-free guidance.

    Args:
        unet: the diffusers UNet (untyped callable).
        cond, uncond: the prompt and negative prompt embeddings of the batch.
        image_cond: the extra UNet input channels (edit and 9-channel inpainting models), or None.
        cfg_scale: the guidance scale.
        image_cfg_scale: edit models only (None otherwise): with a scale other than 1 the image conditioning is
            guided too, in a third pass without it.
    """

    def run_unet(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        model_input = x if extra is None else torch.cat([x, extra], dim=1)
        with torch.no_grad():
            return cast(torch.Tensor, unet(model_input, t, encoder_hidden_states=context).sample)

    def denoise(x: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        del sigma
        batch = x.shape[0]
        extra = image_cond.expand(batch, -1, -1, -1) if image_cond is not None else None
        if extra is not None and image_cfg_scale is not None and image_cfg_scale != 1.0:
            zeros = torch.zeros_like(extra)
            out = run_unet(
                torch.cat([x, x, x]),
                torch.cat([t, t, t]),
                torch.cat([cond, uncond, uncond]),
                torch.cat([extra, extra, zeros]),
            )
            text, image_only, neither = out.chunk(3)
            return neither + cfg_scale * (text - image_only) + image_cfg_scale * (image_only - neither)
        out = run_unet(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([cond, uncond]),
            torch.cat([extra, extra]) if extra is not None else None,
        )
        positive, negative = out.chunk(2)
        return negative + cfg_scale * (positive - negative)

    return denoise
