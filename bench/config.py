"""The sizes of each mode: `tiny` (the smoke test: seconds), `quick` (the default: under 10 minutes on two cores),
`full` (the long run), and the GPU settings of `--gpu`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Config:
    mode: str
    gpu: bool = False
    torch_threads: int = 1
    # engine vs diffusers
    engine_repeats: int = 5
    engine_tiny_size: int = 256
    engine_tiny_steps: int = 20
    engine_sd15: bool = True
    engine_sd15_size: int = 256
    engine_sd15_steps: int = 10
    engine_sd15_repeats: int = 3
    engine_gpu_size: int = 512
    engine_gpu_steps: int = 20
    engine_gpu_batches: tuple[int, ...] = (1, 4)
    # an SDXL pass, engine only (GPU: the SDXL-shaped model at engine_sdxl_gpu_size; else tiny-xl at the tiny size)
    engine_sdxl: bool = True
    engine_sdxl_gpu_size: int = 1024
    # every sampler's cost per step (GPU: the SD1.5-shaped model at engine_gpu_size; else the tiny model)
    engine_samplers: bool = True
    engine_samplers_tiny_size: int = 64
    engine_samplers_tiny_steps: int = 5
    # LoRA: switching sets, renders with 0/1/3 LoRAs (tiny, then SD1.5-shaped; GPU: both at lora_gpu_size)
    lora_repeats: int = 3
    lora_steps: int = 10
    lora_tiny_size: int = 256
    lora_sd15: bool = True
    lora_sd15_size: int = 128
    lora_gpu_size: int = 512
    # farm overhead
    overhead_jobs: int = 20
    overhead_size: int = 256
    overhead_steps: int = 20
    # throughput
    submit_count: int = 2000
    submit_concurrency: int = 16
    submit_rounds: int = 3
    batch_items: int = 1000
    batch_count: int = 5
    status_count: int = 4000
    status_concurrency: int = 16
    celery_count: int = 2000
    # scaling
    scaling_workers: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    scaling_rounds: int = 4  # jobs per worker at each N
    scaling_job_s: float = 1.0  # the stand-in's render time per job (seconds)
    scaling_steps: int = 10
    drain_jobs: int = 10_000
    # growth
    growth_sizes: tuple[int, ...] = (1_000, 1_000_000)
    growth_reads: int = 2000
    growth_rounds: int = 4
    growth_concurrency: int = 4
    extra: dict[str, str] = field(default_factory=dict)


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 1


# Quick: every benchmark, smaller where the full size takes minutes on two cores (SD1.5-shaped at 128², up to 16
# stand-in workers, a 1,000-job drain).
QUICK = Config(
    mode="quick",
    lora_steps=4,
    engine_repeats=3,
    engine_sd15_size=128,
    engine_sd15_steps=4,
    engine_sd15_repeats=2,
    scaling_workers=(1, 2, 4, 8, 16),
    scaling_rounds=3,
    drain_jobs=1000,
)

FULL = Config(
    mode="full",
    engine_repeats=9,
    engine_sd15_size=256,
    engine_sd15_steps=10,
    engine_sd15_repeats=3,
    overhead_jobs=60,
    submit_count=5000,
    submit_rounds=5,
    batch_count=10,
    status_count=10000,
    celery_count=5000,
    scaling_workers=(1, 2, 4, 8, 16, 32),
    scaling_rounds=5,
    drain_jobs=10_000,
    growth_reads=5000,
    growth_rounds=6,
)

TINY = Config(
    mode="tiny",
    engine_repeats=2,
    engine_tiny_size=64,
    engine_tiny_steps=4,
    engine_sd15=False,
    lora_repeats=1,
    lora_steps=2,
    lora_tiny_size=64,
    lora_sd15=False,
    overhead_jobs=3,
    overhead_size=64,
    overhead_steps=4,
    submit_count=100,
    submit_concurrency=4,
    submit_rounds=1,
    batch_items=50,
    batch_count=1,
    status_count=200,
    status_concurrency=4,
    celery_count=200,
    scaling_workers=(1, 2),
    scaling_rounds=2,
    scaling_job_s=0.2,
    scaling_steps=2,
    drain_jobs=50,
    growth_sizes=(1_000, 10_000),
    growth_reads=100,
    growth_rounds=2,
)

MODES = {"quick": QUICK, "full": FULL, "tiny": TINY}


def config_for(mode: str, *, gpu: bool = False) -> Config:
    base = MODES[mode]
    return replace(base, gpu=gpu, torch_threads=_threads())
