"""The emphasis modes' maths (worker/engine/conditioning/emphasis.py; docs/engine.md, "Prompt encoding")."""

from __future__ import annotations

import pytest
import torch

from worker.engine.conditioning.emphasis import EMPHASIS_MODES, apply_emphasis, parses_emphasis


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 77, 8, generator=generator) + 0.5  # a mean well away from 0
    weights = torch.ones(2, 77)
    weights[0, 3] = 1.5
    weights[1, 10:12] = 0.5
    return z, weights


def test_original_multiplies_then_restores_the_batch_mean() -> None:
    z, weights = batch()
    out = apply_emphasis("Original", z, weights)
    weighted = z * weights[..., None]
    expected = weighted * (z.mean() / weighted.mean())  # one mean over all 2·77·8 values, not per text
    assert torch.allclose(out, expected)
    assert torch.allclose(out.mean(), z.mean())
    assert not torch.allclose(out[0, 3], z[0, 3])


def test_original_normalises_over_the_whole_batch() -> None:
    z, weights = batch()
    together = apply_emphasis("Original", z, weights)
    alone = apply_emphasis("Original", z[:1], weights[:1])
    assert not torch.allclose(together[0], alone[0])  # the other text's weights changed this text's scale


def test_no_norm_only_multiplies() -> None:
    z, weights = batch()
    assert torch.equal(apply_emphasis("No norm", z, weights), z * weights[..., None])


@pytest.mark.parametrize("mode", ["Ignore", "None"])
def test_ignore_and_none_leave_the_output(mode: str) -> None:
    z, weights = batch()
    assert torch.equal(apply_emphasis(mode, z, weights), z)  # type: ignore[arg-type]


def test_weights_of_one_leave_original_bit_identical() -> None:
    z, _ = batch()
    assert torch.equal(apply_emphasis("Original", z, torch.ones(2, 77)), z)


def test_only_none_reads_the_text_literally() -> None:
    assert [mode for mode in EMPHASIS_MODES if not parses_emphasis(mode)] == ["None"]
