"""Export a diffusers model folder as one single-file checkpoint in the original (LDM / A1111, or sgm for SDXL)
layout, and a model's VAE as a standalone VAE file.

Only the tests need it: they turn the tiny models into the kind of `.safetensors` file A1111 users keep in their
models folder, to test the engine's single-file and VAE-file loaders without downloading one.
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
from worker.engine.models.single_file import EMBEDDED_CONFIGS_KEY

__all__ = ["export_sgm_single_file", "export_single_file", "export_vae_file"]

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


# ----------------------------------------------------------------------------------------------------------------
# SDXL (sgm layout), OpenCLIP text encoders, and the configs a file may carry

_SGM_CLIP_L: Final = "conditioner.embedders.0.transformer.text_model."
_SGM_BIG_G: Final = "conditioner.embedders.1.model."
_SD2_OPEN_CLIP: Final = "cond_stage_model.model."

# Diffusers CLIP encoder-layer parts → OpenCLIP residual-block parts (q/k/v are joined into in_proj below).
_OPEN_CLIP_LAYER_PARTS: Final = (
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)


def _text_to_open_clip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Diffusers CLIPTextModel(WithProjection) weights → OpenCLIP's text tower names under `prefix` (the layout of
    SD 2.x's `cond_stage_model.model.` and SDXL's `conditioner.embedders.1.model.`)."""
    plain = {key.removeprefix("text_model."): value for key, value in state.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in plain.items():
        if key == "embeddings.position_ids":
            continue
        if key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = tensor
        elif key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = tensor
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.removeprefix("final_layer_norm.")] = tensor
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()  # OpenCLIP multiplies x @ P
        elif key.startswith("encoder.layers."):
            layer, rest = key.removeprefix("encoder.layers.").split(".", 1)
            block = f"{prefix}transformer.resblocks.{layer}."
            match = re.match(r"^self_attn\.(q|k|v)_proj\.(weight|bias)$", rest)
            if match:
                qkv.setdefault((block, match.group(2)), {})[match.group(1)] = tensor
                continue
            for diffusers_part, open_clip_part in _OPEN_CLIP_LAYER_PARTS:
                if rest.startswith(diffusers_part):
                    out[block + open_clip_part + rest.removeprefix(diffusers_part)] = tensor
                    break
            else:
                raise ValueError(f"unexpected text encoder weight {key!r}")
        else:
            raise ValueError(f"unexpected text encoder weight {key!r}")
    for (block, kind), parts in qkv.items():
        out[f"{block}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _carried_configs(folder: Path) -> str:
    """The folder's config and tokenizer files (not its weights) as the JSON the loader reads from a checkpoint's
    `renderfarm.configs` metadata."""
    files = {
        str(path.relative_to(folder)): path.read_text(encoding="utf-8")
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix in (".json", ".txt") and not path.name.startswith(".")
    }
    return json.dumps(files, sort_keys=True)


def export_sgm_single_file(
    model_folder: str | os.PathLike[str], destination: str | os.PathLike[str], *, carry_configs: bool = True
) -> Path:
    """Write a diffusers folder as one `.safetensors` checkpoint in the original layout of its family, with its
    configs in the metadata (`carry_configs`) so that it loads offline without `config=`:

    * SDXL (a `text_encoder_2/`): sgm names — `model.diffusion_model.*` (the added embedding as `label_emb.0.*`),
      `first_stage_model.*`, CLIP-L under `conditioner.embedders.0.transformer.text_model.*`, bigG under
      `conditioner.embedders.1.model.*` with OpenCLIP names;
    * SD 2.x (a GELU text encoder): the text encoder under `cond_stage_model.model.*` with OpenCLIP names;
    * SD 1.x: as `export_single_file`.
    """
    folder = Path(model_folder)
    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    text_config = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    unet = dict(_load_safetensors_dir(folder / "unet"))
    added = {k: unet.pop(k) for k in list(unet) if k.startswith("add_embedding.")}
    state = _unet_to_ldm(unet, unet_config)
    for key, tensor in added.items():  # SDXL's vector-conditioning MLP: sgm's label_emb.0 (Linear, SiLU, Linear)
        layer = {"linear_1": "0", "linear_2": "2"}[key.split(".")[1]]
        state[f"{_LDM_UNET}label_emb.0.{layer}.{key.split('.', 2)[2]}"] = tensor
    state.update(_vae_to_ldm(_load_safetensors_dir(folder / "vae"), vae_config))
    text = _load_safetensors_dir(folder / "text_encoder")
    if (folder / "text_encoder_2").is_dir():
        state.update({_SGM_CLIP_L + key.removeprefix("text_model."): value for key, value in text.items()})
        state.update(_text_to_open_clip(_load_safetensors_dir(folder / "text_encoder_2"), _SGM_BIG_G))
    elif text_config.get("hidden_act") == "gelu":
        state.update(_text_to_open_clip(text, _SD2_OPEN_CLIP))
    else:
        state.update({_LDM_CLIP + key.removeprefix("text_model."): value for key, value in text.items()})
    from safetensors.torch import save_file

    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {EMBEDDED_CONFIGS_KEY: _carried_configs(folder)} if carry_configs else None
    save_file({k: v.contiguous() for k, v in state.items()}, str(target), metadata=metadata)
    return target


def export_vae_file(model_folder: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Write a diffusers folder's VAE as a standalone VAE file in LDM names (no prefix), as A1111's VAE folder
    holds them (`.safetensors`, or `.pt` with the tensors under `state_dict` plus a `loss.*` entry)."""
    folder = Path(model_folder)
    vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    state = {
        k.removeprefix(_LDM_VAE): v.contiguous()
        for k, v in _vae_to_ldm(_load_safetensors_dir(folder / "vae"), vae_config).items()
    }
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(target))
    else:
        torch.save({"state_dict": {**state, "loss.logvar": torch.zeros(())}}, target)
    return target
