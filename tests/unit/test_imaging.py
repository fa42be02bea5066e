"""The pixel helpers against semantics §2.1-§2.5, §2.7 and §4.5 (docs/img2img-semantics.md)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from worker.engine import imaging

# semantics §2.5: the per-column Lanczos extrapolation of the three outermost rows of a zero-height box.
EDGE_WEIGHTS = (1.2228, -0.2717, 0.0489)


def picture(width: int, height: int, seed: int = 0, low: int = 0, high: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(low, high, (height, width, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def square_mask(width: int, height: int, box: tuple[int, int, int, int], value: int = 255) -> Image.Image:
    array = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    array[y1:y2, x1:x2] = value
    return Image.fromarray(array)


def extrapolated(e0: np.ndarray, e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    a, b, c = EDGE_WEIGHTS
    return np.clip(np.round(a * e0 + b * e1 + c * e2), 0, 255)


# ---------------------------------------------------------------------------------------------------------------
# create_binary_mask (semantics §2.1 step 1)


def rgba_mask(alpha: list[int], rgb: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    array = np.zeros((1, len(alpha), 4), np.uint8)
    array[0, :, :3] = rgb
    array[0, :, 3] = alpha
    return Image.frombytes("RGBA", (len(alpha), 1), array.tobytes())


def test_rgba_mask_with_transparency_uses_alpha_thresholded_above_128() -> None:
    mask = rgba_mask([0, 1, 128, 129, 200, 255], rgb=(0, 0, 0))
    result = imaging.create_binary_mask(mask, round=True)
    assert result.mode == "L"
    assert list(np.asarray(result)[0]) == [0, 0, 0, 255, 255, 255]


def test_rgba_mask_without_rounding_keeps_the_raw_alpha() -> None:
    mask = rgba_mask([0, 1, 128, 129, 200, 255], rgb=(0, 0, 0))
    assert list(np.asarray(imaging.create_binary_mask(mask, round=False))[0]) == [0, 1, 128, 129, 200, 255]


def test_fully_opaque_rgba_mask_uses_luma_not_alpha() -> None:
    mask = Image.frombytes("RGBA", (3, 1), bytes([255, 0, 0, 255, 100, 100, 100, 255, 255, 255, 255, 255]))
    # ITU-R 601 luma: 0.299·255 = 76 for pure red; grey stays grey.
    assert list(np.asarray(imaging.create_binary_mask(mask))[0]) == [76, 100, 255]


@pytest.mark.parametrize("round_mask", [True, False])
def test_grey_mask_is_not_thresholded(round_mask: bool) -> None:
    mask = Image.fromarray(np.array([[0, 1, 100, 127, 128, 200, 255]], np.uint8))
    assert list(np.asarray(imaging.create_binary_mask(mask, round=round_mask))[0]) == [0, 1, 100, 127, 128, 200, 255]


def test_la_mask_drops_its_alpha() -> None:
    mask = Image.frombytes("LA", (2, 1), bytes([200, 0, 50, 255]))
    assert list(np.asarray(imaging.create_binary_mask(mask))[0]) == [200, 50]


# ---------------------------------------------------------------------------------------------------------------
# Mask blur (semantics §2.1 steps 3-4)


@pytest.mark.parametrize(("sigma", "taps"), [(1, 7), (4, 21), (8, 41), (16, 81)])
def test_kernel_width_follows_2_5_sigma(sigma: float, taps: int) -> None:
    assert imaging.gaussian_kernel_width(sigma) == taps


def reference_blur_rows(array: np.ndarray, sigma: float) -> np.ndarray:
    """A float Gaussian along axis 1 with a reflect-101 border (np.pad 'reflect'), rounded."""
    taps = imaging.gaussian_kernel_width(sigma)
    kernel = cv2.getGaussianKernel(taps, sigma)[:, 0]
    radius = taps // 2
    padded = np.pad(array.astype(np.float64), ((0, 0), (radius, radius)), mode="reflect")
    return np.stack([np.convolve(row, kernel, mode="valid") for row in padded])


def test_blur_is_per_axis_with_reflect_101_border() -> None:
    array = np.zeros((30, 40), np.uint8)
    array[:, 0] = 255  # at the left edge: the border mode matters
    array[:, 20] = 255
    blurred_x = np.asarray(imaging.blur_mask(Image.fromarray(array), 4, 0)).astype(np.int64)
    # Only the horizontal pass ran: every row is the same.
    assert (blurred_x == blurred_x[0]).all()
    assert np.abs(blurred_x[0] - reference_blur_rows(array[:1], 4)[0]).max() <= 1
    # The vertical pass uses its own sigma and runs after the horizontal one.
    both = np.asarray(imaging.blur_mask(Image.fromarray(array.T.copy()), 0, 4)).astype(np.int64)
    assert (blurred_x == both.T).all()


def test_blur_spreads_at_most_the_kernel_radius_and_is_not_rethresholded() -> None:
    mask = square_mask(100, 100, (45, 45, 55, 55))
    blurred = np.asarray(imaging.blur_mask(mask, 4, 4))
    ys, xs = np.nonzero(blurred)
    assert xs.min() >= 35
    assert xs.max() <= 64
    assert ys.min() >= 35
    assert ys.max() <= 64
    assert len(np.unique(blurred)) > 10  # soft ramp kept


def test_blur_x_different_from_y() -> None:
    mask = square_mask(100, 100, (45, 45, 55, 55))
    blurred = np.asarray(imaging.blur_mask(mask, 1, 8))
    ys, xs = np.nonzero(blurred)
    assert xs.max() - xs.min() < ys.max() - ys.min()


# ---------------------------------------------------------------------------------------------------------------
# Crop region (semantics §2.2 steps 7, 9, 11)


def test_crop_region_without_padding_is_the_bbox() -> None:
    assert imaging.get_crop_region(square_mask(100, 80, (10, 20, 30, 50)), 0) == (10, 20, 30, 50)


def test_crop_region_counts_value_one() -> None:
    assert imaging.get_crop_region(square_mask(100, 80, (10, 20, 30, 50), value=1), 0) == (10, 20, 30, 50)


def test_crop_region_with_padding() -> None:
    assert imaging.get_crop_region(square_mask(100, 80, (10, 20, 30, 50)), 8) == (2, 12, 38, 58)


def test_crop_region_padding_is_clamped_at_the_edges() -> None:
    assert imaging.get_crop_region(square_mask(100, 80, (0, 5, 95, 80)), 10) == (0, 0, 100, 80)


def test_crop_region_of_a_blank_mask_is_none() -> None:
    assert imaging.get_crop_region(Image.new("L", (64, 64)), 32) is None


def test_blur_tail_widens_the_crop_region() -> None:
    mask = square_mask(100, 100, (40, 40, 60, 60))
    x1, y1, x2, y2 = imaging.get_crop_region(imaging.blur_mask(mask, 4, 4), 0) or (0, 0, 0, 0)
    # widened on every side, by at most the kernel radius (10 px for sigma 4)
    assert 30 <= x1 < 40
    assert 30 <= y1 < 40
    assert 60 < x2 <= 70
    assert 60 < y2 <= 70


@pytest.mark.parametrize(
    ("box", "width", "height", "picture_size", "expected"),
    [
        pytest.param((10, 40, 50, 50), 64, 64, (100, 100), (10, 25, 50, 65), id="too-wide-grows-the-height"),
        pytest.param((40, 10, 50, 50), 64, 64, (100, 100), (25, 10, 65, 50), id="too-tall-grows-the-width"),
        pytest.param((10, 10, 50, 50), 64, 64, (100, 100), (10, 10, 50, 50), id="equal-aspect-is-unchanged"),
        # wanted width 31·4/3 = 41.33 → d = int(10.33) = 10, then shifted right off the left edge
        pytest.param((0, 0, 31, 31), 64, 48, (100, 100), (0, 0, 41, 31), id="truncates-the-growth"),
        pytest.param((10, 90, 50, 100), 64, 64, (100, 100), (10, 60, 50, 100), id="shifts-back-from-the-far-edge"),
        # wanted height 80 in a 20 px tall picture: the box spans the whole height and the aspect does not match
        pytest.param((10, 5, 90, 15), 64, 64, (100, 20), (10, 0, 90, 20), id="both-edges-take-the-full-extent"),
    ],
)
def test_expand_crop_region(
    box: tuple[int, int, int, int],
    width: int,
    height: int,
    picture_size: tuple[int, int],
    expected: tuple[int, int, int, int],
) -> None:
    assert imaging.expand_crop_region(box, width, height, *picture_size) == expected


def test_expand_too_small_crop_region_grows_to_the_processing_size() -> None:
    assert imaging.expand_too_small_crop_region((45, 45, 55, 55), 64, 64, 100, 100) == (18, 18, 82, 82)
    assert imaging.expand_too_small_crop_region((0, 90, 10, 100), 64, 64, 100, 100) == (0, 36, 64, 100)
    assert imaging.expand_too_small_crop_region((0, 0, 10, 10), 64, 64, 50, 50) == (0, 0, 50, 50)
    assert imaging.expand_too_small_crop_region((0, 0, 80, 80), 64, 64, 100, 100) == (0, 0, 80, 80)


# ---------------------------------------------------------------------------------------------------------------
# resize_image (semantics §2.5)


@pytest.mark.parametrize("size", [(200, 100), (100, 200), (100, 100)])
def test_mode_0_just_resizes_and_keeps_the_mode(size: tuple[int, int]) -> None:
    out = imaging.resize_image(0, picture(*size), 64, 48)
    assert out.size == (64, 48)
    assert out.mode == "RGB"
    assert (pixels(out) == pixels(picture(*size).resize((64, 48), Image.Resampling.LANCZOS))).all()
    assert imaging.resize_image(0, Image.new("L", size), 64, 48).mode == "L"


@pytest.mark.parametrize(
    ("size", "scaled", "offset"),
    [
        ((200, 100), (128, 64), (-32, 0)),  # wider: crop left and right
        ((100, 200), (64, 128), (0, -32)),  # taller: crop top and bottom
        ((100, 100), (64, 64), (0, 0)),  # equal
        ((150, 100), (96, 64), (-16, 0)),  # 150·64 // 100 = 96
    ],
)
def test_mode_1_crops_the_centre(size: tuple[int, int], scaled: tuple[int, int], offset: tuple[int, int]) -> None:
    source = picture(*size)
    out = imaging.resize_image(1, source, 64, 64)
    assert out.size == (64, 64)
    assert out.mode == "RGB"
    full = source.resize(scaled, Image.Resampling.LANCZOS)
    expected = full.crop((-offset[0], -offset[1], -offset[0] + 64, -offset[1] + 64))
    assert (pixels(out) == pixels(expected)).all()


def test_mode_1_floors_the_scaled_side() -> None:
    # 150×100 → 64×48: 150·48 // 100 = 72 wide, pasted at 32 − 36 = −4
    source = picture(150, 100)
    expected = source.resize((72, 48), Image.Resampling.LANCZOS).crop((4, 0, 68, 48))
    assert (pixels(imaging.resize_image(1, source, 64, 48)) == pixels(expected)).all()


def test_mode_1_makes_an_l_mask_rgb() -> None:
    out = imaging.resize_image(1, Image.new("L", (100, 50), 200), 64, 64)
    assert out.mode == "RGB"
    assert (pixels(out) == 200).all()


def test_mode_2_wider_picture_gets_bands_above_and_below() -> None:
    source = picture(200, 100, low=40, high=220)
    out = pixels(imaging.resize_image(2, source, 64, 64))
    centre = pixels(source.resize((64, 32), Image.Resampling.LANCZOS))
    assert (out[16:48] == centre).all()  # 100·64 // 200 = 32 rows at 32 − 16 = 16
    assert (out[:16] == out[0]).all()
    assert (out[48:] == out[63]).all()
    top = extrapolated(centre[0], centre[1], centre[2])
    bottom = extrapolated(centre[-1], centre[-2], centre[-3])
    assert np.abs(out[0] - top).max() <= 1
    assert np.abs(out[63] - bottom).max() <= 1
    # close to, but not, edge replication
    assert not (out[0] == centre[0]).all()


def test_mode_2_taller_picture_gets_bands_left_and_right() -> None:
    source = picture(100, 200, low=40, high=220)
    out = pixels(imaging.resize_image(2, source, 64, 64))
    centre = pixels(source.resize((32, 64), Image.Resampling.LANCZOS))
    assert (out[:, 16:48] == centre).all()
    assert (out[:, :16] == out[:, :1]).all()
    assert (out[:, 48:] == out[:, 63:]).all()
    assert np.abs(out[:, 0] - extrapolated(centre[:, 0], centre[:, 1], centre[:, 2])).max() <= 1
    assert np.abs(out[:, 63] - extrapolated(centre[:, -1], centre[:, -2], centre[:, -3])).max() <= 1


def test_mode_2_equal_aspect_is_a_plain_resize() -> None:
    source = picture(100, 50)
    expected = source.resize((64, 32), Image.Resampling.LANCZOS)
    assert (pixels(imaging.resize_image(2, source, 64, 32)) == pixels(expected)).all()


def test_mode_2_band_clamps_to_0_255() -> None:
    array = np.zeros((10, 40, 3), np.uint8)
    array[0, 20:] = 255  # e0 = 255, e1 = e2 = 0: 1.2228·255 clamps to 255
    array[1, :20] = 255  # e0 = 0, e1 = 255: −0.2717·255 clamps to 0
    out = pixels(imaging.resize_image(2, Image.fromarray(array), 40, 20))
    assert (out[0, 20:] == 255).all()
    assert (out[0, :20] == 0).all()


def test_mode_2_band_matches_pillow_zero_height_box() -> None:
    """The band is Pillow's LANCZOS resize of a zero-height box (bit-exact where this Pillow still allows it)."""
    source = picture(64, 20, seed=3)
    try:
        top = source.resize((64, 5), Image.Resampling.LANCZOS, box=(0, 0, 64, 0))
        bottom = source.resize((64, 5), Image.Resampling.LANCZOS, box=(0, 20, 64, 20))
    except ValueError:
        pytest.skip("this Pillow refuses a zero-height box")
    out = pixels(imaging.resize_image(2, source, 64, 30))
    assert (out[:5] == pixels(top)).all()
    assert (out[25:] == pixels(bottom)).all()


