"""The weight update each network type makes to one layer (prompts-and-models.md §3.5).

`layer_update(weights, layer, current, m, dyn, lora_dtype)` returns `(ΔW_f, extra bias)` for a layer whose weight is
now `current` (already changed by the networks before this one, §3.6):

    ΔW_f = m · D(scale · (ΔW + bias))        extra bias = m · ex_bias (no scale)

`ΔW` per type below, `bias` a key literally named `bias` (added to the weight update), `scale` the file's `scale`,
else `α/r` where the type has a rank r and the file an `alpha`, else 1 (OFT: always 1). `D` is the identity, or with
a `dora_scale` key (DoRA) `D(Δ) = dora_scale · (W+Δ)/‖W+Δ‖ − W`, the norm over the output axis (and kernel) for each
input column. The type of a layer is the first of LoRA, LoHa, IA3, LoKr, Full, Norm, GLoRA, OFT whose keys are there.

Precision as the reference: LoRA's tensors are converted to the model's compute dtype first; LyCORIS types compute in
the file's dtype; the caller adds the update in its dtype and casts the sum to the layer's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

import torch

from worker.engine.networks.errors import NetworkUnsupported

__all__ = ["COMMON_KEYS", "NETWORK_TYPES", "TYPE_KEYS", "layer_update", "network_type"]

Tensor = torch.Tensor
Weights = Mapping[str, Tensor]
Update = tuple[Tensor, list[int], Tensor | None, int | None]  # raw ΔW, its shape, ex_bias, rank r


def _has(weights: Weights, *names: str) -> bool:
    return all(name in weights for name in names)


#: The types in the reference's order of precedence, each with the test of whether a layer's keys are of that type.
NETWORK_TYPES: Final[tuple[tuple[str, Callable[[Weights], bool]], ...]] = (
    (
        "lora",
        lambda w: _has(w, "lora_up.weight", "lora_down.weight") or _has(w, "lora_B.weight", "lora_A.weight"),
    ),
    ("loha", lambda w: _has(w, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")),
    ("ia3", lambda w: _has(w, "weight")),
    (
        "lokr",
        lambda w: (
            ("lokr_w1" in w or _has(w, "lokr_w1_a", "lokr_w1_b"))
            and ("lokr_w2" in w or _has(w, "lokr_w2_a", "lokr_w2_b"))
        ),
    ),
    ("full", lambda w: _has(w, "diff")),
    ("norm", lambda w: _has(w, "w_norm", "b_norm")),
    ("glora", lambda w: _has(w, "a1.weight", "a2.weight", "b1.weight", "b2.weight")),
    ("oft", lambda w: "oft_blocks" in w or "oft_diag" in w),
)


#: The weight names each type reads (besides `alpha`, `scale`, `bias` and `dora_scale`, which every type reads).
TYPE_KEYS: Final[dict[str, frozenset[str]]] = {
    "lora": frozenset({"lora_up.weight", "lora_down.weight", "lora_B.weight", "lora_A.weight", "lora_mid.weight"}),
    "loha": frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}),
    "ia3": frozenset({"weight", "on_input"}),
    "lokr": frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}),
    "full": frozenset({"diff", "diff_b"}),
    "norm": frozenset({"w_norm", "b_norm"}),
    "glora": frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight"}),
    "oft": frozenset({"oft_blocks", "oft_diag", "rescale"}),
}
COMMON_KEYS: Final = frozenset({"alpha", "scale", "bias", "dora_scale"})


def network_type(weights: Weights) -> str | None:
    """The type of a layer's keys (the first that fits), or None."""
    return next((name for name, fits in NETWORK_TYPES if fits(weights)), None)


