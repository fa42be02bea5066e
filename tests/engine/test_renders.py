"""Whole renders with the tiny models on the CPU: img2img, inpainting, inpainting and edit models, batches, seeds,
strength, samplers, step counts, overlays, infotexts, cooperative stops and job construction (semantics §1-§4, §7)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from shared.infotext import parse_infotext
from shared.job.spec import SpecLimits, parse_job
from shared.sampler_names import SAMPLERS
from worker.engine.models import LoadedModel
from worker.engine.noise import create_noise
from worker.engine.pixel_stage import BLANK_MASK_COMMENT, BLANK_MASK_WARNING_CODE
from worker.engine.processing import (
    Processed,
    Progress,
    StableDiffusionProcessingImg2Img,
    apply_color_correction,
    process_images,
)
from worker.engine.results import decode_latent

from .conftest import PROMPT, SEED, SIZE, STEPS, MakeJob, Render, make_mask, make_picture, pixels


@contextmanager
def unet_calls(model: LoadedModel) -> Iterator[list[int]]:
    """Record the batch size of every UNet forward call."""
    calls: list[int] = []
    handle = model.unet.register_forward_hook(lambda _m, args, _out: calls.append(int(args[0].shape[0])))
    try:
        yield calls
    finally:
        handle.remove()


def params(processed: Processed, index: int = 0) -> dict[str, str]:
    return parse_infotext(processed.infotexts[index])[2]


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and bool(np.array_equal(pixels(a), pixels(b)))


def mean_abs(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def decoded_init_latent(p: StableDiffusionProcessingImg2Img) -> Image.Image:
    from worker.engine.results import decode_latent  # the engine's own decode: same truncation to uint8

    assert p.init_latent is not None
    return decode_latent(p.model, p.init_latent[:1])


# ---------------------------------------------------------------------------------------------------------------
# img2img, infotext, seeds, batches


def test_img2img_renders_a_finite_picture_of_the_processing_size_with_the_reference_infotext(render: Render) -> None:
    p, processed = render(denoising_strength=0.6, cfg_scale=6.5, negative_prompt="blurry")
    assert len(processed.images) == 1
    image = processed.images[0]
    assert image.mode == "RGB"
    assert image.size == (SIZE, SIZE)
    assert processed.overlay_images == [None]
    assert processed.masks == [None]
    assert processed.seeds == [SEED]
    prompt, negative, values = parse_infotext(processed.infotexts[0])
    assert (prompt, negative) == (PROMPT, "blurry")
    assert values["Steps"] == str(STEPS)  # the requested steps, not t_enc + 1
    assert values["Sampler"] == "Euler"
    assert values["Schedule type"] == "Automatic"
    assert values["CFG scale"] == "6.5"
    assert values["Seed"] == str(SEED)
    assert values["Size"] == f"{SIZE}x{SIZE}"
    assert values["Model"] == "tiny"
    assert values["Denoising strength"] == "0.6"
    for absent in ("Image CFG scale", "Mask blur", "Inpaint area", "Masked content", "Noise multiplier", "Eta"):
        assert absent not in values
    keys = list(values)
    assert keys.index("Steps") < keys.index("Sampler") < keys.index("CFG scale") < keys.index("Seed")
    assert keys.index("Size") < keys.index("Model") < keys.index("Denoising strength")
    assert p.image_cfg_scale is None


def test_sampler_name_with_a_schedule_suffix_is_written_as_sampler_and_schedule(render: Render) -> None:
    _, processed = render(sampler_name="DPM++ 2M Karras", steps=4)
    values = params(processed)
    assert (values["Sampler"], values["Schedule type"]) == ("DPM++ 2M", "Karras")


def test_same_seed_gives_the_same_pixels_and_another_seed_other_pixels(render: Render) -> None:
    _, first = render()
    _, again = render()
    _, other = render(seed=SEED + 1)
    assert same(first.images[0], again.images[0])
    assert not same(first.images[0], other.images[0])


def test_batch_size_and_n_iter_give_one_image_per_seed_seed_plus_i(render: Render) -> None:
    p, processed = render(batch_size=2, n_iter=2, steps=4)
    assert len(processed.images) == 4
    assert processed.seeds == [SEED, SEED + 1, SEED + 2, SEED + 3]
    assert [params(processed, i)["Seed"] for i in range(4)] == [str(SEED + i) for i in range(4)]
    assert len({pixels(image).tobytes() for image in processed.images}) == 4  # every seed its own noise
    # Slot 0 of the batch is the single render with the same seed (the batch dimension only changes rounding).
    _, single = render(steps=4)
    assert mean_abs(processed.images[0], single.images[0]) < 0.5
    assert p.batch_size == 2


def test_several_init_images_each_keep_their_pixels_outside_the_mask_in_every_batch(render: Render) -> None:
    first, second = make_picture(seed=1), make_picture(seed=2).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mask = make_mask()
    p, processed = render(
        init_images=[first, second], batch_size=2, n_iter=2, mask=mask, inpaint_full_res=False, steps=4
    )
    assert len(processed.images) == 4
    assert p.mask_for_overlay is not None
    keep = np.asarray(p.mask_for_overlay) == 0
    for i, image in enumerate(processed.images):
        source = (first, second)[i % 2]  # overlay index = slot within the batch
        assert np.array_equal(pixels(image)[keep], pixels(source)[keep]), f"image {i}"
        assert processed.overlay_images[i] is p.overlay_images[i % 2]


# ---------------------------------------------------------------------------------------------------------------
# strength, steps, samplers


def test_strength_zero_runs_no_step_and_returns_the_decoded_init_latent(
    render: Render, tiny_model: LoadedModel
) -> None:
    # §7.4 (our fix): the reference would still run one step at the smallest sigma (#10522).
    with unet_calls(tiny_model) as calls:
        p, processed = render(denoising_strength=0.0)
    assert calls == []
    assert same(processed.images[0], decoded_init_latent(p))
    assert params(processed)["Denoising strength"] == "0"


def test_strength_one_starts_from_sigma_max_and_runs_every_step(render: Render, tiny_model: LoadedModel) -> None:
    with unet_calls(tiny_model) as calls:
        p, processed = render(denoising_strength=1.0, steps=5)
    assert p.plan is not None
    assert len(calls) == 5  # int(min(1, 0.999)·5) + 1
    assert p.plan.start_sigma == pytest.approx(float(p.plan.sigmas[0]))
    assert np.isfinite(pixels(processed.images[0])).all()
    _, weaker = render(denoising_strength=0.3, steps=5)
    assert mean_abs(processed.images[0], decoded_init_latent(p)) > mean_abs(weaker.images[0], decoded_init_latent(p))


@pytest.mark.parametrize("strength", [0.05, 0.3, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun", "DDIM"])
def test_the_number_of_steps_follows_the_reference_rule(
    render: Render, tiny_model: LoadedModel, sampler: str, strength: float
) -> None:
    steps = 10
    seen: list[Progress] = []
    with unet_calls(tiny_model) as calls:
        p, _ = render(sampler_name=sampler, denoising_strength=strength, steps=steps, progress_callback=seen.append)
    t_enc = int(min(strength, 0.999) * steps)
    sampling = [s for s in seen if s.job_no == 0]
    if sampler == "DDIM":
        # Timestep samplers: noise at timesteps[t_enc], t_enc − 1 model calls from timesteps[t_enc − 1] down.
        expected_steps = expected_calls = max(t_enc - 1, 0)
    elif sampler == "Heun":
        # t_enc + 1 steps, two model calls each except the last one onto sigma 0.
        expected_steps, expected_calls = t_enc + 1, 2 * (t_enc + 1) - 1
    else:
        expected_steps = expected_calls = t_enc + 1
    assert len(calls) == expected_calls
    assert all(batch == 2 for batch in calls)  # cond + uncond of one image
    assert [s.step for s in sampling] == list(range(expected_steps))
    assert all(s.total_steps == expected_steps for s in sampling)
    assert p.plan is not None
    assert p.plan.total_steps == expected_steps


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_every_sampler_renders_finite_pixels(render: Render, tiny_model: LoadedModel, sampler: str) -> None:
    with unet_calls(tiny_model) as calls:
        p, processed = render(sampler_name=sampler, steps=4, denoising_strength=0.8, mask=make_mask())
    assert p.plan is not None
    if p.plan.implementation == "run:dpm_adaptive":
        assert len(calls) % 3 == 0  # three calls per attempt; how many attempts depends on the model
    else:
        assert len(calls) == p.plan.model_calls
    image = processed.images[0]
    assert image.size == (SIZE, SIZE)
    assert params(processed)["Sampler"] == sampler
    latent = p.init_latent
    assert latent is not None
    assert torch.isfinite(latent).all()


def test_noise_multiplier_changes_the_output_and_is_written(render: Render) -> None:
    _, plain = render()
    _, damped = render(initial_noise_multiplier=0.5)
    assert "Noise multiplier" not in params(plain)
    assert params(damped)["Noise multiplier"] == "0.5"
    assert mean_abs(plain.images[0], damped.images[0]) > 0.5


def test_eta_is_resolved_from_the_options_applied_and_written(render: Render) -> None:
    p, processed = render(sampler_name="Euler a", eta=0.5, steps=3)
    assert p.resolved_eta() == 0.5
    assert params(processed)["Eta"] == "0.5"
    assert processed.warnings == []
    p_default, default = render(sampler_name="Euler a", steps=3)
    assert p_default.resolved_eta() == 1.0
    assert default.warnings == []
    assert "Eta" not in params(default)
    p_ddim, ddim = render(sampler_name="DDIM", steps=4)
    assert p_ddim.resolved_eta() == 0.0
    assert ddim.warnings == []
    p_euler, _ = render(eta=0.3, steps=3)
    assert p_euler.resolved_eta() is None  # Euler has no eta


# ---------------------------------------------------------------------------------------------------------------
# inpainting


@pytest.mark.parametrize("only_masked", [True, False], ids=["only-masked", "whole-picture"])
@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_inpainting_keeps_every_pixel_outside_the_mask(
    render: Render, picture: Image.Image, fill: int, only_masked: bool
) -> None:
    mask = make_mask()
    p, processed = render(
        mask=mask,
        inpainting_fill=fill,
        inpaint_full_res=only_masked,
        inpaint_full_res_padding=4,
        denoising_strength=0.9,
        steps=4,
    )
    image = processed.images[0]
    assert image.size == picture.size
    assert p.mask_for_overlay is not None
    keep = np.asarray(p.mask_for_overlay) == 0
    assert keep.any()
    assert not keep.all()
    assert np.array_equal(pixels(image)[keep], pixels(picture)[keep])
    changed = np.asarray(p.mask_for_overlay) == 255
    assert np.abs(pixels(image)[changed] - pixels(picture)[changed]).mean() > 1.0
    values = params(processed)
    assert values["Mask blur"] == "4"
    assert values.get("Masked content") == {0: "fill", 1: None, 2: "latent noise", 3: "latent nothing"}[fill]
    if only_masked:
        assert (values["Inpaint area"], values["Masked area padding"]) == ("Only masked", "4")
        assert p.paste_to is not None
    else:
        assert "Inpaint area" not in values
        assert "Masked area padding" not in values
    # The mask output is the overlay's mask in the overlay's geometry (the picture's size here).
    assert processed.masks[0] is not None
    assert processed.masks[0].size == picture.size
    assert np.array_equal(np.asarray(processed.masks[0]), np.asarray(p.mask_for_overlay))


def test_the_fill_modes_change_what_the_masked_area_starts_from(render: Render) -> None:
    runs = {fill: render(mask=make_mask(), inpainting_fill=fill, denoising_strength=0.5, steps=4) for fill in (1, 2, 3)}
    original = runs[1][0]
    assert original.nmask is not None
    assert original.init_latent is not None
    regenerate = original.nmask.bool()
    inside = np.asarray(original.mask_for_overlay) == 255
    noise = create_noise((4, SIZE // 8, SIZE // 8), [SEED]).noise
    # §2.7: "latent nothing" zeroes the masked latent, "latent noise" puts the first batch's initial noise there.
    latent_nothing, latent_noise = runs[3][0].init_latent, runs[2][0].init_latent
    assert latent_nothing is not None
    assert latent_noise is not None
    assert latent_nothing[regenerate].abs().max() == 0
    assert torch.equal(latent_noise[regenerate], noise[regenerate])
    for fill in (2, 3):
        assert np.abs(pixels(runs[fill][1].images[0]) - pixels(runs[1][1].images[0]))[inside].mean() > 1.0


def test_whole_picture_mask_for_overlay_is_the_doubled_processed_mask(render: Render) -> None:
    p, processed = render(mask=make_mask(), inpaint_full_res=False, steps=3)
    assert p.image_mask is not None
    assert p.mask_for_overlay is not None
    doubled = np.minimum(np.asarray(p.image_mask.convert("L"), dtype=np.int32) * 2, 255)
    assert np.array_equal(np.asarray(p.mask_for_overlay), doubled)
    assert np.array_equal(np.asarray(processed.masks[0]), doubled)


def test_latent_mask_decides_what_is_regenerated(make_job: MakeJob) -> None:
    everything = Image.new("L", (SIZE, SIZE), 255)
    left_half = make_mask((0, 0, SIZE // 2, SIZE))
    common: dict[str, Any] = {"mask": everything, "inpaint_full_res": False, "inpainting_fill": 1, "steps": 4}
    finals: dict[str, torch.Tensor] = {}
    outputs: dict[str, Image.Image] = {}
    jobs: dict[str, StableDiffusionProcessingImg2Img] = {}
    for name, extra in (("mask only", {}), ("latent mask", {"latent_mask": left_half})):
        p = make_job(**common, **extra)
        sample = p.sample

        def capture(*args: Any, _sample: Any = sample, _name: str = name) -> torch.Tensor:
            finals[_name] = _sample(*args)
            return finals[_name]

        p.sample = capture  # type: ignore[method-assign,assignment]
        outputs[name] = process_images(p).images[0]
        jobs[name] = p
    p = jobs["latent mask"]
    assert p.nmask is not None
    assert p.init_latent is not None
    half = SIZE // 16
    assert p.nmask[0, 0, :, :half].min() == 1
    assert p.nmask[0, 0, :, half:].max() == 0
    # The right half of the latent is kept exactly (per-step x0 blend and final blend); the left half is new.
    assert torch.equal(finals["latent mask"][..., half:], p.init_latent[..., half:])
    assert (finals["latent mask"][..., :half] - p.init_latent[..., :half]).abs().mean() > 0.05
    # Without the latent mask the image mask (everything) is the latent mask: the right half is regenerated too.
    free = jobs["mask only"].init_latent
    assert free is not None
    assert (finals["mask only"][..., half:] - free[..., half:]).abs().mean() > 0.05
    assert not same(outputs["mask only"], outputs["latent mask"])


def test_a_blank_mask_with_only_masked_falls_back_to_img2img_with_a_warning(render: Render) -> None:
    p, processed = render(mask=Image.new("L", (SIZE, SIZE), 0), inpaint_full_res=True, steps=3)
    assert [w.code for w in processed.warnings] == [BLANK_MASK_WARNING_CODE]
    assert processed.comments == [BLANK_MASK_COMMENT]
    assert processed.overlay_images == [None]
    assert processed.masks == [None]
    assert p.nmask is None
    assert p.paste_to is None
    values = params(processed)
    assert "Inpaint area" not in values
    assert values["Mask blur"] == "4"


def test_inpainting_model_gets_the_mask_and_masked_image_conditioning(
    render: Render, tiny_inpaint_model: LoadedModel, picture: Image.Image
) -> None:
    fields: dict[str, Any] = {
        "sd_model": tiny_inpaint_model,
        "mask": make_mask(),
        "inpaint_full_res": False,
        "steps": 4,
    }
    with unet_calls(tiny_inpaint_model) as calls:
        p, processed = render(**fields)
    assert p.image_conditioning is not None
    assert tuple(p.image_conditioning.shape) == (1, 5, SIZE // 8, SIZE // 8)
    cmask = p.image_conditioning[0, 0]
    assert set(cmask.unique().tolist()) == {0.0, 1.0}
    assert len(calls) == p.plan.model_calls if p.plan else False
    assert params(processed)["Conditional mask weight"] == "1"
    keep = np.asarray(p.mask_for_overlay) == 0
    assert np.array_equal(pixels(processed.images[0])[keep], pixels(picture)[keep])
    _, again = render(**fields)  # every random draw of init() is seeded: same seed, same pixels
    assert same(processed.images[0], again.images[0])


@pytest.mark.parametrize("with_mask", [True, False])
def test_resize_mode_3_works_with_an_inpainting_model(
    render: Render, tiny_inpaint_model: LoadedModel, with_mask: bool
) -> None:
    # §7.2: the mask and the overlay follow the stretched geometry; the reference fails both ways (§6).
    big = make_picture(96, 80, seed=3)
    mask = make_mask((30, 20, 70, 60), size=(96, 80)) if with_mask else None
    p, processed = render(
        sd_model=tiny_inpaint_model, init_images=[big], resize_mode=3, mask=mask, inpaint_full_res=False, steps=3
    )
    assert processed.images[0].size == (SIZE, SIZE)
    assert p.init_latent is not None
    assert tuple(p.init_latent.shape) == (1, 4, SIZE // 8, SIZE // 8)
    assert p.image_conditioning is not None
    assert tuple(p.image_conditioning.shape) == (1, 5, SIZE // 8, SIZE // 8)
    if with_mask:
        stretched = pixels(big.resize((SIZE, SIZE), Image.Resampling.LANCZOS))
        keep = np.asarray(p.mask_for_overlay) == 0
        assert np.array_equal(pixels(processed.images[0])[keep], stretched[keep])


def test_edit_model_with_an_image_cfg_scale_takes_the_three_pass_path(
    render: Render, tiny_edit_model: LoadedModel
) -> None:
    with unet_calls(tiny_edit_model) as three:
        p, processed = render(sd_model=tiny_edit_model, image_cfg_scale=1.5, steps=4)
    with unet_calls(tiny_edit_model) as two:
        _, plain = render(sd_model=tiny_edit_model, image_cfg_scale=1.0, steps=4)
    assert p.image_conditioning is not None
    assert p.image_conditioning.shape[1] == 4
    assert len(three) == len(two) == 4
    assert set(three) == {3}
    assert set(two) == {2}
    assert not same(processed.images[0], plain.images[0])
    assert params(processed)["Image CFG scale"] == "1.5"


# ---------------------------------------------------------------------------------------------------------------
# progress, stops, options


def test_interrupt_at_step_2_stops_early_and_runs_no_further_batch(make_job: MakeJob) -> None:
    seen: list[int] = []
    p = make_job(steps=10, denoising_strength=1.0, n_iter=2)

    def callback(progress: Progress) -> None:
        seen.append(progress.step)
        if progress.step == 2:
            p.interrupt()

    p.progress_callback = callback
    processed = process_images(p)
    assert processed.interrupted
    assert seen == [0, 1, 2]  # stopped at the next step; no final "done" report either
    assert len(processed.images) == 1  # the current batch is decoded from its last x0 prediction
    assert processed.seeds == [SEED]
    assert np.isfinite(pixels(processed.images[0])).all()


def test_a_callback_that_raises_aborts_the_render(render: Render) -> None:
    class Canceled(Exception):
        pass

    def callback(progress: Progress) -> None:
        if progress.step == 1:
            raise Canceled

    with pytest.raises(Canceled):
        render(steps=6, progress_callback=callback)


def test_progress_fraction_counts_batches_and_steps(render: Render) -> None:
    seen: list[Progress] = []
    render(steps=4, denoising_strength=1.0, n_iter=2, progress_callback=seen.append)
    fractions = [s.fraction for s in seen]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert {s.job_count for s in seen} == {2}
    assert [s.job_no for s in seen].count(0) == 4


def test_color_correction_and_mask_outputs_follow_the_options(render: Render) -> None:
    from worker.engine.options import Options

    options = Options(img2img_color_correction=True, return_mask=True, return_mask_composite=True)
    p, processed = render(options=options, mask=make_mask(), inpaint_full_res=False, steps=3)
    assert p.color_corrections is not None
    assert len(p.color_corrections) == 1
    assert [image.mode for image in processed.extra_images] == ["RGB", "RGBA"]
    composite = np.asarray(processed.extra_images[1])
    assert composite[0, 0, 3] == 0
    assert composite[32, 32, 3] == 255
    # The correction moves the output's colour histogram toward the init picture's.
    target = p.color_corrections[0]
    grey = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    corrected = apply_color_correction(target, Image.fromarray(np.asarray(processed.images[0])))
    assert corrected.size == (SIZE, SIZE)
    assert apply_color_correction(target, grey).size == (SIZE, SIZE)


def test_mask_blur_constructor_and_property_semantics(tiny_model: LoadedModel) -> None:
    def job(**fields: Any) -> StableDiffusionProcessingImg2Img:
        return StableDiffusionProcessingImg2Img(sd_model=tiny_model, **fields)

    assert (job().mask_blur_x, job().mask_blur_y) == (4, 4)
    assert (job(mask_blur=8).mask_blur_x, job(mask_blur=8).mask_blur_y) == (8, 8)
    assert job(mask_blur=8, mask_blur_x=2).mask_blur_x == 8  # an int mask_blur overrides the axes
    assert job(mask_blur=2.5).mask_blur_x == 4  # a float does nothing
    assert job(mask_blur=None, mask_blur_x=3).mask_blur_x == 3
    assert job(mask_blur=True).mask_blur_y == 1  # True counts as the int 1, as in the reference
    p = job(mask_blur_x=2, mask_blur_y=6)
    assert p.mask_blur is None  # type: ignore[attr-defined]
    p.mask_blur = 5  # type: ignore[attr-defined]
    assert (p.mask_blur_x, p.mask_blur_y, p.mask_blur) == (5, 5, 5)  # type: ignore[attr-defined]
    p.mask_blur = 7.0  # type: ignore[attr-defined]
    p.mask_blur = None  # type: ignore[attr-defined]
    assert (p.mask_blur_x, p.mask_blur_y) == (5, 5)


def test_uneven_mask_blur_is_left_out_of_the_infotext(render: Render) -> None:
    _, processed = render(mask=make_mask(), mask_blur_x=2, mask_blur_y=6, inpaint_full_res=False, steps=3)
    assert "Mask blur" not in params(processed)


def test_a_job_from_the_spec_renders(tiny_model: LoadedModel, picture: Image.Image) -> None:
    job = parse_job(
        {
            "init_images": ["asset:" + "ab" * 32],
            "mask": "asset:" + "cd" * 32,
            "prompt": PROMPT,
            "negative_prompt": "ugly",
            "sampler_name": "DPM++ 2M Karras",
            "steps": 4,
            "width": SIZE,
            "height": SIZE,
            "seed": SEED,
            "batch_size": 2,
            "mask_blur": 2,
            "inpaint_full_res": False,
            "inpainting_fill": 1,
            "denoising_strength": 0.7,
            "override_settings": {"img2img_fix_steps": True},
        },
        SpecLimits(),
    )
    p = StableDiffusionProcessingImg2Img.from_job(job, sd_model=tiny_model, init_images=[picture], mask=make_mask())
    assert (p.sampler_name, p.scheduler, p.mask_blur_x, p.mask_blur_y) == ("DPM++ 2M", "Karras", 2, 2)
    assert p.options.img2img_fix_steps
    processed = process_images(p)
    assert len(processed.images) == 2
    assert processed.seeds == [SEED, SEED + 1]
    values = params(processed)
    assert (values["Sampler"], values["Schedule type"], values["Mask blur"]) == ("DPM++ 2M", "Karras", "2")
    assert p.plan is not None
    assert p.plan.total_steps == 4


def test_step_info_preview_reaches_the_progress_callback(render: Render) -> None:
    previews: list[torch.Tensor | None] = []
    render(steps=3, denoising_strength=1.0, progress_callback=lambda s: previews.append(s.preview_latent))
    assert previews[0] is not None
    assert tuple(previews[0].shape) == (1, 4, SIZE // 8, SIZE // 8)
    assert previews[-1] is None  # the final "done" report


def test_previews_and_an_interrupted_result_are_the_prompt_x0(make_job: MakeJob, tiny_model: LoadedModel) -> None:
    """Proposal P17: the reference's default preview content ("Prompt") is the first prompt's own x0, without CFG;
    an interrupted run ends on it. At step 0 both runs below see the same x, so the cfg 7 run's prompt x0 equals the
    cfg 1 run's guided x0 (ε = u + 1·(c − u) = c); the CFG-combined x0 of the cfg 7 run would differ."""

    def previews(cfg_scale: float, stop_at: int | None) -> tuple[list[torch.Tensor], Processed]:
        p = make_job(steps=10, denoising_strength=1.0, cfg_scale=cfg_scale)
        seen: list[torch.Tensor] = []

        def callback(progress: Progress) -> None:
            if progress.preview_latent is not None:  # the last report ("done") carries none
                seen.append(progress.preview_latent.clone())
            if progress.step == stop_at:
                p.interrupt()

        p.progress_callback = callback
        return seen, process_images(p)

    guided, interrupted = previews(7.0, stop_at=2)
    unguided, _ = previews(1.0, stop_at=None)
    assert torch.allclose(guided[0], unguided[0], atol=1e-5)
    assert interrupted.interrupted
    expected = decode_latent(tiny_model, guided[-1])
    assert np.abs(pixels(interrupted.images[0]) - pixels(expected)).max() <= 1