@pytest.mark.parametrize("mode", [2, 3, 7])
def test_other_modes_are_treated_as_mode_2(mode: int) -> None:
    source = picture(200, 100)
    assert (pixels(imaging.resize_image(mode, source, 64, 64)) == pixels(imaging.resize_image(2, source, 64, 64))).all()


def test_mode_2_l_mask_becomes_rgb_with_equal_channels() -> None:
    mask = square_mask(200, 100, (0, 0, 200, 50))
    out = pixels(imaging.resize_image(2, mask, 64, 64))
    assert out.shape == (64, 64, 3)
    assert (out[..., 0] == out[..., 1]).all()
    assert (out[..., 0] == out[..., 2]).all()
    assert (out[:16] == 255).all()
    assert (out[48:] == 0).all()


def test_mode_2_odd_width_leaves_the_last_column_black_without_fix() -> None:
    """Reference behaviour (semantics §2.5 edge case): 131×64 from 128×64 → column 130 is black."""
    source = picture(128, 64, low=100, high=200)
    out = pixels(imaging.resize_image(2, source, 131, 64, fix_odd_bands=False))
    assert (out[:, 130] == 0).all()
    assert (out[:, 129] > 0).all()
    assert (out[:, 0] > 0).all()


def test_fix_odd_bands_gives_each_band_its_own_size() -> None:
    """Fix §7.3: with an odd W the right band is one column wider, so no black line."""
    source = picture(128, 64, low=100, high=200)
    out = pixels(imaging.resize_image(2, source, 131, 64))
    centre = pixels(source)  # 128×64 at height 64 is not resized
    assert (out[:, 1:129] == centre).all()
    right = extrapolated(centre[:, -1], centre[:, -2], centre[:, -3])
    assert np.abs(out[:, 129] - right).max() <= 1
    assert (out[:, 130] == out[:, 129]).all()
    assert np.abs(out[:, 0] - extrapolated(centre[:, 0], centre[:, 1], centre[:, 2])).max() <= 1


