"""The webui options that change an img2img render, with the webui's defaults.

The reference reads these from a global `opts`; here they are a frozen value passed to each job, and a job's
`override_settings` produce a modified copy (`Options.with_overrides`). Keys keep the webui's spelling so that
`override_settings` from A1111 clients map one to one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shared.job.steps import DEFAULT_ETA_ANCESTRAL, DEFAULT_ETA_DDIM
from worker.engine.conditioning.emphasis import EmphasisMode

#: The webui's defaults of the Beta schedule's shape (beta_dist_alpha, beta_dist_beta).
DEFAULT_BETA_DIST = 0.6

PreviewMethod = Literal["Full", "Approx NN", "Approx cheap", "TAESD"]  # show_progress_type

# The override keys that do not map onto an option here, none of them silently (docs/api.md "What the farm honours,
# warns about, or refuses"): the model is chosen per job by the scheduler (`sd_model_checkpoint` becomes the job's
# model); `initial_noise_multiplier` is resolved before overrides apply, so an override of it has no effect
# (semantics §1; the job gets a warning); `sd_vae` can only be "Automatic" or "None", both the checkpoint's own VAE,
# which is the one the engine uses (other values are refused at admission); `samples_format` is how the A1111 answer
# encodes its images (the scheduler's business; results are stored as PNG, with a warning).
IGNORED_OVERRIDE_KEYS = frozenset({"sd_model_checkpoint", "initial_noise_multiplier", "sd_vae", "samples_format"})


@dataclass(frozen=True)
class Options:
    img2img_fix_steps: bool = False  # run exactly `steps` steps whatever the strength (semantics §3.2)
    initial_noise_multiplier: float = 1.0
    img2img_background_color: str = "#ffffff"  # behind transparent init images (semantics §2.4b)
    img2img_color_correction: bool = False
    img2img_extra_noise: float = 0.0
    eta_noise_seed_delta: int = 0  # ENSD
    inpainting_mask_weight: float = 1.0  # "Conditional mask weight" of 9-channel inpainting models
    eta_ancestral: float = DEFAULT_ETA_ANCESTRAL
    eta_ddim: float = DEFAULT_ETA_DDIM
    randn_source: Literal["GPU", "CPU", "NV"] = "GPU"  # semantics §3.1; "NV" = worker/engine/philox.py
    CLIP_stop_at_last_layers: int = 1  # the webui's option name, as clients send it
    # SDXL's crop conditioning (prompts-and-models.md §5.3): the top-left corner passed in the UNet's time ids.
    sdxl_crop_top: int = 0
    sdxl_crop_left: int = 0
    # Prompt encoding (docs/engine.md, "Prompt encoding").
    emphasis: EmphasisMode = "Original"
    comma_padding_backtrack: int = 20  # tokens; 0 = off
    use_old_scheduling: bool = False  # the pre-1.6 reading of prompt-editing `when` numbers
    pad_cond_uncond: bool = False
    pad_cond_uncond_v0: bool = False
    s_min_uncond_all: bool = False  # skip the uncond on every evaluation below s_min_uncond, not every other one
    overlay_inpaint: bool = True
    return_mask: bool = False
    return_mask_composite: bool = False
    # Live previews (docs/engine.md "Live previews"): they change no pixel of the result, only what watchers see.
    live_previews_enable: bool = True
    show_progress_every_n_steps: int = 10  # 0: every step; -1: once at the end of each batch
    show_progress_type: PreviewMethod = "Approx NN"
    show_progress_grid: bool = True
    # Sampler options (docs/engine.md "Sampler options"). The s_* options override the job's fields when they
    # differ from the defaults below (and are then written to the infotext), as the reference does.
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0: no upper bound
    s_noise: float = 1.0
    sigma_min: float = 0.0  # schedule overrides; 0: the model's σ range
    sigma_max: float = 0.0
    rho: float = 0.0  # 0: the schedule's own ρ
    always_discard_next_to_last_sigma: bool = False
    sgm_noise_multiplier: bool = False
    uni_pc_variant: Literal["bh1", "bh2"] = "bh1"
    uni_pc_skip_type: Literal["time_uniform", "time_quadratic", "logSNR"] = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    beta_dist_alpha: float = DEFAULT_BETA_DIST
    beta_dist_beta: float = DEFAULT_BETA_DIST

    def with_overrides(self, overrides: Mapping[str, Any]) -> Options:
        """A copy with the job's `override_settings` applied (keys the spec already validated)."""
        names = {field.name for field in dataclasses.fields(self)} - {"initial_noise_multiplier"}
        changes = {key: value for key, value in overrides.items() if key in names}
        return dataclasses.replace(self, **changes)


DEFAULT_OPTIONS = Options()
