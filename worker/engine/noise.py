"""Seeded per-image noise with the reference's semantics (img2img-semantics.md §3.1).

Everything here is written from the prose of the semantics document, not from the reference's code:

* one ``torch.Generator`` per image, seeded with that image's seed; each image's noise is drawn as its own
  ``(C, h, w)`` tensor (the same values that diffusers' ``randn_tensor`` gives with a list of per-image
  generators on the same device);
* variation seeds (subseeds) mixed in with a spherical interpolation (slerp) that normalises along dim 1 of the
  ``(C, h, w)`` tensor; its linear fallback uses the *correct* weights (§7.8, a deliberate fix);
* seed resize: the noise is generated at the "from" size and pasted (or cropped) into the centre of a full-size noise;
* ENSD (eta noise seed delta): after the first draw the per-image generators are re-seeded with ``seed + ENSD``;
  later draws (ancestral / SDE noise) continue from the generators returned in :class:`NoiseResult`.

The reference draws subseed noise and seed-resize noise through the *global* torch RNG right after
``torch.manual_seed(seed)``; a freshly seeded private generator on the same device yields exactly the same values,
so this module never touches the global RNG.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "SEED_RANGE",
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

#: Where the per-image generators live: "GPU" = on the worker's device (the reference's default), "CPU" = on the CPU.
RandnSource = Literal["CPU", "GPU"]

#: Above this mean dot product of the normalised noises the slerp falls back to a linear mix (§3.1).
_SLERP_LINEAR_THRESHOLD = 0.9995


@dataclass(frozen=True)
class NoiseResult:
    """The initial noise of one batch and the generators that later noise draws continue from.

    Attributes:
        noise: ``(B, C, h, w)`` float32 tensor on the requested device, unit variance per element.
        generators: one generator per image, in batch order. When ENSD is non-zero these are already re-seeded with
            ``seed + ENSD``; otherwise they have advanced past the initial draw (§3.1).
    """

    noise: torch.Tensor
    generators: tuple[torch.Generator, ...]


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


def _generator_device(source: RandnSource, device: torch.device) -> torch.device:
    """The device on which generators are created for ``source`` (§3.1: "GPU" = the worker's device).

    Raises:
        ValueError: for an unknown source (the reference's "NV" Philox emulation is not implemented).
    """
    if source == "CPU":
        return torch.device("cpu")
    if source == "GPU":
        # The reference uses the CPU on MPS; an MPS generator would give other numbers.
        return torch.device("cpu") if device.type == "mps" else device
    raise ValueError(f"unsupported randn source {source!r}; expected 'CPU' or 'GPU'")


def create_generators(
    seeds: Sequence[int], *, source: RandnSource = "GPU", device: torch.device | str = "cpu"
) -> tuple[torch.Generator, ...]:
    """One freshly seeded generator per seed, on the device chosen by ``source``.

    Also the ENSD helper: ``create_generators([s + ensd for s in seeds], ...)`` re-seeds for later draws (§3.1).

    Raises:
        ValueError: for an unknown ``source``.
    """
    gen_device = _generator_device(source, torch.device(device))
    return tuple(torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds)


def _randn(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A float32 standard-normal draw of ``shape`` from ``generator``, on the generator's device."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)


def _randn_seeded(seed: int, shape: Sequence[int], gen_device: torch.device) -> torch.Tensor:
    """What the reference gets from ``manual_seed(seed); randn(shape)`` on the global RNG of ``gen_device``."""
    return _randn(shape, torch.Generator(device=gen_device).manual_seed(int(seed)))


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
) -> NoiseResult:
    """The initial noise of one batch, image by image (§3.1, the reference's per-image RNG).

    For image i with seed ``seeds[i]``:

    1. if ``subseed_strength != 0``: ``subnoise = randn(subseeds[i])`` (subseed 0 when the list is short);
    2. the image noise: from the image's own generator, or, with a seed resize, ``randn(seed)`` at
       ``(C, from_h//8, from_w//8)`` from a fresh generator (the reference's global RNG, so the image generator does
       not advance);
    3. ``noise = slerp(subseed_strength, noise, subnoise)``;
    4. seed resize: paste that noise into the centre of a fresh full-size ``randn(seed)``.

    Args:
        shape: ``(C, h, w)`` latent shape of one image (h = H//8, w = W//8).
        seeds: one seed per image.
        subseeds: variation seeds (ignored when ``subseed_strength`` is 0).
        subseed_strength: variation strength in [0, 1].
        seed_resize_from_h, seed_resize_from_w: pixel size to generate the noise at; used only when both are > 0.
        source: "GPU" (generators on ``device``, the reference default) or "CPU".
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

    resized = seed_resize_from_h > 0 and seed_resize_from_w > 0
    noise_shape = (shape[0], seed_resize_from_h // 8, seed_resize_from_w // 8) if resized else tuple(shape)
    if resized and (noise_shape[1] <= 0 or noise_shape[2] <= 0):
        raise ValueError("seed resize sizes must be at least 8 pixels")
    use_variation = subseed_strength != 0 and subseeds is not None

    images: list[torch.Tensor] = []
    for i, (seed, generator) in enumerate(zip(seeds, generators, strict=True)):
        subnoise: torch.Tensor | None = None
        if use_variation:
            assert subseeds is not None
            subseed = subseeds[i] if i < len(subseeds) else 0
            subnoise = _randn_seeded(subseed, noise_shape, gen_device)
        # With a seed resize the reference draws through the global RNG, so the image generator does not advance.
        noise = _randn_seeded(seed, noise_shape, gen_device) if resized else _randn(noise_shape, generator)
        if subnoise is not None:
            noise = slerp(subseed_strength, noise, subnoise)
        if resized:
            noise = _paste_centre(_randn_seeded(seed, shape, gen_device), noise)
        images.append(noise.to(out_device))

    if eta_noise_seed_delta:
        generators = create_generators([s + eta_noise_seed_delta for s in seeds], source=source, device=out_device)
    return NoiseResult(noise=torch.stack(images), generators=generators)


def randn_like_from_generators(x: torch.Tensor, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
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
