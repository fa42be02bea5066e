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
    "ddim_schedule_length",
    "default_eta",
    "eta_kind",
    "img2img_steps",
    "k_diffusion_steps",
    "sampling_steps",
]

#: The strength the reference caps at, so that strength 1 still keeps one step of the schedule unused (§3.2).
_MAX_EFFECTIVE_STRENGTH: Final = 0.999

#: Samplers whose noise amount is η: the webui's option eta_ancestral for these, eta_ddim for DDIM and DDIM CFG++.
#: The others (Euler, LMS, Heun, DPM2, DPM++ 2M, Restart, LCM, PLMS, UniPC) take no η and ignore it. DPM fast and DPM
#: adaptive take η too: the reference passes them eta_ancestral (1.0), so by default they are stochastic.
ANCESTRAL_ETA_SAMPLERS: Final = frozenset(
    {
        "Euler a",
        "DPM2 a",
        "DPM++ 2S a",
        "DPM++ SDE",
        "DPM++ 2M SDE",
        "DPM++ 2M SDE Heun",
        "DPM++ 3M SDE",
        "DPM fast",
        "DPM adaptive",
    }
)
DDIM_ETA_SAMPLERS: Final = frozenset({"DDIM", "DDIM CFG++"})

#: The webui's defaults of those options (opts.eta_ancestral, opts.eta_ddim).
DEFAULT_ETA_ANCESTRAL: Final = 1.0
DEFAULT_ETA_DDIM: Final = 0.0

EtaKind = Literal["ancestral", "ddim"]

#: Steps a timestep sampler runs relative to t_enc; k-diffusion samplers run ``len(sigma_sched) − 1`` (t_enc + 1
#: for every schedule but DDIM's, from sigmas[steps − t_enc − 1] down to the end). DDIM, DDIM CFG++ and PLMS evaluate
#: timesteps[t_enc − 1] … timesteps[1], t_enc − 1 points; UniPC runs t_enc points from timesteps[t_enc − 1] down
#: to 0 (§3.2).
_TIMESTEP_STEPS_BEYOND_T_ENC: Final = {"DDIM": -1, "DDIM CFG++": -1, "PLMS": -1, "UniPC": 0}

#: The number of training timesteps the pure step count assumes (SD1/SD2/SDXL); LCM's own table has 50.
_TRAIN_TIMESTEPS: Final = 1000
_LCM_TIMESTEPS: Final = 50


def ddim_schedule_length(n: int, train_timesteps: int = _TRAIN_TIMESTEPS) -> int:
    """How many non-zero sigmas the "DDIM" schedule of n steps has: every ``max(N // n, 1)``-th training sigma from
    index 1 (docs/engine.md "Schedules"), which is n only when N is a multiple of n (e.g. 30 steps give 31)."""
    stride = max(train_timesteps // n, 1)
    return len(range(1, train_timesteps, stride))


def k_diffusion_steps(
    sampler: SamplerName, steps: int, t_enc: int, schedule: str | None, discard_penultimate: bool
) -> int:
    """Sampling steps (progress callbacks) of one batch of a k-diffusion sampler, from the length of its schedule.

    DPM fast groups its t_enc + 1 model calls into ⌊(t_enc + 1)/3⌋ + 1 steps of order 3, 2 or 1; DPM adaptive's count
    is not known in advance (the reference counts t_enc + 1, so does this); Restart runs as many steps as its schedule
    when the restart segment exists (σ reaches both 2 and 0.1), which this count assumes.
    """
    if sampler.name == "DPM fast":
        return (t_enc + 1) // 3 + 1
    built = steps + (1 if discard_penultimate else 0)
    if schedule == "ddim":
        n_train = _LCM_TIMESTEPS if sampler.name == "LCM" else _TRAIN_TIMESTEPS
        length = ddim_schedule_length(built, n_train) + 1  # with the trailing 0
    else:
        length = built + 1
    if discard_penultimate:
        length -= 1
    return max(0, length - (steps - t_enc - 1) - 1)


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
    sampler_name: str,
    steps: int,
    denoising_strength: float,
    *,
    fix_steps: bool = False,
    n_iter: int = 1,
    schedule: str | None = None,
    always_discard_penultimate_sigma: bool = False,
) -> int:
    """The sampling steps the worker runs and reports for a whole job: per batch the count of its sampling plan
    (one progress callback each), times the `n_iter` batches. Strength 0 runs none (§7.4).

    `schedule` is the resolved schedule id (None or "automatic": the sampler's own); it matters for "ddim", whose
    length is not the step count.

    Raises:
        ValueError: for an unknown sampler, steps < 1, a strength outside [0, 1] or n_iter < 1.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    found = split_sampler_and_schedule(sampler_name)
    if found is None:
        raise ValueError(f"unknown sampler {sampler_name!r}")
    sampler, named = found
    schedule_steps, t_enc = img2img_steps(steps, denoising_strength, fix_steps)
    if denoising_strength == 0:
        return 0
    if sampler.timestep_sampler:
        per_batch = max(0, t_enc + _TIMESTEP_STEPS_BEYOND_T_ENC[sampler.name])
    else:
        resolved = schedule if schedule not in (None, "automatic") else (named.name if named else None)
        if resolved in (None, "automatic"):
            resolved = sampler.default_schedule
        discard = sampler.discards_penultimate_sigma or always_discard_penultimate_sigma
        per_batch = k_diffusion_steps(sampler, schedule_steps, t_enc, resolved, discard)
    return per_batch * n_iter
