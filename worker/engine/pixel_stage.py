"""The pixel stage of img2img: everything the reference ``init()`` does before the VAE, as one pure function.

semantics §2.1-§2.6 and §2.7 (the PIL part) of docs/img2img-semantics.md, with the fixes of §7:
§7.1 (blank mask reported in ``warnings``), §7.2 (resize mode 3 with a mask), §7.3 (mode 2 bands with an odd W/H)
and §7.6 (a ``latent_mask`` image is accepted). No torch here: the VAE step (worker/engine/processing.py) takes the
arrays of :class:`PixelStage`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from shared.errors import InputError
from worker.engine.imaging import (
    Box,
    PasteLoc,
    blur_mask,
    conditioning_mask,
    create_binary_mask,
    expand_crop_region,
    expand_too_small_crop_region,
    fill,
    flatten,
    get_crop_region,
    latent_mask_array,
    make_overlay,
    resize_image,
)

__all__ = [
    "BLANK_MASK_COMMENT",
    "BLANK_MASK_WARNING_CODE",
    "LATENT_SCALE",
    "PixelStage",
    "PixelWarning",
    "prepare_pixels",
]

LATENT_SCALE = 8
"""Pixels per latent cell on each axis: the latent is (H // 8) × (W // 8)."""

FILL_ORIGINAL = 1
"""inpainting_fill 1 ("original") is the only one without a pixel fill (semantics §2.4 f)."""

MASKED_CONTENT_LABELS: Mapping[int, str] = MappingProxyType({0: "fill", 2: "latent noise", 3: "latent nothing"})
"""Infotext "Masked content" per inpainting_fill; "original" (1) is never written (semantics §4)."""

BLANK_MASK_COMMENT = 'Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.'
"""The reference's comment when "only masked" meets an all-zero mask (semantics §2.2 step 8)."""

BLANK_MASK_WARNING_CODE = "blank_mask_fallback"
"""The structured warning of the same fallback (semantics §7.1)."""

LATENT_UPSCALE_MODE = 3
"""resize_mode 3, "Just resize (latent upscale)"."""


@dataclass(frozen=True)
class PixelWarning:
    """Something the job's submitter should know; ``code`` is stable snake_case."""

    code: str
    message: str


@dataclass(frozen=True, eq=False)
class PixelStage:
    """The result of :func:`prepare_pixels`, ready for the VAE encode (semantics §2.6).

    Arrays are numpy (no torch); pictures are PIL. ``W×H`` is the processing size, ``w×h`` the picture's.
    """

    images: NDArray[np.float32]
    """(batch_size, 3, H, W) float32 in [0, 1], one per batch slot. Resize mode 3 in whole-picture mode keeps the
    picture's own size: (batch_size, 3, h, w), see ``resize_mode_3_latent_upscale``."""
    batch_size: int
    """The effective batch size (k init images with k ≤ the requested batch size: k)."""
    image_mask: Image.Image | None
    """The processed W×H mask (L for resize mode 0 and the §7.2 path, else RGB), None without a (usable) mask."""
    mask_for_overlay: Image.Image | None
    """The mask the overlay was built from (only masked: w×h; whole picture: W×H)."""
    overlay_images: tuple[Image.Image, ...]
    """One RGBA overlay per batch slot (empty without a mask), for ``imaging.apply_overlay``."""
    crop_region: Box | None
    """Only masked: the crop box in mask pixels; else None."""
    paste_to: PasteLoc | None
    """Only masked: (x, y, w, h) where the W×H output goes back; else None."""
    latent_mask: NDArray[np.float32] | None
    """The "regenerate" latent mask (nmask), (H // 8, W // 8) float32 in [0, 1], rounded when mask_round."""
    conditioning_mask: NDArray[np.float32] | None
    """(H, W) float32 in [0, 1] for 9-channel inpainting models (rounded when mask_round). None without a mask: the
    reference then conditions on an all-ones mask of the encoded picture's size."""
    resize_mode_3_latent_upscale: tuple[int, int] | None
    """(width, height) px of the encoded pictures when the VAE step must bilinearly interpolate the latent to
    (H // 8, W // 8) (resize mode 3, whole picture); None otherwise."""
    inpaint_full_res: bool
    """Whether "only masked" is in effect: a mask was given with inpaint_full_res and it was not blank."""
    extra_generation_params: Mapping[str, Any]
    """Infotext items in the reference's order (Mask blur, Mask mode, Inpaint area, Masked area padding, Masked
    content); "Denoising strength" goes before them and is the caller's."""
    comments: tuple[str, ...]
    """The reference's comments, verbatim."""
    warnings: tuple[PixelWarning, ...]
    """Structured warnings for the job (semantics §7.1)."""
    color_corrections: tuple[NDArray[np.uint8], ...] | None
    """With img2img_color_correction: one 8-bit LAB target (OpenCV) per batch slot (semantics §2.4 g)."""


def prepare_pixels(
    init_images: Sequence[Image.Image],
    *,
    width: int,
    height: int,
    batch_size: int = 1,
    resize_mode: int = 0,
    mask: Image.Image | None = None,
    latent_mask: Image.Image | None = None,
    mask_blur_x: float = 4,
    mask_blur_y: float = 4,
    mask_round: bool = True,
    inpainting_fill: int = 0,
    inpaint_full_res: bool = True,
    inpaint_full_res_padding: int = 0,
    inpainting_mask_invert: bool = False,
    img2img_background_color: str | tuple[int, ...] = "#ffffff",
    img2img_color_correction: bool = False,
    fix_odd_bands: bool = True,
    fix_latent_upscale_mask: bool = True,
    forbid_too_small_crop_region: bool = False,
) -> PixelStage:
    """Run the reference ``init()`` up to the VAE encode (semantics §2.1-§2.7).

    Defaults are the reference class's (semantics §1), not the UI's: fill, only masked, padding 0, blur 4.

    Args:
        init_images: the pictures; 1 is repeated ``batch_size`` times, k ≤ batch_size give one slot each.
        width, height: the processing size W×H in px (at least 8 each: one latent cell).
        mask: 255 = regenerate; L, RGB, P, LA or RGBA (a non-opaque RGBA alpha is the mask, semantics §2.1).
        latent_mask: optional other mask for the pixel fill and the latent mask, in processing coordinates (W×H),
            used as it is, like the reference (semantics §2.4 f, §2.7, §7.6).
        mask_blur_x, mask_blur_y: Gaussian sigmas in px of the picture.
        inpaint_full_res_padding: px around the mask's bounding box ("only masked").
        img2img_background_color: what transparent RGBA pictures are flattened onto (PIL colour).
        img2img_color_correction: also return the LAB colour-correction targets.
        fix_odd_bands: semantics §7.3 (mode 2 bands each get their own size; False = the reference's black line).
        fix_latent_upscale_mask: semantics §7.2 (resize mode 3 with a mask works; False = the reference, whose
            pixel fill then raises ValueError "images do not match" and whose overlay is misplaced).
        forbid_too_small_crop_region: run ``expand_too_small_crop_region`` after the aspect fit (semantics §2.2
            step 11; not in the reference v1.10.1).

    Raises:
        InputError: no init image; more init images than ``batch_size`` (the reference's "bad number of images
            passed"); a size, batch size, resize mode, fill, padding or blur out of range; a latent_mask that is
            not W×H; whole-picture resize mode 3 pictures of different sizes (each is encoded at its own size).
        ValueError: only with ``fix_latent_upscale_mask=False``, the reference's "images do not match".
    """
    _validate(
        init_images,
        width=width,
        height=height,
        batch_size=batch_size,
        resize_mode=resize_mode,
        latent_mask=latent_mask,
        mask_blur_x=mask_blur_x,
        mask_blur_y=mask_blur_y,
        inpainting_fill=inpainting_fill,
        inpaint_full_res_padding=inpaint_full_res_padding,
    )
    W, H = width, height
    comments: list[str] = []
    warnings: list[PixelWarning] = []
    infotext: dict[str, Any] = {}

    image_mask: Image.Image | None = None
    mask_for_overlay: Image.Image | None = None
    crop_region: Box | None = None
    paste_to: PasteLoc | None = None
    # semantics §7.2: in whole-picture mode 3 the latent is stretched to W×H, so the mask and the overlay are put
    # in that stretched geometry (mode 0 to W×H) instead of the reference's "resize and fill".
    latent_upscale_geometry = resize_mode == LATENT_UPSCALE_MODE and fix_latent_upscale_mask and not inpaint_full_res

    if mask is not None:
        # semantics §2.1
        processed = create_binary_mask(mask, round=mask_round)
        if inpainting_mask_invert:
            processed = ImageOps.invert(processed)
        processed = blur_mask(processed, mask_blur_x, mask_blur_y)
        if mask_blur_x > 0 or mask_blur_y > 0:
            # The reference's mask_blur property: one value when x == y, else None (dropped from the infotext).
            infotext["Mask blur"] = mask_blur_x if mask_blur_x == mask_blur_y else None
        if inpainting_mask_invert:
            infotext["Mask mode"] = "Inpaint not masked"

        if inpaint_full_res:
            # semantics §2.2
            crop_region = get_crop_region(processed, inpaint_full_res_padding)
            if crop_region is None:
                # semantics §2.2 step 8 and §7.1: fall back to whole-picture img2img, and say so.
                comments.append(BLANK_MASK_COMMENT)
                warnings.append(
                    PixelWarning(
                        BLANK_MASK_WARNING_CODE,
                        "The mask is blank (all zero) and inpaint_full_res ('only masked') was requested: the "
                        "job ran as plain img2img of the whole picture, with no mask.",
                    )
                )
            else:
                mask_for_overlay = processed
                crop_region = expand_crop_region(crop_region, W, H, processed.width, processed.height)
                if forbid_too_small_crop_region:
                    crop_region = expand_too_small_crop_region(crop_region, W, H, processed.width, processed.height)
                x1, y1, x2, y2 = crop_region
                image_mask = resize_image(2, processed.crop(crop_region), W, H, fix_odd_bands=fix_odd_bands)
                paste_to = (x1, y1, x2 - x1, y2 - y1)
                infotext["Inpaint area"] = "Only masked"
                infotext["Masked area padding"] = inpaint_full_res_padding
        else:
            # semantics §2.3 (resize_image treats mode 3 as 2 in the reference; §7.2 uses mode 0)
            image_mask = resize_image(
                0 if latent_upscale_geometry else resize_mode, processed, W, H, fix_odd_bands=fix_odd_bands
            )
            doubled = np.clip(np.asarray(image_mask).astype(np.float32) * 2, 0, 255).astype(np.uint8)
            mask_for_overlay = Image.fromarray(doubled)

    mask_in_use = image_mask is not None
    # The reference keys the per-picture steps on the crop box, not on the flag: without a mask (or after the
    # blank-mask fallback) the picture is resized as in whole-picture mode, whatever inpaint_full_res says.
    only_masked = crop_region is not None
    fill_mask = latent_mask if latent_mask is not None else image_mask
    if mask_in_use and inpainting_fill in MASKED_CONTENT_LABELS:
        # "fill" is written by the pixel fill; "latent noise"/"latent nothing" by the latent step that follows
        # the encode in the reference. Same key, same place in the order.
        infotext["Masked content"] = MASKED_CONTENT_LABELS[inpainting_fill]

    # semantics §2.4: per init picture
    arrays: list[NDArray[np.float32]] = []
    overlays: list[Image.Image] = []
    corrections: list[NDArray[np.uint8]] = []
    for picture in init_images:
        image = flatten(picture, img2img_background_color)
        if not only_masked and resize_mode != LATENT_UPSCALE_MODE:
            image = resize_image(resize_mode, image, W, H, fix_odd_bands=fix_odd_bands)

        stretched: Image.Image | None = None
        if mask_for_overlay is not None:
            if latent_upscale_geometry:
                # semantics §7.2: the overlay is the picture stretched (mode 0) to W×H, the geometry of the output.
                stretched = resize_image(0, image, W, H)
                overlays.append(make_overlay(stretched, mask_for_overlay))
            else:
                if mask_for_overlay.size != image.size:
                    mask_for_overlay = resize_image(
                        resize_mode, mask_for_overlay, image.width, image.height, fix_odd_bands=fix_odd_bands
                    )
                overlays.append(make_overlay(image, mask_for_overlay))

        if crop_region is not None:
            image = resize_image(2, image.crop(crop_region), W, H, fix_odd_bands=fix_odd_bands)

        if mask_in_use and fill_mask is not None and inpainting_fill != FILL_ORIGINAL:
            if stretched is not None:
                # semantics §7.2: fill at W×H (the fill radii keep their meaning in processing pixels, as in every
                # other mode), then bring the filled picture back to the picture's own size so that the VAE still
                # encodes w×h and the latent is interpolated, as mode 3 does without a mask. It is pasted through
                # the mask brought back the same way, so unmasked pixels stay exact, as fill guarantees elsewhere.
                filled = resize_image(0, fill(stretched, fill_mask), image.width, image.height)
                back_mask = resize_image(0, fill_mask.convert("L"), image.width, image.height)
                image = image.copy()
                image.paste(filled, mask=back_mask)
            else:
                image = fill(image, fill_mask)

        if img2img_color_correction:
            corrections.append(np.asarray(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2LAB), dtype=np.uint8))
        arrays.append(np.moveaxis(np.asarray(image, dtype=np.float32) / 255.0, 2, 0))

    # semantics §2.6: batching
    if len(init_images) == 1:
        batch = np.repeat(arrays[0][np.newaxis], batch_size, axis=0)
        overlays = overlays * batch_size
        corrections = corrections * batch_size
    else:
        batch_size = len(init_images)
        if len({array.shape for array in arrays}) > 1:
            # Only resize mode 3 in whole-picture mode keeps each picture's own size.
            raise InputError(
                "init_images: with resize_mode 3 the pictures are encoded at their own size, so they must all "
                "have the same size",
                code="size_mismatch",
                field="init_images",
            )
        batch = np.stack(arrays)

    latent_regenerate: NDArray[np.float32] | None = None
    cmask: NDArray[np.float32] | None = None
    if image_mask is not None and fill_mask is not None:
        # semantics §2.7 and §2.8 item 3
        latent_regenerate = latent_mask_array(fill_mask, W // LATENT_SCALE, H // LATENT_SCALE, round=mask_round)
        cmask = conditioning_mask(image_mask, round=mask_round)

    upscale_from: tuple[int, int] | None = None
    if resize_mode == LATENT_UPSCALE_MODE and not only_masked:
        upscale_from = (batch.shape[3], batch.shape[2])

    ordered = {key: infotext[key] for key in _INFOTEXT_ORDER if infotext.get(key) is not None}
    return PixelStage(
        images=batch.astype(np.float32, copy=False),
        batch_size=batch_size,
        image_mask=image_mask,
        mask_for_overlay=mask_for_overlay,
        overlay_images=tuple(overlays),
        crop_region=crop_region,
        paste_to=paste_to,
        latent_mask=latent_regenerate,
        conditioning_mask=cmask,
        resize_mode_3_latent_upscale=upscale_from,
        inpaint_full_res=only_masked,
        extra_generation_params=MappingProxyType(ordered),
        comments=tuple(comments),
        warnings=tuple(warnings),
        color_corrections=tuple(corrections) if img2img_color_correction else None,
    )


# The order of semantics §4 ("extra_generation_params: Mask blur, Mask mode, Inpaint area, ..."); None values are
# dropped there too.
_INFOTEXT_ORDER = ("Mask blur", "Mask mode", "Inpaint area", "Masked area padding", "Masked content")


def _validate(
    init_images: Sequence[Image.Image],
    *,
    width: int,
    height: int,
    batch_size: int,
    resize_mode: int,
    latent_mask: Image.Image | None,
    mask_blur_x: float,
    mask_blur_y: float,
    inpainting_fill: int,
    inpaint_full_res_padding: int,
) -> None:
    if not init_images:
        raise InputError("init_images: at least one init image is required", code="missing", field="init_images")
    if batch_size < 1:
        raise InputError(f"batch_size: must be at least 1, got {batch_size}", field="batch_size")
    if len(init_images) > batch_size:
        raise InputError(
            f"init_images: bad number of images passed: {len(init_images)} images for batch_size {batch_size} "
            "(at most batch_size images, or one image to repeat)",
            code="bad_image_count",
            field="init_images",
        )
    for name, value in (("width", width), ("height", height)):
        if value < LATENT_SCALE:
            raise InputError(f"{name}: must be at least {LATENT_SCALE} px, got {value}", field=name)
    if resize_mode not in (0, 1, 2, 3):
        raise InputError(f"resize_mode: must be 0, 1, 2 or 3, got {resize_mode}", field="resize_mode")
    if inpainting_fill not in (0, 1, 2, 3):
        raise InputError(f"inpainting_fill: must be 0, 1, 2 or 3, got {inpainting_fill}", field="inpainting_fill")
    if inpaint_full_res_padding < 0:
        raise InputError(
            f"inpaint_full_res_padding: must be at least 0 px, got {inpaint_full_res_padding}",
            field="inpaint_full_res_padding",
        )
    for name, sigma in (("mask_blur_x", mask_blur_x), ("mask_blur_y", mask_blur_y)):
        if sigma < 0:
            raise InputError(f"{name}: must be at least 0 px, got {sigma}", field=name)
    if latent_mask is not None and latent_mask.size != (width, height):
        raise InputError(
            f"latent_mask: must be {width}×{height} px (the processing size), got {latent_mask.width}×"
            f"{latent_mask.height}",
            field="latent_mask",
        )
