"""Which architecture a checkpoint and a LoRA are for, read cheaply from key names (a safetensors header, a diffusers
folder's configs), so the scheduler can refuse a LoRA that would match no layer of the job's model (proposal P6).

An architecture here is a family (`sd`: SD 1.x/2.x, whose kohya LoRAs use diffusers block names; `sdxl`: sgm block
names and two text encoders) and, when the keys show it, the UNet's cross-attention width (768 SD1, 1024 SD2, 2048
SDXL, 32 the tiny models): a LoRA for SD2 has 1024-wide `attn2.to_k` inputs and matches no SD1 layer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from shared.embeddings.safetensors_header import read_safetensors_header
from shared.embeddings.torch_pickle import TensorShape, read_torch_structure

__all__ = ["Architecture", "checkpoint_architecture", "lora_architecture", "lora_mismatch"]

Family = Literal["sd", "sdxl"]


@dataclass(frozen=True)
class Architecture:
    family: Family | None  # None: any (the keys do not tell)
    context_width: int | None = None  # the UNet's cross-attention input width, when known


_UNET_PREFIX: Final = "model.diffusion_model."


def _width(tensors: Mapping[str, object], key: str) -> int | None:
    tensor = tensors.get(key)
    return tensor.shape[1] if isinstance(tensor, TensorShape) and len(tensor.shape) == 2 else None


def _state_of(path: Path) -> Mapping[str, object]:
    if path.suffix.lower() == ".safetensors":
        return read_safetensors_header(path)[0]
    data = read_torch_structure(path)
    state = data.get("state_dict", data) if isinstance(data, Mapping) else None
    return state if isinstance(state, Mapping) else {}


def _folder_architecture(folder: Path) -> Architecture:
    family: Family = "sdxl" if (folder / "text_encoder_2").is_dir() else "sd"
    width = None
    config = folder / "unet" / "config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("cross_attention_dim")
        width = value if isinstance(value, int) else None
    return Architecture(family, width)


def checkpoint_architecture(path: Path) -> Architecture:
    """A checkpoint file's (header keys) or diffusers folder's (configs) architecture; `Architecture(None)` when
    it cannot be told. Raises OSError / ValueError for unreadable files."""
    if path.is_dir():
        return _folder_architecture(path)
    tensors = _state_of(path)
    # The first cross-attention key projection of the UNet: its input width is the text conditioning's.
    width = next(
        (_width(tensors, key) for key in tensors if key.startswith(_UNET_PREFIX) and key.endswith("attn2.to_k.weight")),
        None,
    )
    if any(key.startswith("conditioner.embedders.1.") for key in tensors):
        return Architecture("sdxl", width)
    if any(key.startswith(("cond_stage_model.model.", "cond_stage_model.transformer.")) for key in tensors):
        return Architecture("sd", width)
    return Architecture(None)


# LoRA key prefixes (prompts-and-models.md §3.4): sgm block names and two text encoders mean SDXL; diffusers
# block names with underscores and one text encoder mean SD 1.x/2.x; the rest of `lora_unet_` (conv_in,
# time_embedding) fits both.
_SDXL_PREFIXES: Final = (
    "lora_te1_",
    "lora_te2_",
    "lora_unet_input_blocks_",
    "lora_unet_output_blocks_",
    "lora_unet_middle_block_",
    "text_encoder_2.",
)
_SD_PREFIXES: Final = ("lora_te_", "lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_")
_ANY_PREFIXES: Final = ("lora_unet_", "oft_unet_", "unet.", "text_encoder.", "bundle_emb.", "lora_transformer_")


def lora_architecture(path: Path) -> Architecture | None:
    """The architecture a LoRA file's keys are for, or None when no key has a known prefix (the file would match no
    layer of any model). Raises OSError / ValueError for unreadable files."""
    tensors = _state_of(path)
    keys = list(tensors)
    family: Family | None
    if any(key.startswith(_SDXL_PREFIXES) for key in keys):
        family = "sdxl"
    elif any(key.startswith(_SD_PREFIXES) for key in keys):
        family = "sd"
    elif any(key.startswith(_ANY_PREFIXES) for key in keys):
        family = None
    else:
        return None
    width = None
    for key in keys:  # a cross-attention key's down projection reads the text conditioning
        if "attn2_to_k" in key and key.endswith((".lora_down.weight", ".lora_A.weight")):
            width = _width(tensors, key)
            if width is not None:
                break
    return Architecture(family, width)


def lora_mismatch(lora: Architecture | None, model: Architecture) -> str | None:
    """Why the LoRA matches no layer of the model, or None when it may fit."""
    if lora is None:
        return "its keys match no layer of any model the farm knows (no lora_unet_/lora_te_ prefix)"
    if lora.family is not None and model.family is not None and lora.family != model.family:
        names = {"sd": "SD 1.x/2.x", "sdxl": "SDXL"}
        return f"it is a {names[lora.family]} LoRA and the model is {names[model.family]}"
    if lora.context_width is not None and model.context_width is not None and lora.context_width != model.context_width:
        return (
            f"its cross-attention layers take {lora.context_width}-wide text and the model's "
            f"{model.context_width}-wide (another model family)"
        )
    return None
