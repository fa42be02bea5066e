"""The SDE samplers' noise: one Brownian tree per image, seeded with the image's seed (docs/engine.md "Samplers",
Brownian-tree noise).

The reference gives DPM++ SDE, DPM++ 2M SDE, DPM++ 2M SDE Heun and DPM++ 3M SDE a noise sampler backed by
``torchsde.BrownianTree`` — one tree per image of the batch, each built over [σ_min, σ_max] of the whole schedule
(σ_min the smallest non-zero sigma) with the image's seed as its entropy — so that an image's noise depends on its
seed only, whatever the batch. The noise of a step σ → σ' is the tree's increment over that interval divided by
√|σ' − σ|, with the sign flipped because σ decreases: a unit normal per element, correlated across steps as Brownian
motion is. Written from that description; ``torchsde`` (Apache-2.0) provides the tree itself.

The trees are built and queried on the CPU in float32 whatever the latent's device and dtype, so the same seed gives
the same noise on every machine; the result is moved to the latent's device and dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torchsde

__all__ = ["BrownianNoise"]


class BrownianNoise:
    """``noise(σ, σ')`` for a batch, from one Brownian tree per seed over [sigma_min, sigma_max]."""

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seeds: Sequence[int]) -> None:
        if len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for a batch of {x.shape[0]}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self._device, self._dtype = x.device, x.dtype
        t0 = torch.tensor(sigma_min, dtype=torch.float32)
        t1 = torch.tensor(sigma_max, dtype=torch.float32)
        w0 = torch.zeros(tuple(x.shape[1:]), dtype=torch.float32)
        self._trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(seed)) for seed in seeds]

    def __call__(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor:
        a = torch.as_tensor(sigma, dtype=torch.float32).cpu()
        b = torch.as_tensor(sigma_next, dtype=torch.float32).cpu()
        low, high, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        with warnings.catch_warnings():
            # torchsde warns when a query end lies a rounding error outside [σ_min, σ_max] (float32 σ against its
            # float64 bounds) and clamps it; the reference's trees do the same.
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = torch.stack([tree(low, high) for tree in self._trees]) * sign
        return (w / (b - a).abs().sqrt()).to(device=self._device, dtype=self._dtype)
