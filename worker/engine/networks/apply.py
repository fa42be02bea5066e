"""Applying a set of networks to a loaded model, and switching sets fast (prompts-and-models.md §3.6).

The weights are merged: for each layer any network changes, in prompt order, `W ← W + ΔW_f` with `ΔW_f` computed
against the layer's current (already changed) weight. Before that the layers the previous set changed are restored
from a CPU copy of their original weight and bias, kept only for the layers some network touched. So:

* the same set (same files, multipliers, dyn) as the previous job is a no-op;
* a different set restores what the previous one touched and applies the new one; no checkpoint reload;
* the empty set restores the exact original weights (bit for bit: they are copied back, not un-added);
* a multiplier of 0 leaves the layers of that part of the model untouched (they are skipped).

Thread safety: a loaded model renders one job at a time on a worker (the job runner holds it for the whole render),
and that job activates its networks before encoding its prompts. A lock per model still serialises activations, but
nothing stops another thread from reading weights while they are being switched: do not share a model between
concurrent renders.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from shared.prompts.extra_networks import LoraRequest
from worker.engine.networks.errors import NetworkMatchesNothing, NetworkShapeMismatch, NetworkUnsupported
from worker.engine.networks.files import FileIdentity, NetworkFile, read_network_file
from worker.engine.networks.layers import ModelLayers, TargetLayer
from worker.engine.networks.updates import COMMON_KEYS, TYPE_KEYS, layer_update, network_type

__all__ = ["AppliedNetworks", "MatchedNetwork", "activate_networks", "deactivate_networks", "match_network"]

_DOTTED_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
_KEPT_MATCHES = 8  # matched networks kept per model (their tensors are the file's, shared with the file cache)
_PEFT_WEIGHT_NAMES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}


@dataclass(frozen=True, eq=False)
class MatchedNetwork:
    """A network file's keys grouped by the model layer they change. `dotted` when the file uses diffusers/PEFT key
    names (P10); `unmatched` the keys that name no layer of the model or that the layer's type does not read."""

    file: NetworkFile
    layers: tuple[tuple[TargetLayer, dict[str, torch.Tensor]], ...]
    dotted: bool
    unmatched: tuple[str, ...]


def match_network(file: NetworkFile, layers: ModelLayers, name: str) -> MatchedNetwork:
    """Group `file`'s keys by layer. Raises NetworkMatchesNothing when no key names a layer of the model and
    NetworkUnsupported when a layer's keys fit no network type."""
    grouped: dict[str, tuple[TargetLayer, dict[str, torch.Tensor]]] = {}
    unmatched: list[str] = []
    dotted = False
    for key, tensor in file.tensors.items():
        layer_name, _, weight_name = key.partition(".")
        target = layers.by_name.get(layer_name) if weight_name else None
        if target is None and key.startswith(_DOTTED_PREFIXES):
            found = layers.find_dotted(key)
            if found is not None:
                target, weight_name = found
                weight_name = _PEFT_WEIGHT_NAMES.get(weight_name, weight_name)
                dotted = True
        if target is None:
            unmatched.append(key)
            continue
        grouped.setdefault(target.key, (target, {}))[1][weight_name] = tensor
    if not grouped:
        raise NetworkMatchesNothing(
            f"the network {name!r} ({file.path.name}) changes no layer of this model: none of its "
            f"{len(file.tensors)} keys names one (a file for another architecture?)"
        )
    for target, weights in grouped.values():
        kind = network_type(weights)
        if kind is None:
            raise NetworkUnsupported(
                f"the network {name!r} ({file.path.name}): the keys {sorted(weights)} for {target.key} fit no "
                "LoRA/LyCORIS type"
            )
        # Keys its type does not read (PEFT's lora_magnitude_vector, a second type's keys) do nothing: say so.
        unmatched += [f"{target.key}.{key}" for key in sorted(set(weights) - TYPE_KEYS[kind] - COMMON_KEYS)]
    return MatchedNetwork(file, tuple(grouped.values()), dotted, tuple(unmatched))


@dataclass(frozen=True)
class _Original:
    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass(frozen=True)
class AppliedNetworks:
    """What an activation did: `changed` the requests whose network changed at least one layer, with their files'
    short hashes, in prompt order; `networks` every matched network of the set (for warnings)."""

    changed: tuple[tuple[LoraRequest, str], ...] = ()
    networks: tuple[tuple[LoraRequest, MatchedNetwork], ...] = ()


Signature = tuple[tuple[str, FileIdentity, float, float, int | None], ...]


@dataclass(eq=False)
class _ModelNetworks:
    """Per loaded model: the index of its layers, the originals of the layers changed now, the active set."""

    layers: ModelLayers
    originals: dict[str, _Original] = field(default_factory=dict)
    signature: Signature = ()
    applied: AppliedNetworks = field(default_factory=AppliedNetworks)
    matched: dict[FileIdentity, MatchedNetwork] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_states: weakref.WeakKeyDictionary[Any, _ModelNetworks] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def _state(model: Any) -> _ModelNetworks:
    with _states_lock:
        state = _states.get(model)
        if state is None:
            state = _ModelNetworks(ModelLayers(model))
            _states[model] = state
        return state