def test_fix_odd_bands_when_the_first_gap_is_zero() -> None:
    """Fix §7.3: 129×64 from 128×64 has no left gap; the reference then paints no band at all."""
    source = picture(128, 64, low=100, high=200)
    assert (pixels(imaging.resize_image(2, source, 129, 64, fix_odd_bands=False))[:, 128] == 0).all()
    fixed = pixels(imaging.resize_image(2, source, 129, 64))
    assert (fixed[:, 128] > 0).all()
    assert (fixed[:, :128] == pixels(source)).all()


def test_fix_odd_bands_odd_height() -> None:
    """Fix §7.3 on rows: 64×67 from 64×32 → 17 rows above, 18 below."""
    source = picture(64, 32, low=100, high=200)
    reference = pixels(imaging.resize_image(2, source, 64, 67, fix_odd_bands=False))
    fixed = pixels(imaging.resize_image(2, source, 64, 67))
    assert (reference[66] == 0).all()
    assert (reference[65] > 0).all()
    assert (fixed[49:] == fixed[66]).all()
    assert (fixed[66] > 0).all()
    assert (fixed[:66] == reference[:66]).all()


def test_mode_2_band_overhang_is_clipped() -> None:
    # 64×64 from 64×63·… : gap before 1 px, gap after 0 px
    source = picture(128, 126, low=100, high=200)  # → 64×63 at y = 32 − 31 = 1
    for fix in (True, False):
        out = pixels(imaging.resize_image(2, source, 64, 64, fix_odd_bands=fix))
        assert (out[1:] == pixels(source.resize((64, 63), Image.Resampling.LANCZOS))).all()


