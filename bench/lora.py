"""LoRA switching and rendering with LoRAs (docs/engine.md, "LoRA and LyCORIS"), on the tiny and the SD1.5-shaped model.

Three kohya-format LoRA files of rank 8 are written per model, each touching every attention and feed-forward Linear
of the UNet and every attention and MLP Linear of the text encoder (what a typical SD 1.5 LoRA trains). Reported per
model:

- the time to switch the model's active set (files already read): none → 1 LoRA, 1 LoRA → another, → 3 LoRAs,
  3 LoRAs → none (the bitwise restore), and the unchanged set (the no-op of consecutive jobs);
- the render time (img2img, Euler) with 0, 1 and 3 LoRAs in the prompt, each render after one with the same set (so
  it pays the no-op, not a switch), and its ratio to the render without LoRA;
- the switch to 3 LoRAs as a share of the render without LoRA.

The sizes alternate within each repeat; the figures are medians.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import harness
from bench.config import Config
from bench.engine import CFG_SCALE, PROMPT, SEED, STRENGTH, _picture, _sync, cache_dir, render_device, sd15_dir
from bench.results import BenchResult

RANK = 8
_UNET_PARTS = ("attn1.to_", "attn2.to_", "ff.net.")
_TEXT_PARTS = ("self_attn.", "mlp.")


def write_loras(model: Any, folder: Path, count: int) -> tuple[dict[str, Path], int]:
    """`count` kohya LoRA files for `model` in `folder`, by name, and the number of layers each changes."""
    import torch
    from safetensors.torch import save_file

    targets: list[tuple[str, torch.nn.Linear]] = []
    for name, module in model.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(part in name for part in _UNET_PARTS):
            targets.append(("lora_unet_" + name.replace(".", "_"), module))
    for name, module in model.text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear) and any(part in name for part in _TEXT_PARTS):
            full = name if name.startswith("text_model.") else f"text_model.{name}"
            targets.append(("lora_te_" + full.replace(".", "_"), module))
    paths: dict[str, Path] = {}
    for index in range(count):
        generator = torch.Generator().manual_seed(index)
        tensors: dict[str, torch.Tensor] = {}
        for key, module in targets:
            tensors[f"{key}.lora_down.weight"] = torch.randn(RANK, module.in_features, generator=generator) * 0.01
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, RANK, generator=generator) * 0.01
            tensors[f"{key}.alpha"] = torch.tensor(float(RANK))
        path = folder / f"bench{index}.safetensors"
        save_file(tensors, str(path))
        paths[f"bench{index}"] = path
    return paths, len(targets)


def _timed(action: Callable[[], Any], device: Any) -> float:
    _sync(device)
    start = time.perf_counter()
    action()
    _sync(device)
    return time.perf_counter() - start


def measure(label: str, model: Any, size: int, steps: int, repeats: int, result: BenchResult) -> None:
    from shared.prompts.extra_networks import lora_requests
    from worker.engine.networks import activate_networks, deactivate_networks
    from worker.engine.processing import StableDiffusionProcessingImg2Img, process_images

    device = model.device
    folder = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    paths, layers = write_loras(model, folder, 3)
    picture = _picture(size)
    tags = {0: "", 1: " <lora:bench0:0.8>", 3: " <lora:bench0:0.8> <lora:bench1:0.5> <lora:bench2:0.3>"}

    def activation(tag_text: str) -> Callable[[], Any]:
        requests = lora_requests(tag_text)
        return lambda: activate_networks(model, [(r, paths[r.name]) for r in requests])

    def render(count: int) -> Any:
        p = StableDiffusionProcessingImg2Img(
            sd_model=model,
            prompt=PROMPT + tags[count],
            init_images=[picture],
            width=size,
            height=size,
            steps=steps,
            seed=SEED,
            sampler_name="Euler",
            cfg_scale=CFG_SCALE,
            denoising_strength=STRENGTH,
            lora_files=lambda name: paths.get(name),
        )
        return process_images(p)

    # Warm-up: reads and matches the files (the file cache then holds them), and one render of each set.
    for count in (0, 1, 3):
        render(count)
    switches: dict[str, list[float]] = {k: [] for k in ("none → 1", "1 → another 1", "→ 3", "3 → none", "unchanged")}
    renders: dict[int, list[float]] = {0: [], 1: [], 3: []}
    for repeat in range(repeats):
        deactivate_networks(model)
        switches["none → 1"].append(_timed(activation(tags[1]), device))
        switches["1 → another 1"].append(_timed(activation("<lora:bench1:0.8>"), device))
        switches["→ 3"].append(_timed(activation(tags[3]), device))
        switches["unchanged"].append(_timed(activation(tags[3]), device))
        switches["3 → none"].append(_timed(activation(tags[0]), device))
        for count in (0, 1, 3) if repeat % 2 == 0 else (3, 1, 0):
            render(count)  # the same set as the timed render: it pays the no-op only
            renders[count].append(_timed(functools.partial(render, count), device))
    deactivate_networks(model)
    for name, times in switches.items():
        result.add(f"{label}: switch {name}", harness.median(times) * 1000, "ms")
    plain = harness.median(renders[0])
    for count in (0, 1, 3):
        result.add(f"{label}: render with {count} LoRA(s)", harness.median(renders[count]) * 1000, "ms")
    for count in (1, 3):
        result.add(f"{label}: render {count} LoRA(s) / none", harness.median(renders[count]) / plain, "×")
    result.add(f"{label}: switch → 3 / render with none", harness.median(switches["→ 3"]) / plain, "×")
    result.note(f"{label}: {layers} layers per LoRA, rank {RANK}; {size}², {steps} steps")


def run(config: Config) -> list[BenchResult]:
    from worker.engine.models import load_model

    result = BenchResult("lora", "LoRA: switching sets and rendering with 0, 1 and 3 LoRAs")
    device, dtype, device_label = render_device(config)
    result.settings = {
        "sampler": f"Euler, strength {STRENGTH}, CFG {CFG_SCALE}, batch 1",
        "device": device_label,
        "repeats": f"{config.lora_repeats}, alternating; medians",
    }
    steps = config.engine_gpu_steps if config.gpu else config.lora_steps
    tiny = load_model("tiny", device=device, dtype=dtype, tiny_dir=cache_dir() / "tiny")
    size = config.lora_gpu_size if config.gpu else config.lora_tiny_size
    measure(f"tiny {size}²", tiny, size, steps, config.lora_repeats, result)
    if config.lora_sd15:
        sd15 = load_model(str(sd15_dir()), device=device, dtype=dtype)
        size = config.lora_gpu_size if config.gpu else config.lora_sd15_size
        measure(f"SD1.5-shaped {size}²", sd15, size, steps, config.lora_repeats, result)
    return [result]
