"""The emphasis modes: how the per-token multipliers of `(word:1.2)` change the CLIP output (docs/engine.md,
"Prompt encoding" — Emphasis modes).

`z` is the text encoder's output for one chunk index of all the texts encoded together, `(B, 77, C)`; `multipliers`
the matching `(B, 77)` weights (1.0 on BOS, EOS and padding).
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import torch

__all__ = ["EMPHASIS_MODES", "EmphasisMode", "apply_emphasis", "parses_emphasis"]

EmphasisMode = Literal["Original", "No norm", "Ignore", "None"]
EMPHASIS_MODES: Final[tuple[EmphasisMode, ...]] = get_args(EmphasisMode)


def parses_emphasis(mode: EmphasisMode) -> bool:
    """Whether the prompt text goes through the emphasis parser (brackets, escapes, BREAK). Only "None" reads the
    text literally."""
    return mode != "None"


def apply_emphasis(mode: EmphasisMode, z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """`z` with the multipliers applied as `mode` says.

    * Original: every token's vector is multiplied by its weight, then the whole batch is rescaled so that its mean
      (over all B·77·C values) is the mean it had before.
    * No norm: the multiplication alone.
    * Ignore, None: `z` unchanged.
    """
    if mode in ("Ignore", "None"):
        return z
    if bool((multipliers == 1).all()):
        # Nothing to weight: z unchanged, as the maths gives — except when z's mean is exactly 0, where the
        # rescale would divide 0 by 0 (the tiny test encoders' final LayerNorm output can sum to exactly 0).
        return z
    weighted = z * multipliers.reshape(*multipliers.shape, 1).to(device=z.device, dtype=z.dtype)
    if mode == "No norm":
        return weighted
    # In z's own dtype, as the reference computes it; with all weights 1 the ratio is exactly 1 and z is unchanged.
    return weighted * (z.mean() / weighted.mean())