def test_resize_to_a_zero_side_raises() -> None:
    with pytest.raises(ValueError, match="0 px"):
        imaging.resize_image(2, picture(1000, 1), 64, 64)


# ---------------------------------------------------------------------------------------------------------------
# fill (semantics §2.4)


def test_fill_keeps_unmasked_pixels_exactly() -> None:
    source = picture(48, 40, seed=5)
    mask = square_mask(48, 40, (10, 10, 30, 25))
    out = pixels(imaging.fill(source, mask))
    keep = np.asarray(mask) == 0
    assert (out[keep] == pixels(source)[keep]).all()


def test_fill_uses_the_colour_around_the_hole() -> None:
    array = np.full((40, 40, 3), (10, 200, 30), np.uint8)
    array[10:30, 10:30] = 255  # garbage under the mask must not leak
    out = pixels(imaging.fill(Image.fromarray(array), square_mask(40, 40, (10, 10, 30, 30))))
    # 8-bit premultiplied layers lose a few levels at low coverage
    assert np.abs(out - np.array([10, 200, 30])).max() <= 6


def test_fill_blends_neighbours_across_the_hole() -> None:
    array = np.zeros((32, 64, 3), np.uint8)
    array[:, :32] = (255, 0, 0)
    array[:, 32:] = (0, 0, 255)
    out = pixels(imaging.fill(Image.fromarray(array), square_mask(64, 32, (16, 0, 48, 32))))
    left, right = out[:, 18], out[:, 45]
    assert (left[:, 0] > left[:, 2]).all()
    assert (right[:, 2] > right[:, 0]).all()
    hole = out[:, 16:48]
    assert (np.abs(hole[..., 0] + hole[..., 2] - 255) <= 3).all()
    assert (hole[..., 1] <= 1).all()
    # a blend, not a copy: the middle of the hole has both colours
    assert (out[:, 31:33, 0] > 60).all()
    assert (out[:, 31:33, 2] > 60).all()


