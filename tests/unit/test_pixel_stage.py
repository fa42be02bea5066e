"""prepare_pixels against semantics §2 (init() before the VAE) and the fixes §7.1, §7.2, §7.3, §7.6."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.errors import InputError
from worker.engine.imaging import apply_overlay, blur_mask, resize_image
from worker.engine.pixel_stage import BLANK_MASK_COMMENT, BLANK_MASK_WARNING_CODE, PixelStage, prepare_pixels

GREEN = (0, 255, 0)


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(30, 220, (height, width, 3), dtype=np.uint8))


def square_mask(width: int, height: int, box: tuple[int, int, int, int], value: int = 255) -> Image.Image:
    array = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    array[y1:y2, x1:x2] = value
    return Image.fromarray(array)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def whole_picture(mask: Image.Image, source: Image.Image | None = None, **changes: object) -> PixelStage:
    """The stage of a 64×64 picture with `mask` in whole-picture mode, without blur, plus `changes`."""
    arguments: dict[str, object] = {
        "width": 64,
        "height": 64,
        "mask": mask,
        "inpaint_full_res": False,
        "mask_blur_x": 0,
        "mask_blur_y": 0,
    }
    arguments.update(changes)
    return prepare_pixels([source or picture(64, 64)], **arguments)  # type: ignore[arg-type]


def assert_unmasked(stage: PixelStage) -> None:
    """The stage carries nothing a mask would have made: no masks, overlays, crop or paste-back."""
    assert stage.image_mask is None
    assert stage.overlay_images == ()
    assert stage.latent_mask is None
    assert stage.conditioning_mask is None
    assert stage.paste_to is None
    assert stage.crop_region is None


def as_uint8(chw: np.ndarray) -> np.ndarray:
    return np.rint(np.moveaxis(chw, 0, 2) * 255).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Whole picture (semantics §2.3)


def test_no_mask_whole_picture_is_a_plain_resize() -> None:
    source = picture(100, 50)
    stage = prepare_pixels([source], width=64, height=32, resize_mode=0)
    assert stage.images.shape == (1, 3, 32, 64)
    assert stage.images.dtype == np.float32
    assert stage.images.min() >= 0.0
    assert stage.images.max() <= 1.0
    assert (as_uint8(stage.images[0]) == pixels(source.resize((64, 32), Image.Resampling.LANCZOS))).all()
    assert_unmasked(stage)
    assert dict(stage.extra_generation_params) == {}
    assert stage.comments == ()
    assert stage.warnings == ()


@pytest.mark.parametrize("mode", [1, 2])
def test_whole_picture_resizes_picture_and_mask_with_the_resize_mode(mode: int) -> None:
    source = picture(150, 100)
    mask = square_mask(150, 100, (60, 40, 90, 60))
    stage = prepare_pixels(
        [source], width=64, height=32, resize_mode=mode, mask=mask, inpaint_full_res=False, inpainting_fill=1
    )
    expected = resize_image(mode, source, 64, 32)
    assert (as_uint8(stage.images[0]) == pixels(expected)).all()
    assert stage.image_mask is not None
    assert stage.image_mask.mode == "RGB"
    assert (pixels(stage.image_mask) == pixels(resize_image(mode, blur_mask(mask, 4, 4), 64, 32))).all()


def test_whole_picture_overlay_uses_twice_the_mask() -> None:
    source = picture(64, 64)
    mask = square_mask(64, 64, (20, 20, 44, 44))
    stage = prepare_pixels([source], width=64, height=64, mask=mask, inpaint_full_res=False)
    assert stage.image_mask is not None
    assert stage.mask_for_overlay is not None
    image_mask = pixels(stage.image_mask)
    assert (pixels(stage.mask_for_overlay) == np.minimum(2 * image_mask, 255)).all()
    alpha = pixels(stage.overlay_images[0])[..., 3]
    assert (alpha == 255 - np.minimum(2 * image_mask, 255)).all()
    assert (alpha[image_mask >= 128] == 0).all()  # fully generated from the middle of the ramp on


def test_whole_picture_same_size_paste_back_keeps_every_unmasked_pixel() -> None:
    source = picture(64, 64, seed=4)
    mask = square_mask(64, 64, (20, 24, 40, 44))
    stage = prepare_pixels([source], width=64, height=64, resize_mode=0, mask=mask, inpaint_full_res=False)
    result = apply_overlay(Image.new("RGB", (64, 64), GREEN), stage.paste_to, stage.overlay_images[0])
    out = pixels(result.image)
    assert stage.mask_for_overlay is not None
    untouched = pixels(stage.mask_for_overlay) == 0
    # everything farther than the blur radius (10 px for sigma 4) from the mask is outside the overlay's ramp
    far = np.ones((64, 64), bool)
    far[24 - 10 : 44 + 10, 20 - 10 : 40 + 10] = False
    assert (untouched | ~far).all()
    assert untouched.sum() > 1000
    assert (out[untouched] == pixels(source)[untouched]).all()
    assert (out[pixels(stage.mask_for_overlay) == 255] == GREEN).all()
    # the picture fed to the VAE also kept those pixels (fill touches only the masked area)
    assert (
        as_uint8(stage.images[0])[np.asarray(stage.image_mask) == 0]
        == pixels(source)[np.asarray(stage.image_mask) == 0]
    ).all()


def test_fill_0_fills_masked_pixels_and_1_keeps_them() -> None:
    source = picture(64, 64)
    mask = square_mask(64, 64, (16, 16, 48, 48))
    filled, original = (whole_picture(mask, source, inpainting_fill=fill) for fill in (0, 1))
    assert (as_uint8(original.images[0]) == pixels(source)).all()
    inside = as_uint8(filled.images[0])[16:48, 16:48]
    assert not (inside == pixels(source)[16:48, 16:48]).all()
    # a smooth blend of the surroundings: far less variance than the noisy source
    assert inside.std() < pixels(source)[16:48, 16:48].std() / 2
    assert filled.extra_generation_params["Masked content"] == "fill"
    assert "Masked content" not in original.extra_generation_params


@pytest.mark.parametrize(("fill_mode", "label"), [(2, "latent noise"), (3, "latent nothing")])
def test_latent_fills_also_run_the_pixel_fill(fill_mode: int, label: str) -> None:
    source = picture(64, 64)
    mask = square_mask(64, 64, (16, 16, 48, 48))
    stage = prepare_pixels([source], width=64, height=64, mask=mask, inpaint_full_res=False, inpainting_fill=fill_mode)
    zero = prepare_pixels([source], width=64, height=64, mask=mask, inpaint_full_res=False, inpainting_fill=0)
    assert (stage.images == zero.images).all()
    assert stage.extra_generation_params["Masked content"] == label


# ---------------------------------------------------------------------------------------------------------------
# Only masked (semantics §2.2)


def only_masked(**kwargs: object) -> PixelStage:
    arguments: dict[str, object] = {
        "width": 64,
        "height": 32,
        "mask": square_mask(150, 100, (60, 40, 90, 60)),
        "mask_blur_x": 0,
        "mask_blur_y": 0,
        "inpaint_full_res_padding": 8,
    }
    arguments.update(kwargs)
    return prepare_pixels([picture(150, 100)], **arguments)  # type: ignore[arg-type]


def test_only_masked_crop_box_and_paste_to() -> None:
    stage = only_masked()
    # bbox (60, 40, 90, 60) + 8 → (52, 32, 98, 68): 46×36, too tall for 2:1 → width 72, 13 px each side
    assert stage.crop_region == (39, 32, 111, 68)
    assert stage.paste_to == (39, 32, 72, 36)
    assert stage.inpaint_full_res is True
    assert stage.images.shape == (1, 3, 32, 64)
    assert stage.mask_for_overlay is not None
    assert stage.mask_for_overlay.size == (150, 100)
    assert stage.image_mask is not None
    assert stage.image_mask.size == (64, 32)
    assert stage.image_mask.mode == "RGB"
    assert stage.overlay_images[0].size == (150, 100)


def test_only_masked_without_padding_uses_the_raw_bbox() -> None:
    stage = only_masked(inpaint_full_res_padding=0)
    # (60, 40, 90, 60): 30×20, too tall for 2:1 → width 40, 5 px each side
    assert stage.crop_region == (55, 40, 95, 60)


def test_only_masked_crop_is_clamped_at_the_picture_edge() -> None:
    stage = only_masked(mask=square_mask(150, 100, (0, 0, 10, 10)))
    # (0, 0, 18, 18) → width 36 wanted: −9..27 shifted to 0..36
    assert stage.crop_region == (0, 0, 36, 18)


def test_only_masked_picture_is_the_crop_resized_with_fill() -> None:
    source = picture(150, 100)
    stage = only_masked(inpainting_fill=1)
    expected = resize_image(2, source.crop((39, 32, 111, 68)), 64, 32)
    assert (as_uint8(stage.images[0]) == pixels(expected)).all()


def test_only_masked_blur_widens_the_crop() -> None:
    sharp = only_masked(inpaint_full_res_padding=0)
    blurred = only_masked(inpaint_full_res_padding=0, mask_blur_x=4, mask_blur_y=4)
    assert sharp.crop_region is not None
    assert blurred.crop_region is not None
    assert blurred.crop_region[0] < sharp.crop_region[0]
    assert blurred.crop_region[2] > sharp.crop_region[2]


def test_only_masked_paste_back_keeps_every_pixel_outside_the_mask() -> None:
    source = picture(150, 100, seed=2)
    stage = prepare_pixels(
        [source], width=64, height=32, mask=square_mask(150, 100, (60, 40, 90, 60)), inpaint_full_res_padding=16
    )
    result = apply_overlay(Image.new("RGB", (64, 32), GREEN), stage.paste_to, stage.overlay_images[0])
    out = pixels(result.image)
    assert out.shape == (100, 150, 3)
    assert stage.mask_for_overlay is not None
    outside = pixels(stage.mask_for_overlay) == 0
    assert outside.sum() > 150 * 100 - 60 * 50
    assert (out[outside] == pixels(source)[outside]).all()
    assert (out[pixels(stage.mask_for_overlay) == 255] == GREEN).all()
    assert result.original_denoised_image.size == (150, 100)


def test_only_masked_infotext() -> None:
    stage = only_masked(inpaint_full_res_padding=32, mask_blur_x=4, mask_blur_y=4, inpainting_mask_invert=False)
    assert list(stage.extra_generation_params.items()) == [
        ("Mask blur", 4),
        ("Inpaint area", "Only masked"),
        ("Masked area padding", 32),
        ("Masked content", "fill"),
    ]


def test_infotext_order_with_every_key() -> None:
    stage = prepare_pixels(
        [picture(64, 64)],
        width=64,
        height=64,
        mask=square_mask(64, 64, (0, 0, 64, 32)),
        inpainting_mask_invert=True,
        inpaint_full_res_padding=4,
    )
    assert list(stage.extra_generation_params) == [
        "Mask blur",
        "Mask mode",
        "Inpaint area",
        "Masked area padding",
        "Masked content",
    ]
    assert stage.extra_generation_params["Mask mode"] == "Inpaint not masked"


def test_forbid_too_small_crop_region_grows_the_box() -> None:
    stage = only_masked(inpaint_full_res_padding=0, forbid_too_small_crop_region=True)
    # (55, 40, 95, 60) is 40×20, smaller than 64×32: → (43, 34, 107, 66)
    assert stage.crop_region == (43, 34, 107, 66)


# ---------------------------------------------------------------------------------------------------------------
# Blank mask (semantics §2.2 step 8, §7.1)


def test_fix_blank_mask_fallback_reports_comment_and_warning() -> None:
    """Fix §7.1: the reference's fallback to whole-picture img2img, plus a structured warning."""
    source = picture(100, 50)
    stage = prepare_pixels([source], width=64, height=32, mask=Image.new("L", (100, 50)), inpaint_full_res=True)
    assert stage.comments == (BLANK_MASK_COMMENT,)
    assert BLANK_MASK_COMMENT == 'Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.'
    assert [warning.code for warning in stage.warnings] == [BLANK_MASK_WARNING_CODE] == ["blank_mask_fallback"]
    assert stage.warnings[0].message
    assert stage.inpaint_full_res is False
    assert_unmasked(stage)
    assert stage.mask_for_overlay is None
    assert dict(stage.extra_generation_params) == {"Mask blur": 4}
    assert (as_uint8(stage.images[0]) == pixels(source.resize((64, 32), Image.Resampling.LANCZOS))).all()


