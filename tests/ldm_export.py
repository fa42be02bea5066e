"""Export a diffusers model folder as one single-file checkpoint in the original (LDM / A1111) layout.

Only the tests need it: they turn the tiny models into the kind of `.safetensors` file A1111 users keep in their
models folder, to test the engine's single-file loader without downloading one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import torch

from worker.engine.models import LDM_UNET_PREFIX, ModelError

__all__ = ["export_single_file"]

# LDM (original Stable Diffusion / A1111) key prefixes of a single-file checkpoint; the loader recognises the UNet's.
_LDM_UNET: Final = LDM_UNET_PREFIX
_LDM_VAE: Final = "first_stage_model."
_LDM_CLIP: Final = "cond_stage_model.transformer.text_model."


def _ldm_resnet(name: str) -> str:
    for diffusers_name, ldm_name in (
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("time_emb_proj", "emb_layers.1"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("conv_shortcut", "skip_connection"),
    ):
        if name.startswith(diffusers_name + "."):
            return ldm_name + name[len(diffusers_name) :]
    raise ValueError(f"unexpected UNet resnet weight {name!r}")


def _ldm_layer_part(layer: str, kind: str, rest: str) -> str | None:
    """A down or up block's resnet or attention → slot 0 or 1 of its LDM layer; None for any other kind."""
    if kind == "resnets":
        return f"{layer}.0.{_ldm_resnet(rest)}"
    if kind == "attentions":
        return f"{layer}.1.{rest}"
    return None


def _unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Diffusers UNet2DConditionModel weights → the LDM UNetModel's names (SD 1.x/2.x layout)."""
    per = int(config["layers_per_block"]) + 1  # LDM blocks per diffusers down block: the layers + a downsampler
    with_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    simple = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        new: str | None = next((ldm + key[len(d) :] for d, ldm in simple.items() if key.startswith(d)), None)
        if new is None and parts[0] == "down_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":
                new = f"input_blocks.{(block + 1) * per}.0.op.{rest.removeprefix('conv.')}"
            else:
                new = _ldm_layer_part(f"input_blocks.{1 + block * per + index}", kind, rest)
        elif new is None and parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                new = f"middle_block.{2 * index}.{_ldm_resnet(rest)}"
            elif kind == "attentions":
                new = f"middle_block.1.{rest}"
        elif new is None and parts[0] == "up_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "upsamplers":
                slot = 2 if with_attention[block] else 1
                new = f"output_blocks.{block * per + per - 1}.{slot}.{rest}"
            else:
                new = _ldm_layer_part(f"output_blocks.{block * per + index}", kind, rest)
        if new is None:
            raise ValueError(f"unexpected UNet weight {key!r}")
        out[_LDM_UNET + new] = tensor
    return out


def _vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL weights → the LDM AutoencoderKL's names."""
    blocks = len(config["block_out_channels"])
    renames = [
        (".conv_shortcut.", ".nin_shortcut."),
        (".mid_block.resnets.0.", ".mid.block_1."),
        (".mid_block.resnets.1.", ".mid.block_2."),
        (".mid_block.attentions.0.", ".mid.attn_1."),
        (".conv_norm_out.", ".norm_out."),
        (".downsamplers.0.", ".downsample."),
        (".upsamplers.0.", ".upsample."),
        (".group_norm.", ".norm."),
        (".to_q.", ".q."),
        (".to_k.", ".k."),
        (".to_v.", ".v."),
        (".to_out.0.", ".proj_out."),
        (".resnets.", ".block."),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = "." + key
        match = re.match(r"^\.encoder\.down_blocks\.(\d+)\.", new)
        if match:
            new = f".encoder.down.{match.group(1)}." + new[match.end() :]
        match = re.match(r"^\.decoder\.up_blocks\.(\d+)\.", new)
        if match:  # LDM numbers the decoder's blocks from the lowest resolution up, diffusers from the top down
            new = f".decoder.up.{blocks - 1 - int(match.group(1))}." + new[match.end() :]
        for old_part, new_part in renames:
            new = new.replace(old_part, new_part)
        value = tensor
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", new):
            value = tensor.reshape(*tensor.shape, 1, 1)  # LDM's attention projections are 1×1 convolutions
        out[_LDM_VAE + new[1:]] = value
    return out


def _load_safetensors_dir(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder} has no .safetensors weights to export")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return state


def export_single_file(model_folder: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Write the diffusers folder's UNet, VAE and text encoder as one `.safetensors` checkpoint in the original
    LDM layout (what A1111 users keep in their models folder). Returns the written path.

    Raises ModelError when the folder lacks a component's safetensors weights.
    """
    folder = Path(model_folder)
    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    state = _unet_to_ldm(_load_safetensors_dir(folder / "unet"), unet_config)
    state.update(_vae_to_ldm(_load_safetensors_dir(folder / "vae"), vae_config))
    text = _load_safetensors_dir(folder / "text_encoder")
    state.update({_LDM_CLIP + key.removeprefix("text_model."): value for key, value in text.items()})
    from safetensors.torch import save_file

    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target
