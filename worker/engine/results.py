"""What a render produces: the decoded pictures and their companions (img2img-semantics.md §4), and `Processed`,
the job's results image by image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from shared.images import encode_png
from worker.engine.imaging import resize_image
from worker.engine.models import LoadedModel
from worker.engine.pixel_stage import PixelWarning

__all__ = ["Processed", "decode_latent", "mask_composite"]


@dataclass
class Processed:
    """What a job produced, image by image (same index in every list).

    `masks[i]` is the mask the overlay of image i was built from (`mask_for_overlay`, L, in the geometry of the
    overlay: the picture's own size for "only masked", W×H for "whole picture"); None without a mask. The
    webui's extra outputs of `return_mask` / `return_mask_composite` are not per-image results, so they go to
    `extra_images` (the reference appends them to its image list).
    """

    images: list[Image.Image]
    overlay_images: list[Image.Image | None]
    masks: list[Image.Image | None]
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    infotexts: list[str]
    comments: list[str]
    warnings: list[PixelWarning]
    interrupted: bool = False
    width: int = 0
    height: int = 0
    extra_images: list[Image.Image] = field(default_factory=list)

    def save(self, folder: Path) -> list[Path]:
        """Write `result-{i}.png` (with its infotext), `overlay-{i}.png` and `mask-{i}.png` into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for i, image in enumerate(self.images):
            outputs: list[tuple[str, Image.Image | None, str | None]] = [
                ("result", image, self.infotexts[i]),
                ("overlay", self.overlay_images[i], None),
                ("mask", self.masks[i], None),
            ]
            for kind, picture, infotext in outputs:
                if picture is None:
                    continue
                path = folder / f"{kind}-{i}.png"
                path.write_bytes(encode_png(picture, infotext))
                written.append(path)
        return written


def decode_latent(model: LoadedModel, latent: torch.Tensor) -> Image.Image:
    """VAE-decode one latent to an RGB picture; (x + 1) / 2 clamped, ×255 and truncated like the reference (§4.1)."""
    decoded = model.vae_decode(latent)[0].float()
    pixels = torch.clamp((decoded + 1.0) / 2.0, 0.0, 1.0) * 255.0
    array = pixels.permute(1, 2, 0).to(torch.uint8).cpu().numpy()
    return Image.fromarray(array, "RGB")


def mask_composite(denoised: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The webui's "-mask-composite" output (§4.7): the output before the overlay, shown only where the mask is set
    (the mask brought to the output's size with resize mode 2), transparent elsewhere; RGBA."""
    mask = mask_for_overlay
    if mask.size != denoised.size:
        mask = resize_image(2, mask, denoised.width, denoised.height)
    layer = Image.new("RGBa", denoised.size)
    shown = Image.composite(denoised.convert("RGBA").convert("RGBa"), layer, mask.convert("L"))
    return shown.convert("RGBA")