def test_blank_mask_in_whole_picture_mode_is_not_a_fallback() -> None:
    stage = prepare_pixels(
        [picture(64, 64)], width=64, height=64, mask=Image.new("L", (64, 64)), inpaint_full_res=False
    )
    assert stage.comments == ()
    assert stage.warnings == ()
    assert stage.latent_mask is not None
    assert (stage.latent_mask == 0).all()


def test_inverted_full_mask_is_blank() -> None:
    stage = prepare_pixels(
        [picture(64, 64)], width=64, height=64, mask=Image.new("L", (64, 64), 255), inpainting_mask_invert=True
    )
    assert [warning.code for warning in stage.warnings] == [BLANK_MASK_WARNING_CODE]
    assert stage.extra_generation_params["Mask mode"] == "Inpaint not masked"


# ---------------------------------------------------------------------------------------------------------------
# Mask preprocessing through the stage (semantics §2.1)


def test_invert_flips_the_mask() -> None:
    mask = square_mask(64, 64, (8, 8, 24, 24))
    stage = whole_picture(mask, inpainting_mask_invert=True)
    assert stage.image_mask is not None
    assert (pixels(stage.image_mask) == 255 - pixels(mask)).all()


@pytest.mark.parametrize(
    ("blur_x", "blur_y", "expected"), [(4, 4, 4), (4, 8, None), (0, 6, None), (0, 0, None), (8, 8, 8)]
)
def test_uneven_blur_drops_mask_blur_from_the_infotext(blur_x: float, blur_y: float, expected: object) -> None:
    stage = whole_picture(square_mask(64, 64, (8, 8, 24, 24)), mask_blur_x=blur_x, mask_blur_y=blur_y)
    assert stage.extra_generation_params.get("Mask blur") == expected