def test_fill_partly_masked_pixel_is_a_mix() -> None:
    array = np.full((32, 32, 3), (0, 0, 255), np.uint8)
    array[15, 15] = (255, 0, 0)
    mask = square_mask(32, 32, (15, 15, 16, 16), value=128)
    out = pixels(imaging.fill(Image.fromarray(array), mask))
    # about half its own red (alpha 127 on the last pass) and half the blue around it
    assert 120 <= out[15, 15, 0] <= 135
    assert 120 <= out[15, 15, 2] <= 135


def test_fill_without_any_coverage_is_black() -> None:
    out = pixels(imaging.fill(picture(32, 32), Image.new("L", (32, 32), 255)))
    assert (out == 0).all()


def test_fill_accepts_an_rgb_mask() -> None:
    source = picture(32, 32)
    rgb_mask = square_mask(32, 32, (8, 8, 24, 24)).convert("RGB")
    assert (pixels(imaging.fill(source, rgb_mask)) == pixels(imaging.fill(source, rgb_mask.convert("L")))).all()


def test_fill_size_mismatch_raises_like_the_reference() -> None:
    with pytest.raises(ValueError, match="images do not match"):
        imaging.fill(picture(32, 32), Image.new("L", (16, 16)))


# ---------------------------------------------------------------------------------------------------------------
# flatten (semantics §2.4 b)


