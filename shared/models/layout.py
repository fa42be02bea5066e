"""Where model files are in RENDERFARM_MODELS_DIR (docs/engine.md "Model files"; reference prompts-and-models.md §8.1).

Two layouts, both read at once:
- the webui's `models/` folder as users have it: `Stable-diffusion/` (checkpoints, recursive), `Lora/` and
  `LyCORIS/`, `VAE/`, `hypernetworks/`, `VAE-taesd/`…; embeddings in `<models>/../embeddings` (the webui keeps
  them beside `models/`, at the data-dir root);
- the farm's flat layout: checkpoint files and diffusers folders directly in RENDERFARM_MODELS_DIR, embeddings in
  `<models>/embeddings`.

Walks follow symbolic links (a checkpoint kept on another disk), visit a folder once (a link back up is not
followed again), include hidden entries below the top (the reference's `list_hidden_files`), and sort naturally
(`x2` before `x10`, as the webui lists them).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

__all__ = [
    "CHECKPOINT_FOLDER",
    "CHECKPOINT_SUFFIXES",
    "EMBEDDINGS_FOLDER",
    "HYPERNETWORK_FOLDER",
    "LORA_FOLDERS",
    "LORA_SUFFIXES",
    "VAE_FOLDER",
    "VAE_SUFFIXES",
    "WEBUI_FOLDERS",
    "embeddings_folder",
    "is_diffusers_folder",
    "natural_key",
    "walk_files",
]

log = logging.getLogger(__name__)

CHECKPOINT_FOLDER: Final = "Stable-diffusion"
LORA_FOLDERS: Final = ("Lora", "LyCORIS")  # scanned in this order: a later file of the same name wins
VAE_FOLDER: Final = "VAE"
HYPERNETWORK_FOLDER: Final = "hypernetworks"
EMBEDDINGS_FOLDER: Final = "embeddings"
CHECKPOINT_SUFFIXES: Final = (".safetensors", ".ckpt")
LORA_SUFFIXES: Final = (".pt", ".ckpt", ".safetensors")
VAE_SUFFIXES: Final = (".ckpt", ".pt", ".safetensors")

# Folders the webui keeps in `models/`: never mistaken for diffusers model folders of the flat layout.
WEBUI_FOLDERS: Final = frozenset(
    {
        CHECKPOINT_FOLDER,
        *LORA_FOLDERS,
        VAE_FOLDER,
        HYPERNETWORK_FOLDER,
        EMBEDDINGS_FOLDER,
        "VAE-approx",
        "VAE-taesd",
        "ESRGAN",
        "RealESRGAN",
        "GFPGAN",
        "Codeformer",
        "SwinIR",
        "ScuNET",
        "LDSR",
        "DAT",
        "BSRGAN",
        "BLIP",
        "deepbooru",
        "karlo",
        "torch_deepdanbooru",
        "ControlNet",
        "Unet-onnx",
        "Unet-trt",
        "z-ailab",
    }
)

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key putting `x2` before `x10` and ignoring case (the webui's natural sort)."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower()) for part in _DIGITS.split(text) if part]


def is_diffusers_folder(folder: Path) -> bool:
    """A folder holding a diffusers model (its `model_index.json`, or at least a `unet/`)."""
    return (folder / "model_index.json").is_file() or (folder / "unet").is_dir()


def walk_files(root: Path, *, stop_at_diffusers: bool = False) -> Iterator[Path]:
    """Every file under `root` (and, with `stop_at_diffusers`, every diffusers folder, not entered), in natural order
    of their path relative to `root`. Nothing when `root` is not a folder."""
    if not root.is_dir():
        return iter(())
    found: list[Path] = []
    _walk(root, set(), found, stop_at_diffusers)
    found.sort(key=lambda path: natural_key(path.relative_to(root).as_posix()))
    return iter(found)


def _walk(folder: Path, seen: set[tuple[int, int]], found: list[Path], stop_at_diffusers: bool) -> None:
    try:
        info = folder.stat()
        entries = list(os.scandir(folder))
    except OSError as exc:
        log.warning("cannot list %s: %s", folder, exc)
        return
    if (info.st_dev, info.st_ino) in seen:
        return
    seen.add((info.st_dev, info.st_ino))
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=True):
                if stop_at_diffusers and is_diffusers_folder(path):
                    found.append(path)
                else:
                    _walk(path, seen, found, stop_at_diffusers)
            elif entry.is_file(follow_symlinks=True):
                found.append(path)
        except OSError as exc:  # a dangling link, a file removed meanwhile
            log.warning("skipping %s: %s", entry.path, exc)


def embeddings_folder(models_dir: Path) -> Path:
    """The embeddings folder of a models folder: the farm's `<models>/embeddings` when it exists, else the webui's
    `<models>/../embeddings` when that exists, else `<models>/embeddings` (empty). One folder, not both: a webui
    user has only the second, a farm only the first."""
    own = models_dir / EMBEDDINGS_FOLDER
    webui = models_dir.parent / EMBEDDINGS_FOLDER
    return webui if not own.is_dir() and webui.is_dir() else own