def test_rgba_mask_alpha_is_thresholded_by_mask_round() -> None:
    alpha = np.zeros((64, 64), np.uint8)
    alpha[16:48, 16:48] = 129
    alpha[16:48, 16:20] = 128
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = alpha
    mask = Image.frombytes("RGBA", (64, 64), rgba.tobytes())
    rounded = whole_picture(mask)
    raw = whole_picture(mask, mask_round=False)
    assert rounded.image_mask is not None
    assert raw.image_mask is not None
    expected = np.where(alpha > 128, 255, 0)
    assert (pixels(rounded.image_mask) == expected).all()
    assert (pixels(raw.image_mask) == alpha).all()


def test_grey_mask_stays_grey() -> None:
    stage = whole_picture(Image.new("L", (64, 64), 100))
    assert stage.image_mask is not None
    assert (pixels(stage.image_mask) == 100).all()


# ---------------------------------------------------------------------------------------------------------------
# Latent mask and conditioning mask (semantics §2.7, §2.8, §7.6)


def rounded_and_soft(mask: Image.Image) -> tuple[PixelStage, PixelStage]:
    """The whole-picture stages of a 64×48 picture with `mask`, with mask_round on and off."""
    rounded, soft = (
        prepare_pixels([picture(64, 48)], width=64, height=48, mask=mask, inpaint_full_res=False, mask_round=r)
        for r in (True, False)
    )
    return rounded, soft


