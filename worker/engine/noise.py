"""Seeded per-image noise with the reference's semantics (img2img-semantics.md §3.1; docs/engine.md "Noise and
random sources").

Everything here is written from the prose of the semantics document, not from the reference's code:

* one generator per image, seeded with that image's seed: a ``torch.Generator`` on the worker's device ("GPU", the
  default) or on the CPU ("CPU"), or a :class:`~worker.engine.philox.PhiloxGenerator` ("NV", NVIDIA's stream computed
  on the CPU). Each image's noise is drawn as its own ``(C, h, w)`` tensor (for torch generators the same values that
  diffusers' ``randn_tensor`` gives with a list of per-image generators on the same device);
* variation seeds (subseeds) mixed in with a spherical interpolation (slerp) that normalises along dim 1 of the
  ``(C, h, w)`` tensor; its linear fallback uses the *correct* weights (§7.8, a deliberate fix);
* seed resize: the noise is generated at the "from" size and pasted (or cropped) into the centre of a full-size noise
  drawn from the image's own generator, which therefore advances (see :func:`create_noise` for the order);
* ENSD (eta noise seed delta): after the first draw the per-image generators are re-seeded with ``seed + ENSD``;
  later draws (ancestral / SDE noise) continue from the generators returned in :class:`NoiseResult`.

The reference draws subseed noise and the from-size noise of a seed resize through its *global* RNG right after
seeding it with that seed; a freshly seeded private generator of the same source yields exactly the same values, so
this module never touches the global RNG.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, overload

import torch

from worker.engine.philox import PhiloxGenerator

__all__ = [
    "SEED_RANGE",
    "NoiseGenerator",
    "NoiseResult",
    "RandnSource",
    "create_generators",
    "create_noise",
    "randn_like_from_generators",
    "resolve_seeds",
    "slerp",
]

#: Random seeds are drawn uniformly from ``[0, SEED_RANGE)`` (§3.1: [0, 4294967294)).
SEED_RANGE = 4294967294

#: The webui option ``randn_source``: "GPU" = torch generators on the worker's device (the reference's default),
#: "CPU" = torch generators on the CPU, "NV" = NVIDIA's Philox stream emulated on the CPU (worker/engine/philox.py).
RandnSource = Literal["CPU", "GPU", "NV"]

#: The sources whose generators are ``torch.Generator`` objects.
TorchRandnSource = Literal["CPU", "GPU"]

#: One image's random stream: what :func:`create_generators` returns and :func:`randn_like_from_generators` draws from.
NoiseGenerator = torch.Generator | PhiloxGenerator

# The generator type of a NoiseResult: torch.Generator for "CPU"/"GPU", PhiloxGenerator for "NV", either when the
# source is only known at run time (the overloads of create_noise pick it from the source's type).
G = TypeVar("G", bound=NoiseGenerator)

#: Above this mean dot product of the normalised noises the slerp falls back to a linear mix (§3.1).
_SLERP_LINEAR_THRESHOLD = 0.9995


@dataclass(frozen=True)
class NoiseResult(Generic[G]):
    """The initial noise of one batch and the generators that later noise draws continue from.

    Attributes:
        noise: ``(B, C, h, w)`` float32 tensor on the requested device, unit variance per element.
        generators: one generator per image, in batch order. When ENSD is non-zero these are already re-seeded with
            ``seed + ENSD``; otherwise they have advanced past the initial draw (§3.1).
    """

    noise: torch.Tensor
    generators: tuple[G, ...]


def _parse_seed(value: int | str | None) -> int:
    """One seed as the reference reads it: -1, None, "" or an unparsable string mean "random" (§3.1)."""
    if value is None:
        return -1
    if isinstance(value, bool):  # bool is an int subclass; treat it as its integer value like int() would
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return -1


def resolve_seeds(
    seed: int | str | None, subseed: int | str | None, subseed_strength: float, count: int
) -> tuple[list[int], list[int]]:
    """The per-image seeds and variation seeds of a job (§3.1).

    Args:
        seed: the request's seed; -1 (or None, "", an unparsable string) picks a random one in [0, 4294967294).
        subseed: the variation seed, resolved the same way.
        subseed_strength: the variation strength; when it is non-zero every image gets the same ``seed``.
        count: the number of images (batch_size·n_iter).

    Returns:
        ``(all_seeds, all_subseeds)``: ``all_seeds[i] = seed + i`` (or ``seed`` for every image when
        ``subseed_strength != 0``) and ``all_subseeds[i] = subseed + i``.

    Raises:
        ValueError: if ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    base_seed = _parse_seed(seed)
    if base_seed == -1:
        base_seed = secrets.randbelow(SEED_RANGE)
    base_subseed = _parse_seed(subseed)
    if base_subseed == -1:
        base_subseed = secrets.randbelow(SEED_RANGE)
    # §3.1: with a variation strength every image shares the seed and only the subseeds advance.
    all_seeds = [base_seed] * count if subseed_strength != 0 else [base_seed + i for i in range(count)]
    all_subseeds = [base_subseed + i for i in range(count)]
    return all_seeds, all_subseeds


