"""The width of a model's text-encoder token embeddings, found without torch (the scheduler's `/embeddings` listing
needs it to tell loaded from skipped embeddings, as the worker does with the loaded model).

- the tiny models: `TINY_TEXT_WIDTH` (their config in `worker/engine/models/tiny.py`; a test checks the two agree);
- a diffusers folder in RENDERFARM_MODELS_DIR: `text_encoder/config.json`'s `hidden_size` (plus
  `text_encoder_2`'s for SDXL, whose embeddings carry both);
- a checkpoint file there (`.safetensors` header, `.ckpt` pickle read safely): the token-embedding tensor's width
  under the reference's key names (SD1, SD2, SDXL);
- a few well-known hub ids of SD 1.x and 2.x.

Only names inside RENDERFARM_MODELS_DIR are looked at (never an arbitrary path a client sends).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from shared.embeddings.safetensors_header import read_safetensors_header
from shared.embeddings.torch_pickle import TensorShape, read_torch_structure

__all__ = ["HUB_TEXT_WIDTHS", "SD1_WIDTH", "SD2_WIDTH", "SDXL_WIDTH", "TINY_TEXT_WIDTH", "text_encoder_width"]

SD1_WIDTH: Final = 768  # OpenAI CLIP ViT-L/14
SD2_WIDTH: Final = 1024  # OpenCLIP ViT-H/14
SDXL_WIDTH: Final = 768 + 1280  # CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 side by side
TINY_TEXT_WIDTH: Final[Mapping[str, int]] = {
    "tiny": 32,
    "tiny-inpaint": 32,
    "tiny-edit": 32,
    "tiny-xl": 32 + 64,  # its CLIP-L-shaped and bigG-shaped encoders side by side
    "tiny-xl-inpaint": 32 + 64,
}
HUB_TEXT_WIDTHS: Final[Mapping[str, int]] = {
    "CompVis/stable-diffusion-v1-4": SD1_WIDTH,
    "runwayml/stable-diffusion-v1-5": SD1_WIDTH,
    "stable-diffusion-v1-5/stable-diffusion-v1-5": SD1_WIDTH,
    "runwayml/stable-diffusion-inpainting": SD1_WIDTH,
    "stable-diffusion-v1-5/stable-diffusion-inpainting": SD1_WIDTH,
    "timbrooks/instruct-pix2pix": SD1_WIDTH,
    "stabilityai/stable-diffusion-2-1": SD2_WIDTH,
    "stabilityai/stable-diffusion-2-1-base": SD2_WIDTH,
    "stabilityai/stable-diffusion-2-inpainting": SD2_WIDTH,
    "stabilityai/stable-diffusion-xl-base-1.0": SDXL_WIDTH,
    "diffusers/stable-diffusion-xl-1.0-inpainting-0.1": SDXL_WIDTH,
}

# The token-embedding weight (vocabulary, width) of each text encoder, by the reference's checkpoint key names.
_SD1_KEYS: Final = (
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.transformer.embeddings.token_embedding.weight",
)
_SD2_KEYS: Final = ("cond_stage_model.model.token_embedding.weight",)
_SDXL_KEYS: Final = (
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.token_embedding.weight",
)
_CHECKPOINT_SUFFIXES: Final = (".safetensors", ".ckpt")


def _width(tensors: Mapping[str, Any], key: str) -> int | None:
    tensor = tensors.get(key)
    return tensor.shape[-1] if isinstance(tensor, TensorShape) and len(tensor.shape) == 2 else None


def _checkpoint_width(tensors: Mapping[str, Any]) -> int | None:
    sdxl = [_width(tensors, key) for key in _SDXL_KEYS]
    if all(w is not None for w in sdxl):
        return sum(w for w in sdxl if w is not None)
    for key in (*_SD1_KEYS, *_SD2_KEYS):
        if (width := _width(tensors, key)) is not None:
            return width
    return None


def _file_width(path: Path) -> int | None:
    if path.suffix.lower() == ".safetensors":
        return _checkpoint_width(read_safetensors_header(path)[0])
    data = read_torch_structure(path)
    state = data.get("state_dict", data) if isinstance(data, Mapping) else None
    return _checkpoint_width(state) if isinstance(state, Mapping) else None


def _folder_width(folder: Path) -> int | None:
    widths = []
    for part in ("text_encoder", "text_encoder_2"):
        config = folder / part / "config.json"
        if config.is_file():
            hidden = json.loads(config.read_text(encoding="utf-8")).get("hidden_size")
            if isinstance(hidden, int):
                widths.append(hidden)
    return sum(widths) if widths else None


def _inside(models_dir: Path, name: str) -> Path | None:
    """`models_dir / name` when `name` is a relative path that stays inside (symbolic links in the folder, such as
    a checkpoint kept on another disk, are fine)."""
    relative = Path(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        return None
    return models_dir / relative


def text_encoder_width(model: str, models_dir: Path | None) -> int | None:
    """The width, or None when it cannot be told (an unknown hub id, a name not found, an unreadable file)."""
    if model in TINY_TEXT_WIDTH:
        return TINY_TEXT_WIDTH[model]
    if models_dir is not None and models_dir.is_dir() and (base := _inside(models_dir, model)) is not None:
        try:
            if base.is_dir():
                return _folder_width(base)
            for candidate in (base, *(base.with_name(base.name + s) for s in _CHECKPOINT_SUFFIXES)):
                if candidate.is_file() and candidate.suffix.lower() in _CHECKPOINT_SUFFIXES:
                    return _file_width(candidate)
        except Exception:  # a malformed model file (any parse error): its width is unknown, not a 500
            return None
    return HUB_TEXT_WIDTHS.get(model)
