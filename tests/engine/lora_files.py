"""Writing LoRA / LyCORIS files for the tests, and the reference's merge written out independently of the engine
(prompts-and-models.md §3.5): explicit loops, matrix products and permutation matrices, not the engine's code."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

Tensors = dict[str, torch.Tensor]


def rand(*shape: int, seed: int, scale: float = 0.1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator) * scale


def write_safetensors(path: Path, layer_keys: dict[str, Tensors], metadata: dict[str, str] | None = None) -> Path:
    """A network file with `<layer>.<weight name>` keys."""
    flat = {
        f"{layer}.{name}": tensor.contiguous()
        for layer, weights in layer_keys.items()
        for name, tensor in weights.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(path), metadata=metadata)
    return path


# -- expected raw updates ΔW (before scale and multiplier) ----------------------------------------------------------


def lora_delta(up: torch.Tensor, down: torch.Tensor, dyn: int | None = None) -> torch.Tensor:
    """Linear: up (out, r) · down (r, in). Conv: down (r, in, k, k), up (out, r, 1, 1): a sum over r per kernel
    position."""
    rank = down.shape[0] if dyn is None else dyn
    if down.dim() == 2:
        return up[:, :rank] @ down[:rank]
    out, inp, kh, kw = up.shape[0], down.shape[1], down.shape[2], down.shape[3]
    result = torch.zeros(out, inp, kh, kw)
    for r in range(rank):
        result += up[:, r, 0, 0].reshape(out, 1, 1, 1) * down[r].reshape(1, inp, kh, kw)
    return result


def tucker_delta(mid: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """ΔW[:, :, k, l] = up · mid[:, :, k, l] · down, for up (out, r), mid (r, r, kh, kw), down (r, in)."""
    out, inp = up.shape[0], down.shape[1]
    result = torch.zeros(out, inp, mid.shape[2], mid.shape[3])
    for row in range(mid.shape[2]):
        for column in range(mid.shape[3]):
            result[:, :, row, column] = up @ mid[:, :, row, column] @ down
    return result


def kron_conv(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The Kronecker product of w1 (o1, i1) and w2 (o2, i2, k, k) over the channel axes, by its definition."""
    o1, i1 = w1.shape
    o2, i2, kh, kw = w2.shape
    result = torch.zeros(o1 * o2, i1 * i2, kh, kw)
    for a in range(o1):
        for c in range(i1):
            result[a * o2 : (a + 1) * o2, c * i2 : (c + 1) * i2] = w1[a, c] * w2
    return result


def cayley(blocks: torch.Tensor) -> torch.Tensor:
    """R = (I + Q)(I − Q)⁻¹, Q = B − Bᵀ, per block."""
    eye = torch.eye(blocks.shape[-1])
    q = blocks - blocks.transpose(-1, -2)
    return (eye + q) @ torch.linalg.inv(eye - q)


def oft_merged(weight: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """The reference contracts each block of rows with the rotation's first index: rows_k ← R_kᵀ · rows_k."""
    rows = weight.reshape(weight.shape[0], -1)
    size = rotations.shape[-1]
    out = torch.empty_like(rows)
    for k in range(rotations.shape[0]):
        out[k * size : (k + 1) * size] = rotations[k].T @ rows[k * size : (k + 1) * size]
    return out.reshape(weight.shape)


def boft_merged(weight: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """BOFT as matrices: for factor i, permute the rows so that rows 2^i·b/2 apart are neighbours (P_i), multiply by
    the block-diagonal of the factor's rotations, permute back: W ← P_iᵀ · diag(R_i) · P_i · W."""
    n = weight.shape[0]
    rows = weight.reshape(n, -1)
    size = rotations.shape[-1]
    for i in range(rotations.shape[0]):
        k = 2**i * (size // 2)
        order = torch.arange(n).reshape(-1, 2, k).transpose(1, 2).reshape(-1)  # (c g k) → (c k g)
        permute = torch.eye(n)[order]
        rows = permute.T @ torch.block_diag(*rotations[i]) @ permute @ rows
    return rows.reshape(weight.shape)


def dora_merged(weight: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """dora_scale · (W+Δ) / ‖W+Δ‖ with the norm of each input column (over the output axis), minus W."""
    merged = weight + delta
    norms = torch.stack([merged[:, j].norm() for j in range(merged.shape[1])]).reshape(1, -1)
    return dora_scale.reshape(1, -1) * merged / norms - weight
