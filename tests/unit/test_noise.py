"""Seeded noise (img2img-semantics.md §3.1) and the variation-seed slerp fix (§7.8)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from worker.engine.noise import (
    SEED_RANGE,
    NoiseGenerator,
    create_generators,
    create_noise,
    randn_like_from_generators,
    resolve_seeds,
    slerp,
)
from worker.engine.philox import PhiloxGenerator

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
        create_noise(SHAPE, [1], source="TPU")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="generators"):
        randn_like_from_generators(torch.zeros(2, *SHAPE), create_generators([1], source="CPU"))


# --- seed resize: the image generator advances (§3.1) ------------------------------------------------------------


def _reference_resize_sequence(
    seed: int, small: tuple[int, ...], draws: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reference's rule, step by step: the from-size noise from a fresh stream of the seed (its global RNG), then
    the full-size noise as the image generator's first draw, then every later draw from that same generator."""
    small_noise = _fresh(seed, small)
    own = torch.Generator().manual_seed(seed)
    full = torch.randn(SHAPE, generator=own)
    return full, [small_noise] + [torch.randn(SHAPE, generator=own) for _ in range(draws)]


@pytest.mark.parametrize(("from_h", "from_w"), [(32, 32), (128, 128), (96, 48)])
def test_seed_resize_later_draws_continue_after_the_full_size_draw(from_h: int, from_w: int) -> None:
    seeds = [9, 10]
    result = create_noise(SHAPE, seeds, seed_resize_from_h=from_h, seed_resize_from_w=from_w, source="CPU")
    later = [randn_like_from_generators(result.noise, result.generators) for _ in range(3)]
    for i, seed in enumerate(seeds):
        _, expected = _reference_resize_sequence(seed, (4, from_h // 8, from_w // 8), 3)
        for step in range(3):
            assert torch.equal(later[step][i], expected[1 + step])


def test_first_ancestral_noise_no_longer_repeats_the_border_of_the_initial_noise() -> None:
    """The bug: the image generator was never used, so its first later draw was the very full-size noise that
    surrounds the pasted from-size noise. Now it is the generator's second draw."""
    result = create_noise(SHAPE, [9], seed_resize_from_h=32, seed_resize_from_w=32, source="CPU")
    first_later = randn_like_from_generators(result.noise, result.generators)[0]
    border = torch.ones(SHAPE, dtype=torch.bool)
    border[:, 2:6, 2:6] = False
    initial = result.noise[0]
    assert torch.equal(initial[border], _fresh(9, SHAPE)[border])  # the border is the seed's full-size first draw
    assert not torch.isclose(first_later[border], initial[border]).any()


def test_seed_resize_with_ensd_reseeds_after_the_first_draw() -> None:
    result = create_noise(
        SHAPE, [9], seed_resize_from_h=32, seed_resize_from_w=32, source="CPU", eta_noise_seed_delta=31337
    )
    full, expected = _reference_resize_sequence(9, (4, 4, 4), 0)
    assert torch.equal(result.noise[0, :, 2:6, 2:6], expected[0])
    assert torch.equal(result.noise[0, :, 0, :], full[:, 0, :])
    later = randn_like_from_generators(result.noise, result.generators)
    assert torch.equal(later[0], _fresh(9 + 31337, SHAPE))


def test_seed_resize_to_the_images_own_size_is_the_plain_path() -> None:
    plain = create_noise(SHAPE, [4, 5], [7, 8], 0.4, source="CPU")
    same = create_noise(SHAPE, [4, 5], [7, 8], 0.4, 64, 64, source="CPU")
    assert torch.equal(plain.noise, same.noise)
    assert torch.equal(
        randn_like_from_generators(plain.noise, plain.generators),
        randn_like_from_generators(same.noise, same.generators),
    )


def test_seed_resize_with_a_variation_seed() -> None:
    result = create_noise(SHAPE, [9], [21], 0.5, seed_resize_from_h=32, seed_resize_from_w=32, source="CPU")
    small = slerp(0.5, _fresh(9, (4, 4, 4)), _fresh(21, (4, 4, 4)))
    assert torch.allclose(result.noise[0, :, 2:6, 2:6], small, atol=1e-6)
    _, expected = _reference_resize_sequence(9, (4, 4, 4), 1)
    assert torch.equal(randn_like_from_generators(result.noise, result.generators)[0], expected[1])


# --- the "NV" source (worker/engine/philox.py) ---------------------------------------------------------------------


def _nv(seed: int, shape: tuple[int, ...], offset: int = 0) -> torch.Tensor:
    g = PhiloxGenerator(seed)
    for _ in range(offset):
        g.randn((1,))
    return g.randn(shape)


def test_nv_generators_are_philox_streams() -> None:
    gens = create_generators([3, 4], source="NV")
    assert all(isinstance(g, PhiloxGenerator) for g in gens)
    assert [g.initial_seed() for g in gens] == [3, 4]


def test_nv_noise_and_later_draws() -> None:
    result = create_noise(SHAPE, [3, 4], source="NV")
    assert result.noise.dtype == torch.float32
    for i, seed in enumerate((3, 4)):
        assert torch.equal(result.noise[i], _nv(seed, SHAPE))
    later = randn_like_from_generators(result.noise.half(), result.generators)
    assert later.dtype == torch.float16
    for i, seed in enumerate((3, 4)):
        assert torch.equal(later[i], _nv(seed, SHAPE, offset=1).half())
    # NV differs from the torch sources for the same seed.
    assert not torch.allclose(result.noise, create_noise(SHAPE, [3, 4], source="CPU").noise, atol=0.1)


def test_nv_variation_seed_seed_resize_and_ensd() -> None:
    result = create_noise(
        SHAPE, [9], [21], 0.5, seed_resize_from_h=32, seed_resize_from_w=32, source="NV", eta_noise_seed_delta=5
    )
    small = slerp(0.5, _nv(9, (4, 4, 4)), _nv(21, (4, 4, 4)))
    assert torch.allclose(result.noise[0, :, 2:6, 2:6], small, atol=1e-6)
    assert torch.equal(result.noise[0, :, 0, :], _nv(9, SHAPE)[:, 0, :])
    later = randn_like_from_generators(result.noise, result.generators)
    assert torch.equal(later[0], _nv(9 + 5, SHAPE))


def test_nv_seed_resize_advances_the_philox_offset() -> None:
    result = create_noise(SHAPE, [9], seed_resize_from_h=32, seed_resize_from_w=32, source="NV")
    generator = result.generators[0]
    assert isinstance(generator, PhiloxGenerator)
    assert generator.offset == 1
    assert torch.equal(randn_like_from_generators(result.noise, result.generators)[0], _nv(9, SHAPE, offset=1))


def test_randn_like_accepts_a_mix_of_generator_kinds() -> None:
    gens: list[NoiseGenerator] = [torch.Generator().manual_seed(1), PhiloxGenerator(1)]
    out = randn_like_from_generators(torch.zeros(2, *SHAPE), gens)
    assert torch.equal(out[0], _fresh(1, SHAPE))
    assert torch.equal(out[1], _nv(1, SHAPE))
