"""The "NV" random source: NVIDIA's Philox 4x32-10 normal stream, computed on the CPU (docs/engine.md "Noise and
random sources").

The webui's option ``randn_source = "NV"`` makes a CPU produce the numbers that ``torch.randn`` gives on a CUDA device
for the same seed, so that a seed renders alike on any machine. This module implements it from two published pieces:

* **Philox 4x32-10** (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
  counter-based generator. A 128-bit counter (four uint32 words) and a 64-bit key (two words) go through ten rounds;
  each round multiplies counter words 0 and 2 by 0xD2511F53 and 0xCD9E8D57 (64-bit products split into high and low
  halves) and mixes the halves with the other words and the key; between rounds the key words grow by the Weyl
  constants 0x9E3779B9 and 0xBB67AE85. Checked against the Random123 known-answer vectors
  (``tests/unit/test_philox.py``).
* **The layout the reference uses** for one draw of ``n`` numbers: the key is the seed (low word, high word), counter
  word 0 is the generator's *offset* (how many draws it has made), word 1 is 0, word 2 is the element's flat index and
  word 3 is 0. Output words 0 and 1 of each element become one normal number by the first half of a Box–Muller
  transform, ``u = (w0 + ½)·2⁻³²``, ``v = (w1 + ½)·2⁻³²·2π`` and ``√(−2·ln u)·sin v``, evaluated in float64 with the
  reference's float32 constants (2⁻³² and 2⁻³²·float32(2π)) and rounded to float32. Each draw advances the offset by
  one, whatever its size.

Everything is vectorised with NumPy uint64 arithmetic (a product of two uint32 values always fits in 64 bits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["PhiloxGenerator", "philox4x32_10", "philox_normal"]

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_WEYL = (np.uint64(0x9E3779B9), np.uint64(0xBB67AE85))
_ROUNDS = 10

# The reference's Box–Muller scale factors: the decimals 2.3283064e-10 (≈ 2⁻³²) and 2.3283064e-10 · 6.2831855
# (≈ 2⁻³²·2π) rounded to float32, then used in a float64 computation. As float32 numbers they are exactly 2⁻³² and
# 2⁻³²·float32(2π); keeping these constants keeps the last bits of the float32 results the same.
_TWO_POW_M32 = float(np.float32(2.3283064e-10))
_TWO_POW_M32_2PI = float(np.float32(2.3283064e-10 * 6.2831855))

UInt32Array = npt.NDArray[np.uint32]


def philox4x32_10(counter: npt.ArrayLike, key: npt.ArrayLike) -> UInt32Array:
    """Philox 4x32 with 10 rounds, element-wise.

    Args:
        counter: four uint32 words, shape ``(4, ...)``.
        key: two uint32 words, shape ``(2, ...)``, broadcastable against one counter word.

    Returns:
        The four output words, shape ``(4, ...)`` (the broadcast shape), dtype uint32.

    Raises:
        ValueError: if the leading dimensions are not 4 and 2 or a value is outside [0, 2³²).
    """
    c = np.asarray(counter, dtype=np.uint64)
    k = np.asarray(key, dtype=np.uint64)
    if c.shape[:1] != (4,) or k.shape[:1] != (2,):
        raise ValueError(f"counter must have 4 words and key 2, got shapes {c.shape} and {k.shape}")
    if (c > _MASK32).any() or (k > _MASK32).any():
        raise ValueError("counter and key words must be 32-bit unsigned values")
    c0, c1, c2, c3 = c[0], c[1], c[2], c[3]
    k0, k1 = k[0], k[1]
    for round_no in range(_ROUNDS):
        if round_no:
            k0 = (k0 + _WEYL[0]) & _MASK32
            k1 = (k1 + _WEYL[1]) & _MASK32
        prod0 = c0 * _MULTIPLIERS[0]  # < 2⁶⁴: exact in uint64
        prod1 = c2 * _MULTIPLIERS[1]
        c0, c1, c2, c3 = (
            (prod1 >> _SHIFT32) ^ c1 ^ k0,
            prod1 & _MASK32,
            (prod0 >> _SHIFT32) ^ c3 ^ k1,
            prod0 & _MASK32,
        )
    return np.stack(np.broadcast_arrays(c0, c1, c2, c3)).astype(np.uint32)


def philox_normal(seed: int, offset: int, count: int) -> npt.NDArray[np.float32]:
    """``count`` standard-normal float32 numbers of draw number ``offset`` of the stream of ``seed`` (see the module
    docstring for the layout).

    Raises:
        ValueError: if ``seed`` is outside [0, 2⁶⁴), ``offset`` outside [0, 2³²) or ``count`` outside [0, 2³²].
    """
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if not 0 <= offset < 2**32:
        raise ValueError(f"offset must be in [0, 2**32), got {offset}")
    if not 0 <= count <= 2**32:
        raise ValueError(f"count must be in [0, 2**32], got {count}")
    index = np.arange(count, dtype=np.uint64)
    zeros = np.zeros_like(index)
    counter = np.stack([zeros + np.uint64(offset), zeros, index, zeros])
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint64)[:, None]
    words = philox4x32_10(counter, key)
    u = words[0].astype(np.float64) * _TWO_POW_M32 + _TWO_POW_M32 / 2
    v = words[1].astype(np.float64) * _TWO_POW_M32_2PI + _TWO_POW_M32_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """A per-image "NV" generator: seeded once, each :meth:`randn` is the next draw of its stream.

    It plays the part a ``torch.Generator`` plays for the "GPU" and "CPU" sources (``worker.engine.noise``): the
    first draw has offset 0 and every draw, of any size, advances the offset by one.
    """

    def __init__(self, seed: int) -> None:
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self._seed = seed
        self.offset = 0

    def initial_seed(self) -> int:
        """The seed the generator was made with (``torch.Generator.initial_seed``'s counterpart)."""
        return self._seed

    @property
    def device(self) -> torch.device:
        """Always the CPU: the numbers are computed there and moved where they are needed."""
        return torch.device("cpu")

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """The next draw: a float32 CPU tensor of ``shape``, elements in row-major order of their flat index."""
        size = math.prod(int(d) for d in shape)
        values = philox_normal(self._seed, self.offset, size)
        self.offset += 1
        return torch.from_numpy(values).reshape(tuple(int(d) for d in shape))

    def __repr__(self) -> str:
        return f"PhiloxGenerator(seed={self._seed}, offset={self.offset})"