def test_latent_mask_is_at_latent_size_and_rounded() -> None:
    rounded, soft = rounded_and_soft(square_mask(64, 48, (16, 16, 40, 32)))
    assert rounded.latent_mask is not None
    assert soft.latent_mask is not None
    assert rounded.latent_mask.shape == (6, 8)
    assert rounded.latent_mask.dtype == np.float32
    assert set(np.unique(rounded.latent_mask)) <= {0.0, 1.0}
    assert ((soft.latent_mask > 0) & (soft.latent_mask < 1)).any()
    assert (rounded.latent_mask == np.around(soft.latent_mask)).all()


def test_conditioning_mask_is_the_processed_mask() -> None:
    stage, soft = rounded_and_soft(square_mask(64, 48, (16, 16, 40, 32)))
    assert stage.conditioning_mask is not None
    assert soft.conditioning_mask is not None
    assert stage.conditioning_mask.shape == (48, 64)
    assert set(np.unique(stage.conditioning_mask)) == {0.0, 1.0}
    assert stage.image_mask is not None
    assert np.allclose(soft.conditioning_mask, pixels(stage.image_mask) / 255)


def test_fix_latent_mask_image_drives_fill_and_latent_mask() -> None:
    """Fix §7.6: a latent_mask image (processing size) replaces image_mask for the fill and the latent mask."""
    source = picture(64, 64)
    mask = square_mask(64, 64, (0, 0, 32, 64))
    latent_mask = square_mask(64, 64, (32, 0, 64, 64))
    stage = whole_picture(mask, source, latent_mask=latent_mask)
    assert stage.latent_mask is not None
    assert (stage.latent_mask[:, :4] == 0).all()
    assert (stage.latent_mask[:, 4:] == 1).all()
    out = as_uint8(stage.images[0])
    assert (out[:, :32] == pixels(source)[:, :32]).all()  # the fill followed the latent mask
    assert stage.conditioning_mask is not None
    assert (stage.conditioning_mask[:, :32] == 1).all()


