"""Seeded noise (img2img-semantics.md §3.1) and the variation-seed slerp fix (§7.8)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from worker.engine.noise import (
    SEED_RANGE,
    create_generators,
    create_noise,
    randn_like_from_generators,
    resolve_seeds,
    slerp,
)

SHAPE = (4, 8, 8)


def _fresh(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_same_seed_gives_same_noise() -> None:
    a = create_noise(SHAPE, [1234], source="CPU").noise
    b = create_noise(SHAPE, [1234], source="CPU").noise
    assert torch.equal(a, b)
    assert a.shape == (1, *SHAPE)
    assert not torch.equal(a, create_noise(SHAPE, [1235], source="CPU").noise)


def test_each_image_uses_its_own_seed() -> None:
    seeds, _ = resolve_seeds(100, 7, 0.0, 3)
    batch = create_noise(SHAPE, seeds, source="CPU").noise
    for i in range(3):
        assert torch.equal(batch[i], _fresh(100 + i, SHAPE))


def test_matches_diffusers_randn_tensor_with_generator_list() -> None:
    seeds = [5, 6]
    ours = create_noise(SHAPE, seeds, source="CPU").noise
    theirs = randn_tensor((2, *SHAPE), generator=list(create_generators(seeds, source="CPU")), dtype=torch.float32)
    assert torch.equal(ours, theirs)


def test_subseed_strength_zero_is_no_variation() -> None:
    plain = create_noise(SHAPE, [42], source="CPU").noise
    with_subseed = create_noise(SHAPE, [42], [999], 0.0, source="CPU").noise
    assert torch.equal(plain, with_subseed)


def _reference_slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    # Independent per-(channel, column) computation along the height axis, in float64.
    out = torch.empty_like(low, dtype=torch.float64)
    lo, hi = low.double(), high.double()
    for c in range(low.shape[0]):
        for x in range(low.shape[2]):
            a, b = lo[c, :, x], hi[c, :, x]
            cos = float(torch.dot(a / a.norm(), b / b.norm()))
            om = math.acos(cos)
            out[c, :, x] = math.sin((1 - val) * om) / math.sin(om) * a + math.sin(val * om) / math.sin(om) * b
    return out


def test_variation_seed_slerp() -> None:
    strength = 0.3
    noise = create_noise(SHAPE, [42], [777], strength, source="CPU").noise[0]
    expected = _reference_slerp(strength, _fresh(42, SHAPE), _fresh(777, SHAPE))
    assert torch.allclose(noise.double(), expected, atol=1e-5)
    # Strength 1 gives the subseed's noise.
    full = create_noise(SHAPE, [42], [777], 1.0, source="CPU").noise[0]
    assert torch.allclose(full, _fresh(777, SHAPE), atol=1e-5)


def test_slerp_linear_fallback_uses_correct_weights_fix_7_8() -> None:
    """§7.8: nearly parallel inputs fall back to (1 − val)·low + val·high (the reference swaps the weights)."""
    low = _fresh(1, SHAPE)
    high = low * 1.001 + 1e-4 * _fresh(2, SHAPE)
    val = 0.2
    got = slerp(val, low, high)
    assert torch.allclose(got, (1 - val) * low + val * high, atol=1e-7)
    assert not torch.allclose(got, val * low + (1 - val) * high, atol=1e-6)


def test_slerp_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        slerp(0.5, torch.zeros(2, 3), torch.zeros(3, 2))


def test_seed_resize_crops_the_centre_of_a_larger_noise() -> None:
    # 128×128 px → (4, 16, 16) noise, cropped to its centre 8×8.
    noise = create_noise(SHAPE, [9], seed_resize_from_h=128, seed_resize_from_w=128, source="CPU").noise[0]
    big = _fresh(9, (4, 16, 16))
    assert torch.equal(noise, big[:, 4:12, 4:12])


def test_seed_resize_pastes_a_smaller_noise_into_the_centre() -> None:
    # 32×32 px → (4, 4, 4) noise pasted at [2:6, 2:6] of a full-size draw of the same seed.
    noise = create_noise(SHAPE, [9], seed_resize_from_h=32, seed_resize_from_w=32, source="CPU").noise[0]
    full = _fresh(9, SHAPE)
    small = _fresh(9, (4, 4, 4))
    assert torch.equal(noise[:, 2:6, 2:6], small)
    mask = torch.ones(SHAPE, dtype=torch.bool)
    mask[:, 2:6, 2:6] = False
    assert torch.equal(noise[mask], full[mask])


def test_seed_resize_with_mixed_sizes() -> None:
    # Taller (crop in y) and narrower (paste in x) at the same time.
    noise = create_noise(SHAPE, [3], seed_resize_from_h=96, seed_resize_from_w=48, source="CPU").noise[0]
    small = _fresh(3, (4, 12, 6))
    assert torch.equal(noise[:, :, 1:7], small[:, 2:10, :])


def test_resolve_seeds() -> None:
    seeds, subseeds = resolve_seeds(10, 20, 0.0, 3)
    assert seeds == [10, 11, 12]
    assert subseeds == [20, 21, 22]
    seeds, subseeds = resolve_seeds(10, 20, 0.5, 3)
    assert seeds == [10, 10, 10]
    assert subseeds == [20, 21, 22]
    for random_seed in (-1, "", None, "not a number"):
        seeds, _ = resolve_seeds(random_seed, 1, 0.0, 2)
        assert 0 <= seeds[0] < SEED_RANGE
        assert seeds[1] == seeds[0] + 1
    assert resolve_seeds("77", 1, 0.0, 1)[0] == [77]


def test_generators_continue_after_the_first_draw() -> None:
    result = create_noise(SHAPE, [4], source="CPU")
    g = torch.Generator().manual_seed(4)
    torch.randn(SHAPE, generator=g)
    second = torch.randn(SHAPE, generator=g)
    assert torch.equal(randn_like_from_generators(result.noise, result.generators)[0], second)


def test_ensd_reseeds_the_generators() -> None:
    result = create_noise(SHAPE, [4, 5], source="CPU", eta_noise_seed_delta=31337)
    later = randn_like_from_generators(result.noise, result.generators)
    assert torch.equal(later[0], _fresh(4 + 31337, SHAPE))
    assert torch.equal(later[1], _fresh(5 + 31337, SHAPE))
    # The initial noise itself is unchanged by ENSD.
    assert torch.equal(result.noise[0], _fresh(4, SHAPE))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="seed"):
        create_noise(SHAPE, [], source="CPU")
    with pytest.raises(ValueError, match="shape"):
        create_noise((4, 0, 8), [1], source="CPU")
    with pytest.raises(ValueError, match="randn source"):
        create_noise(SHAPE, [1], source="NV")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generators"):
        randn_like_from_generators(torch.zeros(2, *SHAPE), create_generators([1], source="CPU"))
