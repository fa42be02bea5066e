"""Which layer of the loaded model a network file's key names (prompts-and-models.md §3.4).

The reference maps every key onto its LDM/sgm module names; the farm's models are diffusers modules, so the index
here goes the other way: every weight-carrying layer of the UNet and text encoders (Linear, Conv2d, GroupNorm,
LayerNorm) is listed under each name a file may give it:

* kohya, diffusers layout with underscores (SD 1.x/2.x): `lora_unet_down_blocks_0_attentions_0_…`,
  `lora_te_text_model_…`;
* kohya, sgm/LDM layout (SDXL files, and SD 1.x files trained on the LDM UNet): `lora_unet_input_blocks_4_1_…`,
  `lora_unet_middle_block_1_…`, `lora_unet_output_blocks_…`, resnet parts `in_layers_2`, `emb_layers_1`, …;
* `lora_te1_` (the first text encoder; SD 1.x/2.x and SDXL) and `lora_te2_` (SDXL's second);
* kohya OFT `oft_unet_…` (the same UNet names);
* dotted diffusers/PEFT keys `unet.<module path>.lora_A.weight`, `text_encoder.…`, `text_encoder_2.…` (the reference
  ignores such files; the farm applies them and warns, P10).

A file key is split at its first dot into the layer name and the weight name (`lora_up.weight`, `alpha`, …);
dotted keys at the longest module path instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch

__all__ = ["ModelLayers", "TargetLayer", "sgm_unet_name"]

_LAYER_TYPES: Final = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)

# diffusers resnet part → LDM ResBlock part
_RESNET_PARTS: Final = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP_LEVEL: Final = {
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_BLOCK_PART: Final = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$"
)
_MID_PART: Final = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


@dataclass(frozen=True, eq=False)
class TargetLayer:
    """A layer a network may change: `key` is its dotted path with the component first (`unet.conv_in`)."""

    key: str
    module: torch.nn.Module
    is_text: bool  # a text-encoder layer: the tag's te multiplier applies, else the unet one


def _per_block(value: Any, blocks: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * blocks


def _resnet_rest(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _RESNET_PARTS:
        return rest
    return f"{_RESNET_PARTS[head]}.{tail}" if tail else _RESNET_PARTS[head]


def sgm_unet_name(name: str, layers_per_block: Sequence[int], up_has_attention: Sequence[bool]) -> str | None:
    """The sgm/LDM name of a diffusers UNet module (`down_blocks.1.attentions.0.proj_in` → `input_blocks.4.1.proj_in`
    with 2 layers per block), or None where the LDM UNet has no such module. Down block i holds layers_per_block[i]
    layers, up block i one more; each layer is one input/output block, its resnet at sub-index 0 and attention at 1."""
    for diffusers_name, ldm_name in _TOP_LEVEL.items():
        if name == diffusers_name or name.startswith(diffusers_name + "."):
            return ldm_name + name[len(diffusers_name) :]
    match = _MID_PART.match(name)
    if match:
        part, index, rest = match.group(1), int(match.group(2)), match.group(3)
        if part == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * index}.{_resnet_rest(rest)}"
    match = _BLOCK_PART.match(name)
    if not match:
        return None
    side, block, part, rest = match.group(1), int(match.group(2)), match.group(3), match.group(5)
    index = int(match.group(4))
    if side == "down_blocks":
        first = 1 + sum(n + 1 for n in layers_per_block[:block])
        if part == "downsamplers":
            return f"input_blocks.{first + layers_per_block[block]}.0.op" if rest == "conv" else None
    else:
        up_layers = list(reversed(layers_per_block))  # up block i mirrors down block n-1-i, with one layer more
        first = sum(n + 1 for n in up_layers[:block])
        if part == "upsamplers":
            sub = 2 if up_has_attention[block] else 1
            return f"output_blocks.{first + up_layers[block]}.{sub}.{rest}"
    sub = 0 if part == "resnets" else 1
    rest = _resnet_rest(rest) if part == "resnets" else rest
    return f"{'input_blocks' if side == 'down_blocks' else 'output_blocks'}.{first + index}.{sub}.{rest}"


def _weighted_layers(module: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, child in module.named_modules():
        if name and isinstance(child, _LAYER_TYPES):
            yield name, child


class ModelLayers:
    """The layers of one loaded model under every name a network file may use (see the module's docstring)."""

    def __init__(self, model: Any) -> None:
        self.by_name: dict[str, TargetLayer] = {}
        self.by_path: dict[str, TargetLayer] = {}  # `unet.conv_in`, `text_encoder.encoder.layers.0.mlp.fc1`
        self._dotted: dict[str, TargetLayer] = {}  # the paths dotted files may use (also `text_model.`-prefixed)
        text_encoder_2 = getattr(model, "text_encoder_2", None)
        self._add_unet(model.unet)
        first_prefixes = ("lora_te1_",) if text_encoder_2 is not None else ("lora_te_", "lora_te1_")
        self._add_text("text_encoder", model.text_encoder, first_prefixes)
        if text_encoder_2 is not None:
            self._add_text("text_encoder_2", text_encoder_2, ("lora_te2_",))

    def _add(self, names: Sequence[str], layer: TargetLayer, dotted: Sequence[str] = ()) -> None:
        for name in names:
            self.by_name.setdefault(name, layer)
        self.by_path[layer.key] = layer
        for path in (layer.key, *dotted):
            self._dotted.setdefault(path, layer)

    def _add_unet(self, unet: torch.nn.Module) -> None:
        config: Any = getattr(unet, "config", {})
        down_types = list(config.get("down_block_types") or ())
        up_types = list(config.get("up_block_types") or ())
        per_block = _per_block(config.get("layers_per_block", 2), len(down_types))
        up_has_attention = ["CrossAttn" in t for t in up_types]
        for name, module in _weighted_layers(unet):
            layer = TargetLayer(f"unet.{name}", module, is_text=False)
            flat = name.replace(".", "_")
            names = [f"lora_unet_{flat}", f"oft_unet_{flat}"]
            sgm = sgm_unet_name(name, per_block, up_has_attention) if down_types else None
            if sgm is not None:
                names += [f"lora_unet_{sgm.replace('.', '_')}", f"oft_unet_{sgm.replace('.', '_')}"]
            self._add(names, layer)

    def _add_text(self, component: str, encoder: torch.nn.Module, prefixes: Sequence[str]) -> None:
        for name, module in _weighted_layers(encoder):
            layer = TargetLayer(f"{component}.{name}", module, is_text=True)
            # Files name the layers of HF's CLIP under `text_model.`; transformers 5's CLIPTextModel has no such
            # wrapper (CLIPTextModelWithProjection still has).
            hf_name = name if name.startswith("text_model.") or name == "text_projection" else f"text_model.{name}"
            self._add([prefix + hf_name.replace(".", "_") for prefix in prefixes], layer, [f"{component}.{hf_name}"])

    def find_dotted(self, key: str) -> tuple[TargetLayer, str] | None:
        """The layer and weight name of a dotted diffusers/PEFT key (`unet.a.b.lora_A.weight`), or None."""
        parts = key.split(".")
        for end in range(len(parts) - 1, 1, -1):
            layer = self._dotted.get(".".join(parts[:end]))
            if layer is not None:
                return layer, ".".join(parts[end:])
        return None
