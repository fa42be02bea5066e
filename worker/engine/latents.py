"""The VAE side of `init()` (img2img-semantics.md §2.7, §2.8): the init pictures' posterior samples, seeded per batch
slot, the latent resize of resize mode 3, and the image conditioning of edit and 9-channel inpainting models."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional

from worker.engine.models import LoadedModel

__all__ = ["MASKED_IMAGE_STREAM", "POSTERIOR_STREAM", "encode_samples", "image_conditioning", "resize_latent"]

#: Which random stream a per-image generator feeds; each gets its own seed derived from the image's seed.
POSTERIOR_STREAM = b"vae-posterior"
MASKED_IMAGE_STREAM = b"inpaint-masked-image"


def _derived_seed(seed: int, stream: bytes) -> int:
    """A 63-bit seed for one random stream of an image, derived from its seed (independent of other streams)."""
    digest = hashlib.sha256(stream + b":" + str(int(seed)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _slot_seed(image_seeds: Sequence[int], index: int) -> int:
    if index < len(image_seeds):
        return image_seeds[index]
    return (image_seeds[-1] if image_seeds else 0) + index


def encode_samples(model: LoadedModel, x: torch.Tensor, image_seeds: Sequence[int], stream: bytes) -> torch.Tensor:
    """VAE posterior samples × the scale factor of images `x` (B, 3, h, w) in [-1, 1], one slot at a time, each
    drawn from a CPU generator seeded from the slot's seed and `stream` (same seed → same latent)."""
    vae = cast(Any, model.vae)  # diffusers' modules are untyped
    latents = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            generator = torch.Generator(device="cpu").manual_seed(_derived_seed(_slot_seed(image_seeds, i), stream))
            posterior = vae.encode(x[i : i + 1].to(model.device, model.vae_dtype)).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
            latents.append(posterior.mean + posterior.std * noise.to(posterior.mean))
    return (torch.cat(latents) * model.latent_scale_factor).to(model.dtype)


def resize_latent(latent: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a latent to (h, w), as the reference's latent upscale (align_corners=False)."""
    if tuple(latent.shape[-2:]) == size:
        return latent
    return functional.interpolate(latent.float(), size=size, mode="bilinear", align_corners=False).to(latent.dtype)


def image_conditioning(
    model: LoadedModel,
    signed: torch.Tensor,
    conditioning_mask: NDArray[np.float32] | None,
    latent_size: tuple[int, int],
    image_seeds: Sequence[int],
    inpainting_mask_weight: float,
) -> torch.Tensor | None:
    """The extra UNet input of edit and 9-channel inpainting models (semantics §2.8); None for plain models.

    `signed` are the processed pictures in [-1, 1]; `conditioning_mask` the pixel stage's (None: all regenerated).
    """
    if model.kind == "edit":
        return resize_latent(model.vae_encode_mode(signed), latent_size)
    if model.kind != "inpaint":
        return None
    if conditioning_mask is not None:
        cmask = torch.from_numpy(conditioning_mask).to(model.device, torch.float32)[None, None]
    else:
        cmask = torch.ones((1, 1, *signed.shape[-2:]), device=model.device)
    if model.is_sdxl:
        cmask = torch.round(cmask)  # SDXL inpainting always rounds the mask (prompts-and-models.md "SDXL inpainting")
    weight = inpainting_mask_weight
    if cmask.shape[-2:] == signed.shape[-2:]:
        masked = signed * (1.0 - weight * cmask)
    else:  # resize mode 3: the picture is at its own size, the mask at W×H
        masked = signed * (1.0 - weight * functional.interpolate(cmask, size=signed.shape[-2:], mode="nearest"))
    # Sampled like the init latent (the reference samples here too), seeded per slot for reproducibility.
    masked_latent = resize_latent(encode_samples(model, masked, image_seeds, MASKED_IMAGE_STREAM), latent_size)
    cmask_latent = functional.interpolate(cmask, size=latent_size, mode="nearest").to(model.dtype)
    cmask_latent = cmask_latent.expand(masked_latent.shape[0], -1, -1, -1)
    return torch.cat([cmask_latent, masked_latent], dim=1)
