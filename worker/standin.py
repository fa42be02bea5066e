"""A stand-in render engine for scaling benchmarks and tests: sleeps instead of rendering. NOT for production.

With `RENDERFARM_STANDIN_STEP_S=<seconds>` set in a worker's environment (or `WorkerDeps(engine=StandinEngine(s))`),
the worker runs every job exactly as it would (claim, lease, model from the cache, inputs from storage, progress
writes, cancel checks, upload, fenced commit) except for the render itself: for each batch it sleeps
`step_s` seconds per sampling step, calling the progress callback after every step as the real sampler does (with a
made-up latent, so that live previews are drawn too), and then returns solid-colour pictures of the requested size.
So benchmarks measure the farm (queueing, dispatch, database, storage, live status) at a render cost you choose, on
machines without GPUs, and the tests can exercise the whole path in milliseconds.

The results are marked: their infotext carries `Stand-in engine: <step_s>`, and the colour is derived from the seed
(so different seeds give visibly different pictures, and the same seed the same picture).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Final

import torch
from PIL import Image

from shared.config import ENV_PREFIX
from shared.errors import ConfigError
from shared.job.steps import sampling_steps
from shared.sampler_names import find_schedule
from worker.engine.noise import resolve_seeds
from worker.engine.processing import Processed, Progress, StableDiffusionProcessingImg2Img

__all__ = ["STANDIN_ENV", "StandinEngine", "standin_from_env"]

STANDIN_ENV: Final = f"{ENV_PREFIX}STANDIN_STEP_S"
MAX_STEP_S: Final = 60.0  # seconds per step; anything longer is a typo


class StandinEngine:
    """An engine (`WorkerDeps.engine`) that sleeps `step_s` seconds per sampling step instead of rendering.

    `sleep` is injectable so tests can count time instead of spending it. Raises ValueError for a negative or
    absurd (> MAX_STEP_S) `step_s`.
    """

    def __init__(self, step_s: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0 <= step_s <= MAX_STEP_S or math.isnan(step_s):
            raise ValueError(f"the stand-in step time must be 0..{MAX_STEP_S} seconds, not {step_s}")
        self.step_s = step_s
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"StandinEngine(step_s={self.step_s})"

    def __call__(self, p: StableDiffusionProcessingImg2Img) -> Processed:
        """Pretend to run `p` (as `process_images` would) and return solid-colour results of p.width × p.height."""
        if p.init_images and 1 < len(p.init_images) <= p.batch_size:
            p.batch_size = len(p.init_images)  # as process_images: one image per batch slot
        count = p.batch_size * p.n_iter
        seeds, subseeds = resolve_seeds(p.seed, p.subseed, p.subseed_strength, count)
        # The steps the real engine would sample per batch (none at strength 0).
        schedule = find_schedule(p.scheduler) if p.scheduler else None
        total = sampling_steps(
            p.sampler_name,
            p.steps,
            p.denoising_strength,
            fix_steps=p.options.img2img_fix_steps,
            schedule=schedule.name if schedule is not None else None,
            always_discard_penultimate_sigma=p.options.always_discard_next_to_last_sigma,
        )
        images: list[Image.Image] = []
        for n in range(p.n_iter):
            if p.interrupted:
                break
            p.job_no = n
            latent = _preview_latent(p, seeds[n * p.batch_size : (n + 1) * p.batch_size])
            for step in range(1, total + 1):
                self._sleep(self.step_s)
                if p.progress_callback is not None:
                    p.progress_callback(Progress(n, p.n_iter, step, total, latent))
            images.extend(_solid(p.width, p.height, seed) for seed in seeds[n * p.batch_size : (n + 1) * p.batch_size])
        if p.progress_callback is not None and not p.interrupted:
            p.progress_callback(Progress(p.n_iter, p.n_iter, total, total))
        done = len(images)
        mask = p.image_mask.convert("L").resize((p.width, p.height)) if p.image_mask is not None else None
        p.extra_generation_params["Stand-in engine"] = self.step_s
        return Processed(
            images=images,
            overlay_images=[None] * done,
            masks=[mask] * done,
            seeds=seeds[:done],
            subseeds=subseeds[:done],
            prompts=[p.prompt] * done,
            negative_prompts=[p.negative_prompt] * done,
            infotexts=[p.infotext(i, seeds, subseeds) for i in range(done)],
            comments=[],
            warnings=[],
            interrupted=p.interrupted,
            width=p.width,
            height=p.height,
        )


def _solid(width: int, height: int, seed: int) -> Image.Image:
    colour = (seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF)
    return Image.new("RGB", (width, height), colour)


def _preview_latent(p: StableDiffusionProcessingImg2Img, seeds: list[int]) -> torch.Tensor:
    """A made-up latent per batch for live previews: each picture's channels are constants from its seed."""
    values = [[((seed >> (8 * channel)) & 0xFF) / 64.0 - 2.0 for channel in range(4)] for seed in seeds]
    return torch.tensor(values, dtype=torch.float32)[:, :, None, None].expand(-1, -1, p.height // 8, p.width // 8)


def standin_from_env(environ: dict[str, str] | None = None) -> StandinEngine | None:
    """The stand-in engine when RENDERFARM_STANDIN_STEP_S is set (seconds per step), else None.

    Raises ConfigError naming the variable when it is not a number in 0..MAX_STEP_S.
    """
    value = (os.environ if environ is None else environ).get(STANDIN_ENV, "").strip()
    if not value:
        return None
    try:
        return StandinEngine(float(value))
    except ValueError as exc:
        raise ConfigError(f"{STANDIN_ENV}={value!r}: {exc}", field=STANDIN_ENV) from exc
