"""Pixel helpers of the reference img2img (PIL, numpy and OpenCV only; no torch).

Each function is named after the reference helper it reproduces so that a reader can map them
(see docs/img2img-semantics.md; "semantics §x" below). Written from that prose, not from the
reference code.

Conventions (semantics, top of the page): sizes are pixels; a mask value of 255 means "regenerate" and 0 "keep";
boxes are ``(x1, y1, x2, y2)`` with x2/y2 exclusive (PIL style); ``paste_loc`` is ``(x, y, w, h)``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter, ImageOps

__all__ = [
    "FILL_PASSES",
    "OverlayResult",
    "apply_overlay",
    "blur_mask",
    "conditioning_mask",
    "create_binary_mask",
    "expand_crop_region",
    "expand_too_small_crop_region",
    "fill",
    "flatten",
    "gaussian_kernel_width",
    "get_crop_region",
    "latent_mask_array",
    "make_overlay",
    "resize_image",
    "uncrop",
]

Box = tuple[int, int, int, int]
"""(x1, y1, x2, y2) in pixels, x2 and y2 exclusive."""

PasteLoc = tuple[int, int, int, int]
"""(x, y, w, h) in pixels of the original picture."""

ALPHA_THRESHOLD = 128
"""An alpha mask counts as "regenerate" strictly above this value (semantics §2.1 step 1)."""

FILL_PASSES: tuple[tuple[int, int], ...] = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))
"""(Gaussian radius in px, repeats) of masking.fill, coarse to fine (semantics §2.4)."""

_LANCZOS = Image.Resampling.LANCZOS
_LANCZOS_SUPPORT = 3.0
# Pillow's 8-bit resampler works in fixed point with 32 − 8 − 2 fractional bits.
_PRECISION_BITS = 22


# --------------------------------------------------------------------------------------------------------------
# Masks (semantics §2.1, §2.2)


def create_binary_mask(mask: Image.Image, round: bool = True) -> Image.Image:
    """The mask as an L image (semantics §2.1 step 1).

    An RGBA mask whose alpha is not fully opaque uses its alpha channel: thresholded (255 where alpha > 128,
    else 0) when ``round``, raw otherwise. Every other mask (L, RGB, P, LA, fully opaque RGBA) is converted to L
    (ITU-R 601 luma) and is *not* thresholded, whatever ``round`` says.
    """
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.getchannel("A")
        if round:
            return alpha.point(lambda v: 255 if v > ALPHA_THRESHOLD else 0)
        return alpha
    return mask.convert("L")


def gaussian_kernel_width(sigma: float) -> int:
    """Taps of the mask-blur kernel for a Gaussian sigma in pixels: 2·int(2.5σ + 0.5) + 1 (semantics §2.1 step 3)."""
    return 2 * int(2.5 * sigma + 0.5) + 1


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """Per-axis OpenCV Gaussian blur of an 8-bit mask, horizontal pass first (semantics §2.1 steps 3-4).

    ``blur_x``/``blur_y`` are sigmas in pixels of the picture; a sigma of 0 (or less) skips that pass. OpenCV's
    default border (reflect-101) and its 8-bit fixed-point output are what the reference gets. Returns an L image;
    there is no re-threshold afterwards (semantics §2.1 step 5).
    """
    arr: NDArray[Any] = np.array(mask.convert("L"), dtype=np.uint8)
    if blur_x > 0:
        arr = cv2.GaussianBlur(arr, (gaussian_kernel_width(blur_x), 1), blur_x)
    if blur_y > 0:
        # A 1-wide horizontal kernel is the identity, so this pass blurs only along y with sigma blur_y.
        arr = cv2.GaussianBlur(arr, (1, gaussian_kernel_width(blur_y)), blur_y)
    return Image.fromarray(arr)


def get_crop_region(mask: Image.Image, pad: int = 0) -> Box | None:
    """Bounding box of the non-zero mask pixels grown by ``pad`` px and clamped to the picture (semantics §2.2 step 7).

    This is the reference's ``get_crop_region_v2``: any value ≥ 1 counts, so a blur's faint tail widens the box.
    With ``pad == 0`` the raw bbox is returned. Returns None for an all-zero mask.
    """
    box = (mask if mask.mode == "L" else mask.convert("L")).getbbox()
    if box is None:
        return None
    if not pad:
        return box
    x1, y1, x2, y2 = box
    return (max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height))


def expand_crop_region(
    crop_region: Box, processing_width: int, processing_height: int, image_width: int, image_height: int
) -> Box:
    """Grow a crop box to the processing aspect ratio W/H inside a w×h picture (semantics §2.2 step 9).

    The short axis grows by ``d = int(wanted − current)`` px, d//2 before and the rest after; the box is then
    shifted back inside the picture and, if it still overhangs, clamped. The result matches W/H to within 1 px
    unless it spans the whole picture on that axis.
    """
    x1, y1, x2, y2 = crop_region
    ratio_crop = (x2 - x1) / (y2 - y1)
    ratio_processing = processing_width / processing_height
    if ratio_crop > ratio_processing:
        y1, y2 = _grow_axis(y1, y2, (x2 - x1) / ratio_processing, image_height)
    else:
        x1, x2 = _grow_axis(x1, x2, (y2 - y1) * ratio_processing, image_width)
    return (x1, y1, x2, y2)


def _grow_axis(lo: int, hi: int, wanted: float, size: int) -> tuple[int, int]:
    diff = int(wanted - (hi - lo))
    lo -= diff // 2
    hi += diff - diff // 2
    if hi >= size:
        shift = hi - size
        lo -= shift
        hi -= shift
    if lo < 0:
        hi -= lo
        lo = 0
    if hi >= size:
        hi = size
    return lo, hi


def expand_too_small_crop_region(
    crop_region: Box, processing_width: int, processing_height: int, image_width: int, image_height: int
) -> Box:
    """Grow a box smaller than W (or H) to W (or H) px, kept inside the picture (semantics §2.2 step 11).

    Not in the reference v1.10.1 (PR #16260, closed); the pixel stage runs it only when asked to. On each axis the
    box grows by diff//2 before and the rest after, is shifted back inside [0, size], then clamped.
    """
    x1, y1, x2, y2 = crop_region
    x1, x2 = _grow_to_at_least(x1, x2, processing_width, image_width)
    y1, y2 = _grow_to_at_least(y1, y2, processing_height, image_height)
    return (x1, y1, x2, y2)


def _grow_to_at_least(lo: int, hi: int, wanted: int, size: int) -> tuple[int, int]:
    if hi - lo >= wanted:
        return lo, hi
    diff = wanted - (hi - lo)
    lo -= diff // 2
    hi += diff - diff // 2
    if lo < 0:
        hi -= lo
        lo = 0
    if hi > size:
        lo -= hi - size
        hi = size
    return max(lo, 0), min(hi, size)


def latent_mask_array(
    latent_mask: Image.Image, latent_width: int, latent_height: int, round: bool = True
) -> NDArray[np.float32]:
    """The latent "regenerate" mask (nmask) as a (latent_height, latent_width) float32 array in [0, 1] (semantics §2.7).

    The mask is converted to RGB, resized with PIL's default filter for ``resize`` (BICUBIC), channel 0 is divided
    by 255 and, when ``round``, rounded half to even (np.around, in practice a threshold at 128/255). The keep-mask
    is ``1 − result``; tiling over the 4 latent channels is the caller's.

    Raises ValueError for a latent size below 1×1.
    """
    if latent_width < 1 or latent_height < 1:
        raise ValueError(f"latent size must be at least 1×1, got {latent_width}×{latent_height}")
    resized = latent_mask.convert("RGB").resize((latent_width, latent_height), Image.Resampling.BICUBIC)
    values = np.asarray(resized, dtype=np.float32)[:, :, 0] / 255.0
    if round:
        values = np.around(values)
    return values.astype(np.float32)


def conditioning_mask(image_mask: Image.Image, round: bool = True) -> NDArray[np.float32]:
    """The 9-channel inpainting model's mask at the processing size: (H, W) float32 in [0, 1] (semantics §2.8 item 3).

    ``image_mask`` (the processed W×H mask, blurred) → L → /255, rounded half to even to {0, 1} when ``round``
    (SDXL-inpaint always rounds: pass True). Downsampling to the latent size (nearest) is the caller's.
    """
    values = np.asarray(image_mask.convert("L"), dtype=np.float32) / 255.0
    if round:
        values = np.around(values)
    return values.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# images.resize_image (semantics §2.5)


def _lanczos_resize(im: Image.Image, width: int, height: int) -> Image.Image:
    # semantics §2.5: with no img2img upscaler configured (the only configuration the farm has) a resize is a
    # single PIL LANCZOS resize, for every mode.
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize a {im.width}×{im.height} picture to {width}×{height}: a side would be 0 px")
    return im.resize((width, height), _LANCZOS)


def resize_image(mode: int, im: Image.Image, width: int, height: int, *, fix_odd_bands: bool = True) -> Image.Image:
    """``images.resize_image`` of the reference (semantics §2.5), without upscalers (LANCZOS only).

    - 0 "just resize": exactly width×height, aspect ignored, the image mode kept.
    - 1 "crop and resize": scale to cover, paste centred on a black RGB canvas (the overflow is cropped).
    - 2 "resize and fill" (and any other mode): scale to fit, paste centred on a black RGB canvas, then fill the
      two empty bands with the Lanczos edge extrapolation of the picture's outermost rows/columns.

    ``fix_odd_bands`` (semantics §7.3): the reference gives both bands the size of the top/left gap, so an odd
    width/height with an even picture side leaves the last row/column black; True gives each band its own size.

    Raises ValueError when a resized side would be 0 px (an extreme aspect ratio).
    """
    if mode == 0:
        return _lanczos_resize(im, width, height)

    ratio = width / height
    src_ratio = im.width / im.height
    canvas = Image.new("RGB", (width, height))
    if mode == 1:
        if ratio > src_ratio:
            src_w, src_h = width, im.height * width // im.width
        else:
            src_w, src_h = im.width * height // im.height, height
        canvas.paste(_lanczos_resize(im, src_w, src_h), (width // 2 - src_w // 2, height // 2 - src_h // 2))
        return canvas

    if ratio < src_ratio:
        src_w, src_h = width, im.height * width // im.width
    else:
        src_w, src_h = im.width * height // im.height, height
    resized = _lanczos_resize(im, src_w, src_h)
    x0, y0 = width // 2 - src_w // 2, height // 2 - src_h // 2
    canvas.paste(resized, (x0, y0))
    if ratio == src_ratio:
        return canvas

    # The bands are computed on the resized picture. Everything the pipeline passes here is L (masks) or RGB
    # (flattened pictures); other modes are taken as RGB for the bands only (their main paste stays PIL's).
    pixels = np.asarray(resized if resized.mode in ("L", "RGB") else resized.convert("RGB"))
    if ratio < src_ratio:  # bands above and below
        before = y0
        after = height - y0 - src_h if fix_odd_bands else before
        if before > 0:
            canvas.paste(_band(pixels, axis=0, at_end=False, length=before), (0, 0))
        if after > 0:
            canvas.paste(_band(pixels, axis=0, at_end=True, length=after), (0, y0 + src_h))
    else:  # bands left and right
        before = x0
        after = width - x0 - src_w if fix_odd_bands else before
        if before > 0:
            canvas.paste(_band(pixels, axis=1, at_end=False, length=before), (0, 0))
        if after > 0:
            canvas.paste(_band(pixels, axis=1, at_end=True, length=after), (x0 + src_w, 0))
    return canvas


def _lanczos_kernel(x: float) -> float:
    # Pillow's Lanczos-3: sinc(x)·sinc(x/3) on [−3, 3).
    if not -_LANCZOS_SUPPORT <= x < _LANCZOS_SUPPORT:
        return 0.0
    return _sinc(x) * _sinc(x / _LANCZOS_SUPPORT)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _edge_weights(size: int, at_end: bool) -> list[tuple[int, int]]:
    """(source index, fixed-point weight) pairs of a zero-size Pillow LANCZOS source box at an edge.

    How the semantics §2.5 band is matched: the reference LANCZOS-resizes a zero-height (or zero-width) box at the
    picture's edge. For such a box Pillow's coefficient setup has scale 0, hence filter scale 1 and support 3, and a
    centre exactly on the edge (0, or ``size`` for the far edge); the taps are the source rows/columns whose
    centres lie within 3 px, i.e. the 3 outermost ones, weighted lanczos(0.5), lanczos(1.5), lanczos(2.5) and
    normalised: 1.2228, −0.2717, 0.0489. Every output row of the band is the same. The weights are rounded to
    Pillow's 22-bit fixed point and the sum is rounded, floored and clamped as Pillow does for 8-bit data, so this
    is bit-exact with Pillow 9.5 (and with the Pillow installed here, which behaves the same), without relying on
    a zero-size box staying supported by future Pillow versions.
    """
    centre = float(size) if at_end else 0.0
    first = max(int(centre - _LANCZOS_SUPPORT + 0.5), 0)  # int() truncates toward zero like Pillow's C cast
    last = min(int(centre + _LANCZOS_SUPPORT + 0.5), size)
    taps = [(index, _lanczos_kernel(index - centre + 0.5)) for index in range(first, last)]
    total = sum(weight for _, weight in taps)
    scale = float(1 << _PRECISION_BITS)
    return [(index, int(weight / total * scale + (0.5 if weight >= 0 else -0.5))) for index, weight in taps]


def _band(pixels: NDArray[np.uint8], *, axis: int, at_end: bool, length: int) -> Image.Image:
    """A band ``length`` px thick across ``axis`` (0: rows, 1: columns) made of the edge extrapolation."""
    accumulator = np.full(np.delete(pixels.shape, axis), 1 << (_PRECISION_BITS - 1), dtype=np.int64)
    for index, weight in _edge_weights(pixels.shape[axis], at_end):
        accumulator += np.take(pixels, index, axis=axis).astype(np.int64) * weight
    line = np.clip(accumulator >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    band = np.repeat(np.expand_dims(line, axis), length, axis=axis)
    return Image.fromarray(np.ascontiguousarray(band))


# --------------------------------------------------------------------------------------------------------------
# Pictures (semantics §2.4, §4.5)


def flatten(img: Image.Image, bgcolor: str | tuple[int, ...]) -> Image.Image:
    """The picture as RGB; an RGBA picture is first composited over ``bgcolor`` by its alpha (semantics §2.4 b).

    The alpha of LA (and other) pictures is simply dropped, as in the reference.
    """
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)  # the alpha band is the paste mask
        img = background
    return img.convert("RGB")


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """``masking.fill``: replace the masked pixels by a coarse-to-fine blur of the unmasked ones (semantics §2.4).

    A premultiplied RGBa layer holds the picture where the mask is not set (alpha = 255 − mask). For each
    (radius, repeats) of FILL_PASSES it is blurred with PIL GaussianBlur(radius) (radius 0 = identity),
    un-premultiplied and composited "over" a transparent black canvas ``repeats`` times; the alpha is then dropped.
    Unmasked pixels keep their exact value, masked ones get a weighted average of nearby unmasked colours, and
    where no pass has any coverage the result is black. Returns RGB.

    Raises ValueError("images do not match") when the picture and the mask differ in size (as PIL does).
    """
    if image.size != mask.size:
        raise ValueError(f"images do not match: picture {image.size}, mask {mask.size}")
    canvas = Image.new("RGBA", image.size)
    layer = Image.new("RGBa", image.size)
    layer.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in FILL_PASSES:
        blurred = layer.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            canvas.alpha_composite(blurred)
    return canvas.convert("RGB")


def make_overlay(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The RGBA overlay pasted back after generation (semantics §2.4 d).

    The picture pasted into a transparent premultiplied canvas through ``invert(mask_for_overlay)``: alpha =
    255 − mask, colour = the picture (exact where the mask is 0). Returns RGBA of the picture's size.

    Raises ValueError when the two sizes differ (the caller resizes the mask first).
    """
    if image.size != mask_for_overlay.size:
        raise ValueError(f"images do not match: picture {image.size}, mask_for_overlay {mask_for_overlay.size}")
    layer = Image.new("RGBa", image.size)
    layer.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
    return layer.convert("RGBA")


def uncrop(image: Image.Image, dest_size: tuple[int, int], paste_loc: PasteLoc) -> Image.Image:
    """Put a W×H output back into a transparent RGBA canvas of ``dest_size`` (semantics §4.5).

    The output is resized to (w, h) of ``paste_loc`` with resize mode 1 (crop and resize), the inverse of the
    mode 2 used on the way in up to ±1 px, and pasted at (x, y). Outside that box the canvas stays transparent.
    """
    x, y, w, h = paste_loc
    canvas = Image.new("RGBA", dest_size)
    canvas.paste(resize_image(1, image, w, h), (x, y))
    return canvas


class OverlayResult(NamedTuple):
    """What apply_overlay gives: the final picture and, for the mask composite, the output before the overlay."""

    image: Image.Image
    """RGB, the overlay composited over the (uncropped) output."""
    original_denoised_image: Image.Image
    """The (uncropped) output before the overlay: RGBA when uncropped, else the input's mode."""


def apply_overlay(image: Image.Image, paste_loc: PasteLoc | None, overlay: Image.Image | None) -> OverlayResult:
    """Paste a generated picture back into the original through its overlay (semantics §4.5).

    With ``paste_loc`` (only masked) the output is first uncropped onto a canvas of the overlay's size. The
    overlay is then alpha-composited "over" it: final ≈ orig·a + gen·(1 − a) with a = overlay alpha, so every
    pixel whose mask_for_overlay is 0 comes back exactly as it was. Without an overlay the output is unchanged.

    Raises ValueError when the overlay and the (uncropped) output differ in size. The reference composites over
    the overlapping top-left area instead (resize mode 3 with a mask, semantics §4.5/§7.2); the pixel stage never
    builds such a pair, so a mismatch here is a bug worth stopping on.
    """
    if overlay is None:
        return OverlayResult(image, image.copy())
    if paste_loc is not None:
        image = uncrop(image, overlay.size, paste_loc)
    if image.size != overlay.size:
        raise ValueError(f"overlay size {overlay.size} does not match the output size {image.size}")
    original_denoised_image = image.copy()
    composed = image.convert("RGBA")
    composed.alpha_composite(overlay)
    return OverlayResult(composed.convert("RGB"), original_denoised_image)
