"""`renderfarm demo`: render a handful of img2img and inpainting jobs with the tiny model and save what comes out.

It runs the engine (`worker.processing`) directly, on the CPU, with no server. Every job writes its results, overlays
and masks as PNGs carrying the A1111 infotext, and the demo prints where they are and how long each took.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from shared.config import Settings

DEMO_SIZE = 128  # pixels; the tiny model renders this in a fraction of a second


@dataclass(frozen=True)
class DemoJob:
    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    with_mask: bool = False


DEMO_JOBS: tuple[DemoJob, ...] = (
    DemoJob("img2img", {"denoising_strength": 0.6}),
    DemoJob("inpaint-fill", {"inpainting_fill": 0}, with_mask=True),
    DemoJob("inpaint-original", {"inpainting_fill": 1}, with_mask=True),
    DemoJob("inpaint-latent-noise", {"inpainting_fill": 2}, with_mask=True),
    DemoJob("inpaint-latent-nothing", {"inpainting_fill": 3}, with_mask=True),
    DemoJob("inpaint-whole-picture", {"inpainting_fill": 1, "inpaint_full_res": False}, with_mask=True),
    DemoJob("only-masked-padding-16", {"inpaint_full_res_padding": 16, "inpainting_fill": 1}, with_mask=True),
    DemoJob("batch-2x2", {"batch_size": 2, "n_iter": 2, "sampler_name": "DPM++ 2M"}),
)


def demo_picture(size: int = DEMO_SIZE) -> Image.Image:
    """A small synthetic picture: a gradient sky, a sun and a hill."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for y in range(size):
        shade = int(80 + 150 * y / size)
        draw.line([(0, y), (size, y)], fill=(shade // 2, shade // 2 + 40, 230))
    draw.ellipse([size * 0.6, size * 0.1, size * 0.85, size * 0.35], fill=(250, 220, 90))
    draw.polygon([(0, size), (size * 0.45, size * 0.55), (size, size)], fill=(60, 140, 70))
    return image


def demo_mask(size: int = DEMO_SIZE) -> Image.Image:
    """White (regenerate) over the sun, black elsewhere."""
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse([size * 0.55, size * 0.05, size * 0.9, size * 0.4], fill=255)
    return mask


def run_demo(out_dir: Path, settings: Settings) -> int:
    from worker.models import load_model
    from worker.processing import StableDiffusionProcessingImg2Img, process_images

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = load_model(settings.model, tiny_dir=settings.data_dir / "models", models_dir=settings.models_dir)
    print(f"model {model.name!r} ready in {time.perf_counter() - started:.2f} s")
    picture, mask = demo_picture(), demo_mask()
    picture.save(out_dir / "input.png")
    mask.save(out_dir / "mask-input.png")
    for job in DEMO_JOBS:
        job_started = time.perf_counter()
        p = StableDiffusionProcessingImg2Img(
            sd_model=model,
            prompt="a watercolour landscape at sunset",
            negative_prompt="blurry",
            init_images=[picture],
            mask=mask if job.with_mask else None,
            seed=1234,
            steps=10,
            width=DEMO_SIZE,
            height=DEMO_SIZE,
            **job.fields,
        )
        processed = process_images(p)
        job_dir = out_dir / job.name
        job_dir.mkdir(exist_ok=True)
        written = processed.save(job_dir)
        elapsed = time.perf_counter() - job_started
        print(f"{job.name:<24} {len(processed.images)} image(s) in {elapsed:.2f} s -> {job_dir} ({len(written)} files)")
    print(f"done in {time.perf_counter() - started:.2f} s; open {out_dir.resolve()}")
    print("The farm itself (scheduler, workers, storage) serves these same jobs once it lands; see the README.")
    return 0