def test_fix_latent_mask_of_the_wrong_size_is_refused() -> None:
    """Fix §7.6: the latent_mask is in processing coordinates; another size is an input error naming the field."""
    with pytest.raises(InputError) as caught:
        prepare_pixels(
            [picture(64, 64)],
            width=64,
            height=64,
            mask=square_mask(64, 64, (0, 0, 8, 8)),
            latent_mask=Image.new("L", (32, 32)),
        )
    assert caught.value.field == "latent_mask"


# ---------------------------------------------------------------------------------------------------------------
# Resize mode 3 (semantics §2.4 c, §2.6, §6, §7.2)


def test_mode_3_without_mask_keeps_the_picture_size() -> None:
    source = picture(150, 100)
    stage = prepare_pixels([source], width=64, height=48, resize_mode=3, batch_size=2)
    assert stage.images.shape == (2, 3, 100, 150)
    assert stage.resize_mode_3_latent_upscale == (150, 100)
    assert (as_uint8(stage.images[1]) == pixels(source)).all()


def test_fix_mode_3_with_mask_follows_the_image_geometry() -> None:
    """Fix §7.2: mask resized with mode 0 to W×H, overlay built at W×H, fill at W×H; the picture keeps its size."""
    source = picture(150, 100, seed=7)
    mask = square_mask(150, 100, (60, 40, 90, 60))
    stage = prepare_pixels([source], width=64, height=48, resize_mode=3, mask=mask, inpaint_full_res=False)
    assert stage.images.shape == (1, 3, 100, 150)
    assert stage.resize_mode_3_latent_upscale == (150, 100)
    assert stage.image_mask is not None
    assert stage.image_mask.mode == "L"
    assert stage.image_mask.size == (64, 48)
    assert (pixels(stage.image_mask) == pixels(resize_image(0, blur_mask(mask, 4, 4), 64, 48))).all()
    assert stage.overlay_images[0].size == (64, 48)
    assert stage.latent_mask is not None
    assert stage.latent_mask.shape == (6, 8)
    # the paste-back works at W×H and keeps the stretched picture where the mask is 0
    result = apply_overlay(Image.new("RGB", (64, 48), GREEN), stage.paste_to, stage.overlay_images[0])
    assert stage.mask_for_overlay is not None
    outside = pixels(stage.mask_for_overlay) == 0
    stretched = pixels(source.resize((64, 48), Image.Resampling.LANCZOS))
    assert (pixels(result.image)[outside] == stretched[outside]).all()
    # the fill changed the masked area of the picture that the VAE will see, and nothing far from it
    encoded = as_uint8(stage.images[0])
    assert np.abs(encoded[45:55, 70:80] - pixels(source)[45:55, 70:80]).mean() > 20
    assert (encoded[:20] == pixels(source)[:20]).all()  # pasted back through the mask: unmasked rows exact