_SOURCES: tuple[RandnSource, ...] = ("CPU", "GPU", "NV")


def _generator_device(source: RandnSource, device: torch.device) -> torch.device:
    """The device on which torch generators are created for ``source`` (§3.1: "GPU" = the worker's device).

    Raises:
        ValueError: for an unknown source.
    """
    if source not in _SOURCES:
        raise ValueError(f"unsupported randn source {source!r}; expected one of {', '.join(_SOURCES)}")
    if source == "GPU":
        # The reference uses the CPU on MPS; an MPS generator would give other numbers.
        return torch.device("cpu") if device.type == "mps" else device
    return torch.device("cpu")  # "CPU", and "NV" computes on the CPU


def _new_generator(seed: int, source: RandnSource, gen_device: torch.device) -> NoiseGenerator:
    if source == "NV":
        return PhiloxGenerator(int(seed))
    return torch.Generator(device=gen_device).manual_seed(int(seed))


@overload
def create_generators(
    seeds: Sequence[int], *, source: TorchRandnSource = "GPU", device: torch.device | str = "cpu"
) -> tuple[torch.Generator, ...]: ...
@overload
def create_generators(
    seeds: Sequence[int], *, source: Literal["NV"], device: torch.device | str = "cpu"
) -> tuple[PhiloxGenerator, ...]: ...
@overload
def create_generators(
    seeds: Sequence[int], *, source: RandnSource, device: torch.device | str = "cpu"
) -> tuple[NoiseGenerator, ...]: ...
def create_generators(
    seeds: Sequence[int], *, source: RandnSource = "GPU", device: torch.device | str = "cpu"
) -> tuple[NoiseGenerator, ...]:
    """One freshly seeded generator per seed: a ``torch.Generator`` on the device chosen by ``source``, or a
    :class:`PhiloxGenerator` for "NV".

    Also the ENSD helper: ``create_generators([s + ensd for s in seeds], ...)`` re-seeds for later draws (§3.1).

    Raises:
        ValueError: for an unknown ``source``.
    """
    gen_device = _generator_device(source, torch.device(device))
    return tuple(_new_generator(s, source, gen_device) for s in seeds)


def _randn(shape: Sequence[int], generator: NoiseGenerator) -> torch.Tensor:
    """The generator's next float32 standard-normal draw of ``shape``, on the generator's device."""
    if isinstance(generator, PhiloxGenerator):
        return generator.randn(shape)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)


