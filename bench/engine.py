"""Engine vs diffusers: the same model and job through diffusers' own pipelines and through
`StableDiffusionProcessingImg2Img` (`process_images`: init, sample, decode), with settings where both do the same
work (tests/engine/test_diffusers_parity.py explains each one):

- Euler with the reference's sigma list passed to diffusers' `EulerDiscreteScheduler` (`sigmas=`), and
  `strength = (t_enc + 1) / steps + 1e-6` so that diffusers runs the same t_enc + 1 steps from the same sigma;
- the same prompt, negative prompt "", guidance scale 7 (CFG batched in one UNet call on both sides);
- one generator per image seeded `seed + i` on the device ours draws its noise on;
- timed runs: both start from the same PIL picture (VAE encode, two text encodes, t_enc + 1 UNet calls, VAE decode,
  conversion to pictures); diffusers decodes a batch at once, ours image by image (as the reference);
- pixel agreement: an untimed run in which diffusers gets our init latent (a 4-channel `image` is taken as latents)
  and the reference's ᾱ, so that the only difference left is float rounding; diffusers' float output is truncated
  to uint8 as ours is. Reported: the largest difference in levels and the share of values that differ by more
  than one level.

The sides alternate within each repeat (and swap order every repeat), and the figures are medians.
Inpainting (`StableDiffusionInpaintPipeline`, tiny 9-channel model) is timed only: A1111's inpainting blends the
latent with the original at every step and pastes the original back outside the mask, so the pictures are not
meant to agree.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import harness
from bench.config import Config
from bench.results import BenchResult

PROMPT = "a red cube on a table"
SEED = 1234
CFG_SCALE = 7.0
STRENGTH = 0.75
TARGET_RATIO = 1.00


def cache_dir() -> Path:
    """Where built benchmark models are kept between runs (RENDERFARM_BENCH_CACHE, else ~/.cache/renderfarm-bench)."""
    return Path(os.environ.get("RENDERFARM_BENCH_CACHE") or Path.home() / ".cache" / "renderfarm-bench")


def sd15_dir() -> Path:
    """The SD1.5-shaped random-weight model (built on first use: a minute or more, ~4 GB)."""
    from worker.engine.models import build_sd15_shaped_model

    return build_sd15_shaped_model(cache_dir() / "sd15-shaped")


def sdxl_dir() -> Path:
    """The SDXL-shaped random-weight model (built on first use: minutes, ~14 GB in fp32)."""
    from worker.engine.models import build_sdxl_shaped_model

    return build_sdxl_shaped_model(cache_dir() / "sdxl-shaped")


@dataclass
class Case:
    label: str
    model: Any
    size: int
    steps: int
    batch: int
    repeats: int
    inpaint: bool = False


def _picture(size: int, seed: int = 0) -> Any:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(harness.png_bytes(size, size, seed))).convert("RGB")


def _mask(size: int) -> Any:
    from PIL import Image, ImageDraw

    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((size // 4, size // 4, 3 * size // 4 - 1, 3 * size // 4 - 1), fill=255)
    return mask


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _generators(device: Any, batch: int) -> list[Any]:
    import torch

    # Ours draws its noise on the model's device (randn source "GPU" = the device; the CPU here).
    return [torch.Generator(device=device).manual_seed(SEED + i) for i in range(batch)]


def _ours(case: Case, picture: Any, mask: Any) -> Any:
    from worker.engine.processing import StableDiffusionProcessingImg2Img

    fields: dict[str, Any] = {}
    if case.inpaint:
        # The settings closest to diffusers' inpainting: whole picture, no blur, original content under the mask.
        fields = {"mask": mask, "mask_blur": 0, "inpaint_full_res": False, "inpainting_fill": 1}
    return StableDiffusionProcessingImg2Img(
        sd_model=case.model,
        prompt=PROMPT,
        negative_prompt="",
        init_images=[picture],
        width=case.size,
        height=case.size,
        steps=case.steps,
        seed=SEED,
        sampler_name="Euler",
        cfg_scale=CFG_SCALE,
        denoising_strength=STRENGTH,
        batch_size=case.batch,
        **fields,
    )


def _pipeline(case: Case) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    model = case.model
    cls: Any = StableDiffusionInpaintPipeline if case.inpaint else StableDiffusionImg2ImgPipeline
    pipe = cls(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(case: Case, result: BenchResult) -> None:
    """Time both sides (alternating), then compare pixels; adds the figures to `result`."""
    import numpy as np
    import torch

    from worker.engine.processing import process_images

    model = case.model
    device = model.device
    picture, mask = _picture(case.size), _mask(case.size)
    pipe = _pipeline(case)
    probe = _ours(case, picture, mask)
    process_images(probe)  # warm-up; also gives the plan (sigmas, t_enc) diffusers is given
    plan = probe.plan
    assert plan is not None
    common: dict[str, Any] = {
        "prompt": [PROMPT] * case.batch,
        "negative_prompt": [""] * case.batch,
        "strength": min((plan.t_enc + 1) / case.steps + 1e-6, 1.0),
        "sigmas": plan.sigmas.tolist(),
        "guidance_scale": CFG_SCALE,
        "height": case.size,
        "width": case.size,
    }
    if case.inpaint:
        common |= {"image": picture, "mask_image": mask}
    else:
        common.pop("height")
        common.pop("width")
        common["image"] = picture

    def theirs() -> float:
        _sync(device)
        start = time.perf_counter()
        pipe(**common, generator=_generators(device, case.batch), output_type="pil")
        _sync(device)
        return time.perf_counter() - start

    def ours() -> float:
        _sync(device)
        start = time.perf_counter()
        process_images(_ours(case, picture, mask))
        _sync(device)
        return time.perf_counter() - start

    theirs()  # warm-up of diffusers' side
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    sides: list[tuple[str, Callable[[], float]]] = [("ours", ours), ("theirs", theirs)]
    for repeat in range(case.repeats):
        for name, side in sides if repeat % 2 == 0 else reversed(sides):
            times[name].append(side())
    ratio = harness.median(times["ours"]) / harness.median(times["theirs"])
    steps = plan.total_steps
    images = case.batch
    label = case.label
    result.add(f"{label}: engine", harness.median(times["ours"]) * 1000, "ms")
    result.add(f"{label}: diffusers", harness.median(times["theirs"]) * 1000, "ms")
    result.add(f"{label}: engine / diffusers", ratio, "×", f"≤ {TARGET_RATIO:.2f}", ratio <= TARGET_RATIO)
    if device.type == "cuda":
        for key in ("ours", "theirs"):
            name = "engine" if key == "ours" else "diffusers"
            seconds = harness.median(times[key])
            result.add(f"{label}: {name} images/s", images / seconds, "img/s")
            result.add(f"{label}: {name} s/step", seconds / steps, "s")
    if case.inpaint:
        result.note(f"{label}: pixels not compared (A1111 inpainting blends and pastes back; diffusers does not)")
        return

    # Pixel agreement: the same init latent and ᾱ on both sides, untimed.
    from diffusers import EulerDiscreteScheduler

    check = _ours(case, picture, mask)
    processed = process_images(check)
    assert check.init_latent is not None
    scheduler = EulerDiscreteScheduler.from_config(model.scheduler_config)
    scheduler.alphas_cumprod = plan.model.alphas_cumprod.clone()
    pipe.scheduler = scheduler
    same = common | {"image": check.init_latent}
    decoded = pipe(**same, generator=_generators(device, case.batch), output_type="np").images
    worst, share = 0, 0.0
    for i in range(case.batch):
        mine = np.asarray(processed.images[i], dtype=np.int16)
        truncated = np.floor(np.asarray(decoded[i], dtype=np.float64) * 255.0).astype(np.int16)
        gap = np.abs(mine - truncated)
        worst = max(worst, int(gap.max()))
        share = max(share, float((gap > 1).mean()))
    result.add(f"{label}: pixels, largest difference", worst, "levels")
    result.add(f"{label}: pixels differing by > 1 level", share * 100, "%")
    del torch


def measure_ours(case: Case, result: BenchResult) -> None:
    """Our render alone (an SDXL model: diffusers' SDXL pipelines are not driven side by side here): the median
    time of `process_images`, and on CUDA images/s and s/step."""
    from worker.engine.processing import process_images

    device = case.model.device
    picture, mask = _picture(case.size), _mask(case.size)
    probe = _ours(case, picture, mask)
    process_images(probe)  # warm-up
    assert probe.plan is not None
    times: list[float] = []
    for _ in range(case.repeats):
        p = _ours(case, picture, mask)
        _sync(device)
        start = time.perf_counter()
        process_images(p)
        _sync(device)
        times.append(time.perf_counter() - start)
    seconds = harness.median(times)
    result.add(f"{case.label}: engine", seconds * 1000, "ms")
    if device.type == "cuda":
        result.add(f"{case.label}: engine images/s", case.batch / seconds, "img/s")
        result.add(f"{case.label}: engine s/step", seconds / max(probe.plan.total_steps, 1), "s")


def measure_samplers(model: Any, size: int, steps: int, repeats: int, label: str, result: BenchResult) -> None:
    """Cost per sampling step of every sampler (ours only: diffusers has no equivalent of most of them): the median
    time of a whole img2img render divided by its steps, and the model calls per step (2 for the second-order
    samplers, 3 per attempt for DPM adaptive)."""
    import torch

    from shared.sampler_names import SAMPLERS
    from worker.engine.processing import StableDiffusionProcessingImg2Img, process_images

    picture = _picture(size)
    device = model.device
    calls: list[int] = []
    unet = model.unet
    original = unet.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    unet.forward = counting
    try:
        for sampler in SAMPLERS:

            def job(name: str = sampler.name) -> Any:
                return StableDiffusionProcessingImg2Img(
                    sd_model=model,
                    prompt=PROMPT,
                    init_images=[picture],
                    width=size,
                    height=size,
                    steps=steps,
                    seed=SEED,
                    sampler_name=name,
                    cfg_scale=CFG_SCALE,
                    denoising_strength=STRENGTH,
                )

            process_images(job())  # warm-up
            times: list[float] = []
            for _ in range(repeats):
                p = job()
                calls.clear()
                _sync(device)
                start = time.perf_counter()
                process_images(p)
                _sync(device)
                times.append(time.perf_counter() - start)
            assert p.plan is not None
            done = max(p.plan.total_steps, 1)
            result.add(f"{label} {sampler.name}: ms/step", harness.median(times) * 1000 / done, "ms")
            result.add(f"{label} {sampler.name}: UNet calls/step", len(calls) / done, "calls")
    finally:
        unet.forward = original
    del torch


def render_device(config: Config) -> tuple[Any, Any, str]:
    """(device, dtype, how the settings name them) that an engine benchmark renders on: CUDA in the worker's
    precision with `--gpu`, else the CPU in float32 with the torch thread count pinned (OMP_NUM_THREADS when set)."""
    import torch

    from worker.engine.models import pick_device, pick_dtype

    warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword")
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or torch.get_num_threads()
    if not config.gpu:
        torch.set_num_threads(threads)
    device = pick_device("cuda" if config.gpu else "cpu")
    dtype = pick_dtype(device) if config.gpu else torch.float32
    label = f"{device.type}, {str(dtype).removeprefix('torch.')}" + (
        "" if config.gpu else f", {threads} torch thread(s)"
    )
    return device, dtype, label


def run(config: Config) -> list[BenchResult]:
    from worker.engine.models import load_model

    result = BenchResult("engine", "Engine vs diffusers on the same model and work")
    device, dtype, device_label = render_device(config)
    result.settings = {
        "sampler": f'Euler, strength {STRENGTH}, CFG {CFG_SCALE}, negative prompt ""',
        "device": device_label,
        "repeats": "alternating; medians",
    }
    cases: list[Case] = []
    tiny_dir = cache_dir() / "tiny"
    if config.gpu:
        model = load_model(str(sd15_dir()), device=device, dtype=dtype)
        for batch in config.engine_gpu_batches:
            cases.append(
                Case(
                    f"SD1.5-shaped {config.engine_gpu_size}² ×{batch}",
                    model,
                    config.engine_gpu_size,
                    config.engine_gpu_steps,
                    batch,
                    config.engine_repeats,
                )
            )
    else:
        tiny = load_model("tiny", device=device, dtype=dtype, tiny_dir=tiny_dir)
        size, steps = config.engine_tiny_size, config.engine_tiny_steps
        cases.append(Case(f"tiny {size}² ×1", tiny, size, steps, 1, config.engine_repeats))
        cases.append(Case(f"tiny {size}² ×4", tiny, size, steps, 4, config.engine_repeats))
        inpaint = load_model("tiny-inpaint", device=device, dtype=dtype, tiny_dir=tiny_dir)
        cases.append(Case(f"tiny-inpaint {size}² ×1", inpaint, size, steps, 1, config.engine_repeats, inpaint=True))
        if config.engine_sd15:
            start = time.monotonic()
            folder = sd15_dir()
            sd15 = load_model(str(folder), device=device, dtype=dtype)
            result.note(f"SD1.5-shaped model ready in {time.monotonic() - start:.0f} s ({folder})")
            cases.append(
                Case(
                    f"SD1.5-shaped {config.engine_sd15_size}² ×1",
                    sd15,
                    config.engine_sd15_size,
                    config.engine_sd15_steps,
                    1,
                    config.engine_sd15_repeats,
                )
            )
    for case in cases:
        result.settings[case.label] = f"{case.steps} steps ({case.repeats} repeats per side)"
        measure(case, result)
    if config.engine_sdxl:
        # SDXL: two text encoders, the vector conditioning, the fp32 VAE. On the GPU the SDXL-shaped model at its
        # native size; elsewhere the tiny SDXL model (a smoke run of the same code).
        if config.gpu:
            start = time.monotonic()
            folder = sdxl_dir()
            xl = load_model(str(folder), device=device, dtype=dtype)
            result.note(f"SDXL-shaped model ready in {time.monotonic() - start:.0f} s ({folder})")
            size, steps, repeats, name = (
                config.engine_sdxl_gpu_size,
                config.engine_gpu_steps,
                config.engine_repeats,
                "SDXL-shaped",
            )
        else:
            xl = load_model("tiny-xl", device=device, dtype=dtype, tiny_dir=tiny_dir)
            size, steps, repeats, name = (
                config.engine_tiny_size,
                config.engine_tiny_steps,
                config.engine_repeats,
                "tiny-xl",
            )
        xl_case = Case(f"{name} {size}² ×1", xl, size, steps, 1, repeats)
        result.settings[xl_case.label] = f"{steps} steps ({repeats} repeats; engine only)"
        measure_ours(xl_case, result)
        del xl
    if config.engine_samplers:
        # Every sampler's cost per step: on the GPU with the SD1.5-shaped model, elsewhere a quick tiny-model pass.
        sampler_model = cases[0].model
        size = config.engine_gpu_size if config.gpu else config.engine_samplers_tiny_size
        steps = config.engine_gpu_steps if config.gpu else config.engine_samplers_tiny_steps
        repeats = config.engine_sd15_repeats if config.gpu else 1
        label = "per sampler," + (f" SD1.5-shaped {size}²" if config.gpu else f" tiny {size}²")
        result.settings[label] = f"{steps} steps, strength {STRENGTH}, batch 1 ({repeats} repeat(s); medians)"
        measure_samplers(sampler_model, size, steps, repeats, label, result)
    return [result]