def test_flatten_composites_rgba_over_the_background() -> None:
    rgba = Image.frombytes("RGBA", (3, 1), bytes([255, 0, 0, 0, 255, 0, 0, 255, 255, 0, 0, 128]))
    out = pixels(imaging.flatten(rgba, "#ffffff"))
    assert list(out[0, 0]) == [255, 255, 255]
    assert list(out[0, 1]) == [255, 0, 0]
    assert out[0, 2, 0] == 255
    assert 120 <= out[0, 2, 1] <= 135
    assert list(pixels(imaging.flatten(rgba, "#000000"))[0, 0]) == [0, 0, 0]


def test_flatten_drops_la_alpha_and_converts_other_modes() -> None:
    la = Image.frombytes("LA", (1, 1), bytes([90, 0]))
    assert imaging.flatten(la, "#ffffff").mode == "RGB"
    assert list(pixels(imaging.flatten(la, "#ffffff"))[0, 0]) == [90, 90, 90]
    assert imaging.flatten(Image.new("L", (4, 4), 7), "#ffffff").mode == "RGB"


# ---------------------------------------------------------------------------------------------------------------
# Overlay (semantics §2.4 d, §4.5)


def test_overlay_alpha_is_the_inverted_mask_and_colour_the_picture() -> None:
    source = picture(40, 30)
    mask = square_mask(40, 30, (10, 10, 20, 20), value=255)
    overlay = pixels(imaging.make_overlay(source, mask))
    assert (overlay[..., 3] == 255 - np.asarray(mask)).all()
    keep = np.asarray(mask) == 0
    assert (overlay[..., :3][keep] == pixels(source)[keep]).all()