def test_fix_mode_3_with_mask_and_original_content_keeps_the_picture() -> None:
    """Fix §7.2 with inpainting_fill 1: no fill, the picture is encoded untouched at its own size."""
    source = picture(150, 100)
    stage = prepare_pixels(
        [source],
        width=64,
        height=48,
        resize_mode=3,
        mask=square_mask(150, 100, (60, 40, 90, 60)),
        inpaint_full_res=False,
        inpainting_fill=1,
    )
    assert (as_uint8(stage.images[0]) == pixels(source)).all()
    assert stage.overlay_images[0].size == (64, 48)


def test_mode_3_with_mask_without_the_fix_fails_like_the_reference() -> None:
    """semantics §6: the reference's fill raises "images do not match"; with fill 1 the overlay has the wrong size."""
    common = {
        "width": 64,
        "height": 48,
        "resize_mode": 3,
        "mask": square_mask(150, 100, (60, 40, 90, 60)),
        "inpaint_full_res": False,
        "fix_latent_upscale_mask": False,
    }
    with pytest.raises(ValueError, match="images do not match"):
        prepare_pixels([picture(150, 100)], **common)  # type: ignore[arg-type]
    stage = prepare_pixels([picture(150, 100)], inpainting_fill=1, **common)  # type: ignore[arg-type]
    assert stage.image_mask is not None
    assert stage.image_mask.mode == "RGB"
    assert stage.overlay_images[0].size == (150, 100)
    with pytest.raises(ValueError, match="does not match"):
        apply_overlay(Image.new("RGB", (64, 48)), stage.paste_to, stage.overlay_images[0])


def test_mode_3_only_masked_is_processed_at_w_h() -> None:
    stage = prepare_pixels(
        [picture(150, 100)],
        width=64,
        height=32,
        resize_mode=3,
        mask=square_mask(150, 100, (60, 40, 90, 60)),
        inpaint_full_res_padding=8,
        mask_blur_x=0,
        mask_blur_y=0,
    )
    assert stage.images.shape == (1, 3, 32, 64)
    assert stage.resize_mode_3_latent_upscale is None
    assert stage.crop_region == (39, 32, 111, 68)


# ---------------------------------------------------------------------------------------------------------------
# Resize mode 2 with an odd size (semantics §2.5, §7.3)


def test_fix_odd_bands_no_black_column_in_the_pixel_stage() -> None:
    """Fix §7.3: 131×64 from 128×64 in resize mode 2: the reference's last column is black, ours is not."""
    values = np.random.default_rng(0).integers(100, 200, (64, 128, 3), dtype=np.uint8)
    source = Image.fromarray(values)  # so that the edge extrapolation never clamps to 0
    fixed = prepare_pixels([source], width=131, height=64, resize_mode=2)
    reference = prepare_pixels([source], width=131, height=64, resize_mode=2, fix_odd_bands=False)
    assert (reference.images[0, :, :, 130] == 0).all()
    assert (fixed.images[0, :, :, 130] > 0).all()
    assert (fixed.images[0, :, :, :130] == reference.images[0, :, :, :130]).all()


# ---------------------------------------------------------------------------------------------------------------
# Init pictures and batching (semantics §2.4 b, §2.6)


