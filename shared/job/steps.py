"""How many sampling steps a job runs, and which samplers take η (eta): the rules that the scheduler's admission
estimate, the engine's sampling plan and the stand-in engine share (img2img-semantics.md §3.2, §7.4).

Pure: the standard library and `shared.sampler_names` (itself pure), so the scheduler can count steps without torch.
"""

from __future__ import annotations

from typing import Final, Literal

from shared.sampler_names import SamplerName, split_sampler_and_schedule

__all__ = [
    "ANCESTRAL_ETA_SAMPLERS",
    "DDIM_ETA_SAMPLERS",
    "DEFAULT_ETA_ANCESTRAL",
    "DEFAULT_ETA_DDIM",
    "EtaKind",
    "default_eta",
    "eta_kind",
    "img2img_steps",
    "sampling_steps",
]

#: The strength the reference caps at, so that strength 1 still keeps one step of the schedule unused (§3.2).
_MAX_EFFECTIVE_STRENGTH: Final = 0.999

#: Samplers whose noise amount is η: the webui's option eta_ancestral for these, eta_ddim for DDIM. The others
#: (Euler, LMS, Heun, DPM2, DPM++ 2M, UniPC) take no η and ignore it.
ANCESTRAL_ETA_SAMPLERS: Final = frozenset({"Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE"})
DDIM_ETA_SAMPLERS: Final = frozenset({"DDIM"})

#: The webui's defaults of those options (opts.eta_ancestral, opts.eta_ddim).
DEFAULT_ETA_ANCESTRAL: Final = 1.0
DEFAULT_ETA_DDIM: Final = 0.0

EtaKind = Literal["ancestral", "ddim"]

#: Steps a timestep sampler runs relative to t_enc; every k-diffusion sampler runs t_enc + 1 (from
#: sigmas[steps − t_enc − 1] down to 0). DDIM evaluates timesteps[t_enc − 1] … timesteps[1], t_enc − 1 points;
#: UniPC runs t_enc time-uniform points from timesteps[t_enc − 1] down to 0 (§3.2).
_K_DIFFUSION_STEPS_BEYOND_T_ENC: Final = 1
_TIMESTEP_STEPS_BEYOND_T_ENC: Final = {"DDIM": -1, "UniPC": 0}


def _sampler(name: str) -> SamplerName:
    found = split_sampler_and_schedule(name)
    if found is None:
        raise ValueError(f"unknown sampler {name!r}")
    return found[0]


def eta_kind(sampler_name: str) -> EtaKind | None:
    """ "ancestral" or "ddim" for the samplers whose noise amount is η, else None (a label, alias, or a name carrying
    a schedule such as "DPM++ 2M Karras"). Raises ValueError for an unknown sampler."""
    label = _sampler(sampler_name).name
    if label in ANCESTRAL_ETA_SAMPLERS:
        return "ancestral"
    if label in DDIM_ETA_SAMPLERS:
        return "ddim"
    return None


def default_eta(sampler_name: str) -> float | None:
    """The η a sampler uses when neither the job nor an option sets one (1.0 for the ancestral and SDE samplers,
    0.0 for DDIM), or None for a sampler without η. Raises ValueError for an unknown sampler."""
    kind = eta_kind(sampler_name)
    if kind is None:
        return None
    return DEFAULT_ETA_ANCESTRAL if kind == "ancestral" else DEFAULT_ETA_DDIM


def img2img_steps(steps: int, denoising_strength: float, fix_steps: bool = False) -> tuple[int, int]:
    """The reference's strength → steps rule (§3.2), unchanged (the strength-0 fix is in :func:`sampling_steps`).

    * default: ``(steps, int(min(s, 0.999)·steps))``;
    * ``fix_steps`` (opts.img2img_fix_steps): ``(int(steps / min(s, 0.999)), steps − 1)``, and ``(0, steps − 1)``
      when s = 0.

    Returns:
        ``(steps_for_schedule, t_enc)``.

    Raises:
        ValueError: if steps < 1 or the strength is not a number in [0, 1].
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= denoising_strength <= 1.0:  # also rejects NaN
        raise ValueError(f"denoising_strength must be in [0, 1], got {denoising_strength}")
    capped = min(denoising_strength, _MAX_EFFECTIVE_STRENGTH)
    if fix_steps:
        return (int(steps / capped) if denoising_strength > 0 else 0), steps - 1
    return steps, int(capped * steps)


def sampling_steps(
    sampler_name: str, steps: int, denoising_strength: float, *, fix_steps: bool = False, n_iter: int = 1
) -> int:
    """The sampling steps the worker runs and reports for a whole job: per batch the count of its sampling plan
    (one progress callback each), times the `n_iter` batches. Strength 0 runs none (§7.4).

    Raises:
        ValueError: for an unknown sampler, steps < 1, a strength outside [0, 1] or n_iter < 1.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    sampler = _sampler(sampler_name)
    _, t_enc = img2img_steps(steps, denoising_strength, fix_steps)
    if denoising_strength == 0:
        return 0
    if sampler.timestep_sampler:
        per_batch = max(0, t_enc + _TIMESTEP_STEPS_BEYOND_T_ENC[sampler.name])
    else:
        per_batch = t_enc + _K_DIFFUSION_STEPS_BEYOND_T_ENC
    return per_batch * n_iter