def test_apply_overlay_restores_every_unmasked_pixel_exactly() -> None:
    source = picture(64, 64, seed=9)
    mask_array = np.zeros((64, 64), np.uint8)
    mask_array[20:40, 20:40] = 255
    mask_array[19, 20:40] = 100  # a soft edge
    overlay = imaging.make_overlay(source, Image.fromarray(mask_array))
    generated = Image.new("RGB", (64, 64), (0, 255, 0))
    result = imaging.apply_overlay(generated, None, overlay)
    out = pixels(result.image)
    assert (out[mask_array == 0] == pixels(source)[mask_array == 0]).all()
    assert (out[mask_array == 255] == [0, 255, 0]).all()
    # a soft mask value m gives orig·(255 − m)/255 + generated·m/255
    expected_soft = (pixels(source)[19, 25] * 155 + np.array([0, 255, 0]) * 100) / 255
    assert np.abs(out[19, 25] - expected_soft).max() <= 2
    assert (pixels(result.original_denoised_image) == pixels(generated)).all()


def test_uncrop_pastes_a_crop_and_resize_into_a_transparent_canvas() -> None:
    generated = picture(64, 32)
    canvas = imaging.uncrop(generated, (150, 100), (39, 32, 72, 36))
    assert canvas.size == (150, 100)
    assert canvas.mode == "RGBA"
    alpha = np.asarray(canvas)[..., 3]
    assert (alpha[32:68, 39:111] == 255).all()
    alpha_outside = alpha.copy()
    alpha_outside[32:68, 39:111] = 0
    assert (alpha_outside == 0).all()
    expected = imaging.resize_image(1, generated, 72, 36)
    assert (pixels(canvas)[32:68, 39:111, :3] == pixels(expected)).all()


def test_apply_overlay_without_overlay_returns_the_output() -> None:
    generated = picture(16, 16)
    result = imaging.apply_overlay(generated, None, None)
    assert result.image is generated
    assert (pixels(result.original_denoised_image) == pixels(generated)).all()


def test_apply_overlay_size_mismatch_raises() -> None:
    overlay = imaging.make_overlay(picture(32, 32), Image.new("L", (32, 32)))
    with pytest.raises(ValueError, match="does not match"):
        imaging.apply_overlay(picture(16, 16), None, overlay)


# ---------------------------------------------------------------------------------------------------------------
# Latent mask and conditioning mask (semantics §2.7, §2.8)


@pytest.mark.parametrize(("value", "expected"), [(127, 0.0), (128, 1.0), (0, 0.0), (255, 1.0)])
def test_latent_mask_rounds_at_128(value: int, expected: float) -> None:
    latent = imaging.latent_mask_array(Image.new("L", (64, 48), value), 8, 6, round=True)
    assert latent.shape == (6, 8)
    assert latent.dtype == np.float32
    assert (latent == expected).all()


def test_latent_mask_without_rounding_keeps_fractions() -> None:
    latent = imaging.latent_mask_array(Image.new("L", (64, 48), 100), 8, 6, round=False)
    assert np.allclose(latent, 100 / 255)


def test_latent_mask_uses_bicubic_and_channel_0() -> None:
    mask = Image.fromarray(np.asarray(imaging.blur_mask(square_mask(64, 64, (16, 16, 48, 48)), 4, 4)))
    expected = np.asarray(mask.convert("RGB").resize((8, 8), Image.Resampling.BICUBIC))[..., 0] / 255
    assert np.allclose(imaging.latent_mask_array(mask, 8, 8, round=False), expected)
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    assert (imaging.latent_mask_array(red, 8, 8) == 1).all()


def test_conditioning_mask_is_rounded_when_asked() -> None:
    mask = Image.fromarray(np.array([[0, 100, 127, 128, 255]], np.uint8))
    assert list(imaging.conditioning_mask(mask, round=True)[0]) == [0, 0, 0, 1, 1]
    assert np.allclose(imaging.conditioning_mask(mask, round=False)[0], np.array([0, 100, 127, 128, 255]) / 255)