def test_transparent_init_picture_is_flattened_on_the_background() -> None:
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    white = prepare_pixels([rgba], width=64, height=64)
    black = prepare_pixels([rgba], width=64, height=64, img2img_background_color="#000000")
    assert (white.images == 1.0).all()
    assert (black.images == 0.0).all()


def test_one_picture_is_repeated_for_the_batch() -> None:
    stage = prepare_pixels([picture(64, 64)], width=64, height=64, batch_size=3, mask=square_mask(64, 64, (0, 0, 8, 8)))
    assert stage.batch_size == 3
    assert stage.images.shape == (3, 3, 64, 64)
    assert (stage.images[0] == stage.images[2]).all()
    assert len(stage.overlay_images) == 3


def test_fewer_pictures_than_the_batch_size_shrink_the_batch() -> None:
    pictures = [picture(64, 64, seed=1), picture(64, 64, seed=2)]
    stage = prepare_pixels(pictures, width=64, height=64, batch_size=4, mask=square_mask(64, 64, (0, 0, 8, 8)))
    assert stage.batch_size == 2
    assert stage.images.shape == (2, 3, 64, 64)
    assert not (stage.images[0] == stage.images[1]).all()
    assert len(stage.overlay_images) == 2


def test_more_pictures_than_the_batch_size_is_an_error() -> None:
    with pytest.raises(InputError, match="bad number of images passed") as caught:
        prepare_pixels([picture(64, 64)] * 3, width=64, height=64, batch_size=2)
    assert caught.value.field == "init_images"
    assert caught.value.code == "bad_image_count"


def test_no_picture_is_an_error() -> None:
    with pytest.raises(InputError) as caught:
        prepare_pixels([], width=64, height=64)
    assert caught.value.field == "init_images"


def test_mode_3_pictures_of_different_sizes_are_refused() -> None:
    with pytest.raises(InputError) as caught:
        prepare_pixels([picture(64, 64), picture(80, 64)], width=64, height=64, batch_size=2, resize_mode=3)
    assert caught.value.code == "size_mismatch"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 4),
        ("height", 0),
        ("batch_size", 0),
        ("resize_mode", 4),
        ("inpainting_fill", 5),
        ("inpaint_full_res_padding", -1),
        ("mask_blur_x", -1),
        ("mask_blur_y", -0.5),
    ],
)
def test_out_of_range_fields_are_named(field: str, value: float) -> None:
    arguments: dict[str, object] = {"width": 64, "height": 64}
    arguments[field] = value
    with pytest.raises(InputError) as caught:
        prepare_pixels([picture(64, 64)], **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_colour_correction_targets_per_slot() -> None:
    stage = prepare_pixels([picture(64, 64)], width=32, height=32, batch_size=2, img2img_color_correction=True)
    assert stage.color_corrections is not None
    assert len(stage.color_corrections) == 2
    assert stage.color_corrections[0].shape == (32, 32, 3)
    assert stage.color_corrections[0].dtype == np.uint8
    assert prepare_pixels([picture(64, 64)], width=32, height=32).color_corrections is None


def test_mask_and_picture_of_different_sizes_in_whole_picture_mode() -> None:
    """semantics §6: whole picture works; mask_for_overlay is at W×H like the resized picture."""
    stage = prepare_pixels(
        [picture(100, 100)], width=64, height=64, mask=square_mask(50, 50, (10, 10, 20, 20)), inpaint_full_res=False
    )
    assert stage.overlay_images[0].size == (64, 64)


def test_mask_and_picture_of_different_sizes_in_only_masked_mode() -> None:
    """semantics §6: the box is in mask coordinates; the overlay's mask is resized to the picture."""
    mask = square_mask(50, 50, (10, 10, 20, 20))  # half the picture's size
    stage = prepare_pixels([picture(100, 100)], width=64, height=64, mask=mask, mask_blur_x=0, mask_blur_y=0)
    assert stage.crop_region == (10, 10, 20, 20)
    assert stage.mask_for_overlay is not None
    assert stage.mask_for_overlay.size == (100, 100)
    assert stage.overlay_images[0].size == (100, 100)