def _as_2d(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _rebuild(up: Tensor, down: Tensor, shape: list[int], dyn: int | None = None) -> Tensor:
    """`up · down` (the first `dyn` rank components only, when given) reshaped to `shape`."""
    up, down = _as_2d(up), _as_2d(down)
    if dyn is not None:
        up, down = up[:, :dyn], down[:dyn, :]
    return (up @ down).reshape(shape)


def _tucker(core: Tensor, up: Tensor, down: Tensor) -> Tensor:
    """The CP/Tucker rebuild `Σ_{n,m} core[n,m,k,l] · up[i,n] · down[m,j]` → `(i, j, k, l)`."""
    return torch.einsum("nmkl,in,mj->ijkl", core, _as_2d(up), _as_2d(down))


def _lora(weights: Weights, layer: torch.nn.Module, current: Tensor, dyn: int | None, dtype: torch.dtype) -> Update:
    if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
        raise NetworkUnsupported(f"LoRA on a {type(layer).__name__} layer")
    up = weights.get("lora_up.weight", weights.get("lora_B.weight"))
    down = weights.get("lora_down.weight", weights.get("lora_A.weight"))
    if up is None or down is None:  # network_type() said both are there
        raise NetworkUnsupported(f"LoRA keys {sorted(weights)} without an up and a down weight")
    up, down = up.to(dtype), down.to(dtype)
    if isinstance(layer, torch.nn.Linear):
        up, down = _as_2d(up), _as_2d(down)
    rank = int(down.shape[0])  # the full rank, also with dyn
    shape = [int(up.shape[0]), int(down.shape[1])]
    mid = weights.get("lora_mid.weight")
    if mid is not None:
        mid = mid.to(dtype)
        return _tucker(mid, up, down), shape + list(mid.shape[2:]), None, rank
    if down.dim() == 4:
        shape += list(down.shape[2:])
    return _rebuild(up, down, shape, dyn), shape, None, rank


def _loha(weights: Weights, current: Tensor) -> Update:
    w1a, w1b, w2a, w2b = (weights[k] for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
    t1, t2 = weights.get("hada_t1"), weights.get("hada_t2")
    if t1 is not None:
        # Tucker: w*_a is (rank, out), w*_b (rank, in); the core carries the kernel.
        shape = [int(w1a.shape[1]), int(w1b.shape[1]), *t1.shape[2:]]
        first = _cp(t1, w1a, w1b)
    else:
        shape = [int(w1a.shape[0]), int(w1b.shape[1]), *(w1b.shape[2:] if w1b.dim() == 4 else ())]
        first = _rebuild(w1a, w1b, shape)
    second = _cp(t2, w2a, w2b) if t2 is not None else _rebuild(w2a, w2b, shape)
    return first * second, shape, None, int(w1b.shape[0])


def _cp(core: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """LyCORIS' Tucker form: `Σ_{i,j} core[i,j,k,l] · wa[i,o] · wb[j,c]` → `(o, c, k, l)`."""
    return torch.einsum("ijkl,io,jc->ockl", core, _as_2d(wa), _as_2d(wb))


def _ia3(weights: Weights, current: Tensor) -> Update:
    w = weights["weight"]
    on_input = bool(weights["on_input"].item()) if "on_input" in weights else False
    # One factor per output row, or per input column with on_input; the kernel positions share it.
    view = [1, -1] if on_input else [-1, 1]
    factor = w.reshape(*view, *([1] * (current.dim() - 2)))
    return current * factor, list(current.shape), None, None


def _lokr(weights: Weights, current: Tensor) -> Update:
    w1 = weights.get("lokr_w1")
    if w1 is None:
        w1 = weights["lokr_w1_a"] @ weights["lokr_w1_b"]
    w2 = weights.get("lokr_w2")
    if w2 is None:
        t2 = weights.get("lokr_t2")
        a, b = weights["lokr_w2_a"], weights["lokr_w2_b"]
        w2 = _cp(t2, a, b) if t2 is not None else _as_2d(a) @ _as_2d(b)
    rank = None
    if "lokr_w2_b" in weights:
        rank = int(weights["lokr_w2_b"].shape[0])
    elif "lokr_w1_b" in weights:
        rank = int(weights["lokr_w1_b"].shape[0])
    shape = [int(w1.shape[0] * w2.shape[0]), int(w1.shape[1] * w2.shape[1])]
    if current.dim() == 4:
        shape = list(current.shape)
    if w2.dim() == 4:
        w1 = w1.reshape(*w1.shape, 1, 1)
    return torch.kron(w1, w2.contiguous()).reshape(shape), shape, None, rank


def _full(weights: Weights, current: Tensor) -> Update:
    diff = weights["diff"]
    return diff, list(diff.shape), weights.get("diff_b"), None


def _norm(weights: Weights, current: Tensor) -> Update:
    w_norm = weights["w_norm"]
    return w_norm, list(w_norm.shape), weights.get("b_norm"), None


def _glora(weights: Weights, current: Tensor) -> Update:
    a1, a2, b1, b2 = (_as_2d(weights[k]) for k in ("a1.weight", "a2.weight", "b1.weight", "b2.weight"))
    w = _as_2d(current).to(a1.dtype)
    raw = b2 @ b1 + (w @ a2) @ a1
    return raw, [int(raw.shape[0]), int(raw.shape[1])], None, None  # no rank: α is ignored, as in the reference


def _out_features(layer: torch.nn.Module) -> int:
    if isinstance(layer, torch.nn.Linear):
        return int(layer.out_features)
    if isinstance(layer, torch.nn.Conv2d):
        return int(layer.out_channels)
    raise NetworkUnsupported(f"OFT on a {type(layer).__name__} layer")


def _cayley(blocks: Tensor, constraint: float) -> Tensor:
    """The orthogonal `(I + Q)(I − Q)⁻¹` of `Q = B − Bᵀ` per block; ‖Q‖ (over all blocks) clamped to `constraint`."""
    q = blocks - blocks.transpose(-1, -2)
    if constraint != 0:
        norm = torch.norm(q.flatten())
        q = q * ((torch.clamp(norm, max=constraint) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(blocks.shape[-1], device=blocks.device, dtype=blocks.dtype)
    return torch.matmul(eye + q, (eye - q).float().inverse()).to(blocks.dtype)


def _swap_pairs(x: Tensor, k: int, inverse: bool) -> Tensor:
    """BOFT's butterfly permutation of the rows: `(c g k) → (c k g)` with g = 2 (or back with `inverse`)."""
    rest = x.shape[1:]
    if inverse:
        return x.reshape(-1, k, 2, *rest).transpose(1, 2).reshape(x.shape)
    return x.reshape(-1, 2, k, *rest).transpose(1, 2).reshape(x.shape)


def _oft(weights: Weights, layer: torch.nn.Module, current: Tensor) -> Update:
    out_dim = _out_features(layer)
    rows_first = current
    if "oft_blocks" in weights:
        blocks = weights["oft_blocks"]
        alpha = float(weights["alpha"].item()) if "alpha" in weights else 0.0
        rotation = _cayley(blocks, alpha * out_dim)
    else:  # the old LyCORIS `oft_diag`: the blocks are the rotation itself
        rotation = weights["oft_diag"]
    if rotation.dim() == 4:  # BOFT: m butterfly factors of (blocks, b, b)
        size = int(rotation.shape[2])
        merged = rows_first
        for i in range(int(rotation.shape[0])):
            k = 2**i * (size // 2)
            merged = _swap_pairs(merged, k, inverse=False)
            grouped = merged.reshape(-1, size, *merged.shape[1:])
            grouped = torch.einsum("dij,dj...->di...", rotation[i].to(grouped.dtype), grouped)
            merged = _swap_pairs(grouped.reshape(merged.shape), k, inverse=True)
    else:
        size = int(rotation.shape[-1])
        grouped = rows_first.reshape(out_dim // size, size, *rows_first.shape[1:])
        # Each block of rows is contracted over the rotation's FIRST index (Rᵀ · W_block), as the reference does.
        grouped = torch.einsum("knm,kn...->km...", rotation.to(grouped.dtype), grouped)
        merged = grouped.reshape(rows_first.shape)
    rescale = weights.get("rescale")
    if rescale is not None:
        merged = rescale.reshape(-1, *([1] * (current.dim() - 1))).to(merged) * merged
    return merged - current.to(merged.dtype), list(current.shape), None, None


def _scale(weights: Weights, rank: int | None, kind: str) -> float:
    if kind == "oft":
        return 1.0
    if "scale" in weights:
        return float(weights["scale"].item())
    if rank is not None and "alpha" in weights:
        return float(weights["alpha"].item()) / rank
    return 1.0


def _dora(delta: Tensor, current: Tensor, dora_scale: Tensor) -> Tensor:
    """`dora_scale · (W+Δ)/‖W+Δ‖ − W`, the norm over the output axis (and kernel) of each input column."""
    w = current.to(delta.dtype)
    merged = w + delta
    columns = merged.shape[1]
    norm = merged.transpose(0, 1).reshape(columns, -1).norm(dim=1, keepdim=True)
    norm = norm.reshape(columns, *([1] * (merged.dim() - 1))).transpose(0, 1)
    return merged * (dora_scale.to(delta) / norm) - w


def layer_update(
    weights: Weights,
    layer: torch.nn.Module,
    current: Tensor,
    multiplier: float,
    dyn: int | None,
    lora_dtype: torch.dtype,
) -> tuple[Tensor, Tensor | None]:
    """`(ΔW_f, extra bias or None)` of one network for one layer whose weight is `current` (see the module's
    docstring). Raises NetworkUnsupported when the keys fit no type or the type cannot change this layer."""
    kind = network_type(weights)
    current = current.detach()
    # The file's tensors live on the CPU; the update is computed where the layer is (the GPU on a worker).
    weights = {name: tensor.to(current.device) for name, tensor in weights.items()}
    if kind == "lora":
        raw, shape, ex_bias, rank = _lora(weights, layer, current, dyn, lora_dtype)
    elif kind == "loha":
        raw, shape, ex_bias, rank = _loha(weights, current)
    elif kind == "ia3":
        raw, shape, ex_bias, rank = _ia3(weights, current)
    elif kind == "lokr":
        raw, shape, ex_bias, rank = _lokr(weights, current)
    elif kind == "full":
        raw, shape, ex_bias, rank = _full(weights, current)
    elif kind == "norm":
        raw, shape, ex_bias, rank = _norm(weights, current)
    elif kind == "glora":
        raw, shape, ex_bias, rank = _glora(weights, current)
    elif kind == "oft":
        raw, shape, ex_bias, rank = _oft(weights, layer, current)
    else:
        raise NetworkUnsupported(f"keys {sorted(weights)} fit no LoRA/LyCORIS type")
    raw = raw.to(current.device)
    bias = weights.get("bias")
    if bias is not None:
        raw = (raw.reshape(bias.shape) + bias.to(raw)).reshape(shape)
    if len(shape) == 4:
        raw = raw.reshape(shape)
    if raw.numel() == current.numel():
        raw = raw.reshape(current.shape)
    raw = raw * _scale(weights, rank, kind)
    dora_scale = weights.get("dora_scale")
    if dora_scale is not None:
        if current.dim() < 2:
            raise NetworkUnsupported("DoRA (dora_scale) on a layer without input columns")
        raw = _dora(raw, current, dora_scale.to(current.device))
    extra = ex_bias.to(current.device) * multiplier if ex_bias is not None else None
    return raw * multiplier, extra
