"""The webui's img2img colour correction (img2img-semantics.md §4.4): after decoding, bring the output's colours back
to the init picture's, keeping the output's luminosity. Pure numpy/OpenCV/PIL; the target comes from the pixel stage.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["apply_color_correction"]


def apply_color_correction(target_lab: NDArray[np.uint8], picture: Image.Image) -> Image.Image:
    """The webui's img2img colour correction (§4.4): match the output's 8-bit LAB histograms, channel by channel, to
    the init picture's, then keep the corrected hue and saturation with the uncorrected luminosity.

    `target_lab` is the (H, W, 3) uint8 OpenCV LAB of the processed init picture (the pixel stage's target).
    """
    original = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    lab = np.asarray(cv2.cvtColor(original, cv2.COLOR_RGB2LAB), dtype=np.uint8)
    matched = np.stack([_match_histogram(lab[..., c], target_lab[..., c]) for c in range(3)], axis=-1)
    corrected = np.asarray(cv2.cvtColor(matched, cv2.COLOR_LAB2RGB), dtype=np.uint8)
    return Image.fromarray(_luminosity_blend(corrected, original), "RGB")


def _match_histogram(source: NDArray[np.uint8], template: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Map each source value to the template value at the same quantile (linear between quantiles); truncated to
    uint8 as the reference keeps its result."""
    _, inverse, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    t_values, t_counts = np.unique(template.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    t_quantiles = np.cumsum(t_counts) / template.size
    mapped = np.interp(quantiles, t_quantiles, t_values.astype(np.float64))
    return mapped[inverse].reshape(source.shape).astype(np.uint8)


def _luminosity_blend(colour: NDArray[np.uint8], luminosity: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The "luminosity" blend mode (W3C compositing, non-separable): the hue and saturation of `colour` with the
    luminosity (0.3 R + 0.59 G + 0.11 B) of `luminosity`, colours clipped back into gamut."""
    base = colour.astype(np.float64) / 255.0
    lum_target = _lum(luminosity.astype(np.float64) / 255.0)
    shifted = base + (lum_target - _lum(base))[..., None]
    lum = _lum(shifted)[..., None]
    low = shifted.min(axis=-1, keepdims=True)
    high = shifted.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        shifted = np.where(low < 0, lum + (shifted - lum) * lum / np.maximum(lum - low, 1e-12), shifted)
        shifted = np.where(high > 1, lum + (shifted - lum) * (1 - lum) / np.maximum(high - lum, 1e-12), shifted)
    return np.clip(np.rint(shifted * 255.0), 0, 255).astype(np.uint8)


def _lum(rgb: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(0.3 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2])
