"""Tiling: pictures whose left and right (top and bottom) edges continue each other, for seamless textures.

The reference does it by switching every 2-D convolution of the loaded model to circular padding for the job (and
back to zero padding after it): the UNet, the VAE's encoder and decoder. A convolution then sees the opposite edge
where it would see zeros, so the whole network treats the latent and the picture as a torus. The same is done here
on the diffusers modules of the loaded model, restored when the job ends even if it fails (the model is shared by
the jobs of a worker). The infotext says `Tiling: True` (docs/engine.md "Other decisions, and what is not (yet)
reproduced").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Final, Literal

from torch import nn

CIRCULAR: Final[Literal["circular"]] = "circular"


def _convolutions(modules: Iterable[nn.Module]) -> list[nn.Conv2d]:
    return [layer for module in modules for layer in module.modules() if isinstance(layer, nn.Conv2d)]


@contextmanager
def circular_padding(modules: Iterable[nn.Module], enabled: bool = True) -> Iterator[None]:
    """Within the block, every `nn.Conv2d` of `modules` pads circularly (when `enabled`); each gets its own padding
    mode back afterwards."""
    if not enabled:
        yield
        return
    layers = _convolutions(modules)
    saved = [layer.padding_mode for layer in layers]
    try:
        for layer in layers:
            layer.padding_mode = CIRCULAR
        yield
    finally:
        for layer, mode in zip(layers, saved, strict=True):
            layer.padding_mode = mode