def _weight(module: torch.nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, module.weight)


def _bias(module: torch.nn.Module) -> torch.Tensor | None:
    return cast("torch.Tensor | None", getattr(module, "bias", None))


def _restore(state: _ModelNetworks, keep: set[str]) -> None:
    """Put back the original weight and bias of every changed layer; forget the copies of layers not in `keep`."""
    with torch.no_grad():
        for key, original in list(state.originals.items()):
            module = state.layers.by_path[key].module
            _weight(module).copy_(original.weight)
            bias = _bias(module)
            if original.bias is None:
                if bias is not None:
                    module.register_parameter("bias", None)  # the layer had none: an extra bias made it
            elif bias is not None:
                bias.copy_(original.bias)
            if key not in keep:
                del state.originals[key]


def _remember(state: _ModelNetworks, target: TargetLayer) -> None:
    if target.key in state.originals:
        return
    module = target.module
    bias = _bias(module)
    state.originals[target.key] = _Original(
        _weight(module).detach().to("cpu", copy=True),
        bias.detach().to("cpu", copy=True) if bias is not None else None,
    )


def _apply_layer(
    request: LoraRequest,
    network: MatchedNetwork,
    target: TargetLayer,
    weights: dict[str, torch.Tensor],
    dtype: torch.dtype,
) -> None:
    multiplier = request.te if target.is_text else request.unet
    module = target.module
    current = _weight(module)
    delta, extra_bias = layer_update(weights, module, current, multiplier, request.dyn, dtype)
    if current.dim() == 4 and current.shape[1] == 9 and delta.dim() == 4 and delta.shape[1] == 4:
        # A 9-channel inpainting UNet: the update of the 4 latent channels, zero for the mask and masked image.
        delta = torch.nn.functional.pad(delta, (0, 0, 0, 0, 0, 5))
    if delta.shape != current.shape:
        raise NetworkShapeMismatch(
            f"the network {request.name!r} ({network.file.path.name}) does not fit this model: its update of "
            f"{target.key} has shape {tuple(delta.shape)}, the layer {tuple(current.shape)}"
        )
    bias = _bias(module)
    if extra_bias is not None and bias is not None and extra_bias.numel() != bias.numel():
        raise NetworkShapeMismatch(
            f"the network {request.name!r} ({network.file.path.name}): its bias of {target.key} has "
            f"{extra_bias.numel()} values, the layer {bias.numel()}"
        )
    current.copy_((current.to(delta.dtype) + delta).to(current.dtype))
    if extra_bias is not None:
        if bias is None:
            created = torch.nn.Parameter(extra_bias.reshape(-1).to(current.dtype), requires_grad=False)
            module.register_parameter("bias", created)
        else:
            bias.copy_((bias + extra_bias.reshape(bias.shape)).to(bias.dtype))


def _match(state: _ModelNetworks, request: LoraRequest, path: Path) -> MatchedNetwork:
    file = read_network_file(path)
    matched = state.matched.get(file.identity)
    if matched is None or matched.file is not file:
        matched = match_network(file, state.layers, request.name)
        state.matched = {k: v for k, v in state.matched.items() if k[0] != file.identity[0]}
        state.matched[file.identity] = matched
        while len(state.matched) > _KEPT_MATCHES:
            del state.matched[next(iter(state.matched))]
    return matched


def activate_networks(
    model: Any, requests: Sequence[tuple[LoraRequest, Path]], *, compute_dtype: torch.dtype | None = None
) -> AppliedNetworks:
    """Make `requests` (each a tag's request and its file, in prompt order) the model's active networks. A no-op
    when they are what is active already. On any error the model is left with its original weights and the error
    raised (NetworkError subclasses). `compute_dtype` is LoRA's (the model's dtype by default)."""
    state = _state(model)
    dtype = compute_dtype or cast(torch.dtype, getattr(model, "dtype", torch.float32))
    with state.lock, torch.no_grad():
        try:
            matched = [(request, _match(state, request, path)) for request, path in requests]
        except BaseException:
            _restore(state, keep=set())
            state.signature, state.applied = (), AppliedNetworks()
            raise
        signature: Signature = tuple(
            (request.name, network.file.identity, request.te, request.unet, request.dyn) for request, network in matched
        )
        if signature == state.signature:
            return state.applied
        touched = {
            target.key
            for request, network in matched
            for target, _ in network.layers
            if (request.te if target.is_text else request.unet) != 0
        }
        _restore(state, keep=touched)
        state.signature, state.applied = (), AppliedNetworks()
        changed: list[tuple[LoraRequest, str]] = []
        try:
            for request, network in matched:
                did_change = False
                for target, weights in network.layers:
                    if (request.te if target.is_text else request.unet) == 0:
                        continue
                    _remember(state, target)
                    _apply_layer(request, network, target, weights, dtype)
                    did_change = True
                if did_change:
                    changed.append((request, network.file.short_hash))
        except BaseException:
            _restore(state, keep=set())
            raise
        state.signature = signature
        state.applied = AppliedNetworks(tuple(changed), tuple(matched))
        return state.applied


def deactivate_networks(model: Any) -> None:
    """Restore the model's original weights (the same as activating the empty set)."""
    activate_networks(model, [])