def _randn_seeded(seed: int, shape: Sequence[int], source: RandnSource, gen_device: torch.device) -> torch.Tensor:
    """What the reference gets from seeding its global RNG of ``source`` with ``seed`` and drawing ``shape``."""
    return _randn(shape, _new_generator(seed, source, gen_device))


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``low`` (val=0) to ``high`` (val=1), normalising along dim 1 (§3.1).

    For a ``(C, h, w)`` noise tensor dim 1 is the height axis, so the angle is computed per (channel, column), as the
    reference does. When the mean dot product of the normalised inputs is above 0.9995 (nearly parallel) it falls back
    to the linear mix ``(1 − val)·low + val·high``. The reference swaps these weights; §7.8 fixes that here.

    Args:
        val: interpolation weight in [0, 1] (the variation strength).
        low, high: tensors of the same shape with at least two dimensions.

    Raises:
        ValueError: if the shapes differ or the tensors have fewer than two dimensions.
    """
    if low.shape != high.shape:
        raise ValueError(f"slerp shapes differ: {tuple(low.shape)} vs {tuple(high.shape)}")
    if low.dim() < 2:
        raise ValueError("slerp needs tensors with at least two dimensions")
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > _SLERP_LINEAR_THRESHOLD:
        # §7.8: correct weights (the reference computes val·low + (1 − val)·high).
        return (1.0 - val) * low + val * high
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    w_low = (torch.sin((1.0 - val) * omega) / sin_omega).unsqueeze(1)
    w_high = (torch.sin(val * omega) / sin_omega).unsqueeze(1)
    return w_low * low + w_high * high


def _paste_centre(full: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """Paste ``small`` (C, h', w') into the centre of ``full`` (C, h, w), cropping its centre when it is larger (§3.1).

    Offsets are floor((h − h')/2) and floor((w − w')/2); a negative offset crops the same amount from ``small``'s
    top/left and keeps a centred window of the full size.
    """
    out = full.clone()
    _, h, w = full.shape
    _, sh, sw = small.shape
    dy = (h - sh) // 2
    dx = (w - sw) // 2
    # Size of the copied window and where it sits in each tensor.
    ch = sh if dy >= 0 else sh + 2 * dy
    cw = sw if dx >= 0 else sw + 2 * dx
    ty, tx = max(dy, 0), max(dx, 0)
    sy, sx = max(-dy, 0), max(-dx, 0)
    ch, cw = min(ch, h - ty), min(cw, w - tx)
    out[:, ty : ty + ch, tx : tx + cw] = small[:, sy : sy + ch, sx : sx + cw]
    return out


# The overloads only narrow the generator type of the result by the source (see G above).
@overload
def create_noise(
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    subseeds: Sequence[int] | None = None,
    subseed_strength: float = 0.0,
    seed_resize_from_h: int = 0,
    seed_resize_from_w: int = 0,
    *,
    source: TorchRandnSource = "GPU",
    device: torch.device | str = "cpu",
    eta_noise_seed_delta: int = 0,
) -> NoiseResult[torch.Generator]: ...
@overload
def create_noise(
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    subseeds: Sequence[int] | None = None,
    subseed_strength: float = 0.0,
    seed_resize_from_h: int = 0,
    seed_resize_from_w: int = 0,
    *,
    source: Literal["NV"],
    device: torch.device | str = "cpu",
    eta_noise_seed_delta: int = 0,
) -> NoiseResult[PhiloxGenerator]: ...
@overload
def create_noise(
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    subseeds: Sequence[int] | None = None,
    subseed_strength: float = 0.0,
    seed_resize_from_h: int = 0,
    seed_resize_from_w: int = 0,
    *,
    source: RandnSource,
    device: torch.device | str = "cpu",
    eta_noise_seed_delta: int = 0,
) -> NoiseResult[NoiseGenerator]: ...
def create_noise(
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    subseeds: Sequence[int] | None = None,
    subseed_strength: float = 0.0,
    seed_resize_from_h: int = 0,
    seed_resize_from_w: int = 0,
    *,
    source: RandnSource = "GPU",
    device: torch.device | str = "cpu",
    eta_noise_seed_delta: int = 0,
) -> NoiseResult[Any]:
    """The initial noise of one batch, image by image (§3.1, the reference's per-image RNG).

    For image i with seed ``seeds[i]`` and generator ``g_i`` (freshly seeded with it), in this order:

    1. if ``subseed_strength != 0``: ``subnoise = randn(subseeds[i])`` from a fresh generator (the reference's global
       RNG; subseed 0 when the list is short);
    2. the image noise: the first draw of ``g_i``; or, with a seed resize whose ``(C, from_h//8, from_w//8)`` differs
       from ``shape``, ``randn(seed)`` at that size from a fresh generator (the reference's global RNG, so ``g_i`` is
       not used here);
    3. ``noise = slerp(subseed_strength, noise, subnoise)``;
    4. seed resize: paste that noise into the centre of a full-size draw **of ``g_i``** (its first draw, so it holds
       the same values as a fresh ``randn(seed)``, and ``g_i`` advances past it).

    Either way each ``g_i`` has made exactly one full-size draw, and later draws (ancestral, SDE, DDIM with η > 0)
    continue after it, unless ENSD re-seeds them.

    Args:
        shape: ``(C, h, w)`` latent shape of one image (h = H//8, w = W//8).
        seeds: one seed per image.
        subseeds: variation seeds (ignored when ``subseed_strength`` is 0).
        subseed_strength: variation strength in [0, 1].
        seed_resize_from_h, seed_resize_from_w: pixel size to generate the noise at; used only when both are > 0.
        source: "GPU" (generators on ``device``, the reference default), "CPU" or "NV" (Philox on the CPU).
        device: where the returned noise lives (and the generators for "GPU").
        eta_noise_seed_delta: ENSD; when non-zero the returned generators are re-seeded with ``seed + ENSD``.

    Returns:
        A :class:`NoiseResult` with the ``(B, C, h, w)`` noise and the per-image generators.

    Raises:
        ValueError: if ``shape`` is not three positive ints, ``seeds`` is empty or ``source`` is unknown.
    """
    if len(shape) != 3 or any(int(d) <= 0 for d in shape):
        raise ValueError(f"shape must be (C, h, w) with positive sizes, got {shape!r}")
    if len(seeds) == 0:
        raise ValueError("at least one seed is needed")
    out_device = torch.device(device)
    gen_device = _generator_device(source, out_device)
    generators = create_generators(seeds, source=source, device=out_device)

    full_shape = tuple(int(d) for d in shape)
    resize_requested = seed_resize_from_h > 0 and seed_resize_from_w > 0
    noise_shape = (full_shape[0], seed_resize_from_h // 8, seed_resize_from_w // 8) if resize_requested else full_shape
    if resize_requested and (noise_shape[1] <= 0 or noise_shape[2] <= 0):
        raise ValueError("seed resize sizes must be at least 8 pixels")
    # A "resize" to the image's own latent size is the plain path (it gives the same values either way).
    resized = noise_shape != full_shape
    use_variation = subseed_strength != 0 and subseeds is not None

    images: list[torch.Tensor] = []
    for i, (seed, generator) in enumerate(zip(seeds, generators, strict=True)):
        subnoise: torch.Tensor | None = None
        if use_variation:
            assert subseeds is not None
            subseed = subseeds[i] if i < len(subseeds) else 0
            subnoise = _randn_seeded(subseed, noise_shape, source, gen_device)
        # With a seed resize the from-size noise comes from a fresh stream of the seed (the reference's global RNG)...
        noise = _randn_seeded(seed, noise_shape, source, gen_device) if resized else _randn(noise_shape, generator)
        if subnoise is not None:
            noise = slerp(subseed_strength, noise, subnoise)
        if resized:
            # ...and the full-size noise it is pasted into is the image generator's own draw, which advances it.
            noise = _paste_centre(_randn(full_shape, generator), noise)
        images.append(noise.to(out_device))

    if eta_noise_seed_delta:
        generators = create_generators([s + eta_noise_seed_delta for s in seeds], source=source, device=out_device)
    return NoiseResult(noise=torch.stack(images), generators=generators)


def randn_like_from_generators(x: torch.Tensor, generators: Sequence[NoiseGenerator] | None) -> torch.Tensor:
    """Standard-normal noise shaped like ``x`` (B, ...), one draw per image from its generator (§3.1).

    This is how the reference's ancestral/SDE noise is drawn (its hijacked ``randn_like``). With ``generators`` None
    the global torch RNG is used.

    Raises:
        ValueError: if the number of generators differs from the batch size.
    """
    if generators is None:
        return torch.randn(x.shape, dtype=torch.float32, device=x.device).to(x.dtype)
    if len(generators) != x.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {x.shape[0]}")
    draws = [_randn(x.shape[1:], g).to(x.device) for g in generators]
    return torch.stack(draws).to(x.dtype)
