"""Each tenant's webui options (`GET`/`POST /sdapi/v1/options`), kept in the farm's object storage.

The webui keeps its options in a file on its disk; a client that sets `sd_model_checkpoint` expects every later
request to use that model. Here the options are per tenant and must hold for every scheduler process of a
cluster, and survive restarts: so they are one small JSON object per tenant in the farm's storage (the same S3
bucket or local folder as the artifacts), under `{tenant}/~a1111/options.json`. The `~` segment cannot be a task
id, so no task's keys (or a cleanup by task prefix) can ever reach it. Redis was not chosen because it may lose
everything (farm-design.md), and a lost checkpoint choice would silently switch models.

Only the settable subset is stored: `sd_model_checkpoint` and the options a job may override
(`shared.job.spec.SUPPORTED_OVERRIDE_KEYS`), each checked like a job's override. The other webui options follow the
same rule as a job's `override_settings` (`scheduler.a1111.field_policy.review_overrides`): one that would change a
render and that the farm cannot do is a 422 naming it, any other is not stored and is named in the answer's
`warnings`. Concurrent writes of one tenant: the last one wins.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from scheduler.a1111.field_policy import review_overrides
from shared.errors import FieldProblem, InputError, NotFound
from shared.job.spec import SUPPORTED_OVERRIDE_KEYS, OverrideSettings
from shared.job.warnings import JobWarning
from shared.storage import Storage, validate_key

OPTIONS_SEGMENT = "~a1111"
OPTIONS_FILE = "options.json"
MAX_CHECKPOINT_LENGTH = 512

# The webui's defaults of the options the farm honours (worker/engine/options.py holds the same values for the worker;
# the scheduler image has no worker package).
OPTION_DEFAULTS: dict[str, Any] = {
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0,
    "img2img_background_color": "#ffffff",
    "img2img_color_correction": False,
    "eta_noise_seed_delta": 0,
    "inpainting_mask_weight": 1.0,
    "eta_ancestral": 1.0,
    "randn_source": "GPU",
    "samples_format": "png",
    "img2img_extra_noise": 0.0,
    "overlay_inpaint": True,
    "return_mask": False,
    "return_mask_composite": False,
    "emphasis": "Original",
    "comma_padding_backtrack": 20,
    "use_old_scheduling": False,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "s_min_uncond_all": False,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 10,
    "show_progress_type": "Approx NN",
    "show_progress_grid": True,
    # sampler options (docs/engine.md "Sampler options"), the webui's defaults
    "eta_ddim": 0.0,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "always_discard_next_to_last_sigma": False,
    "sgm_noise_multiplier": False,
    "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3,
    "uni_pc_lower_order_final": True,
    "beta_dist_alpha": 0.6,
    "beta_dist_beta": 0.6,
}

_OVERRIDES = TypeAdapter(OverrideSettings)


def options_key(tenant: str) -> str:
    """Where a tenant's options are stored."""
    return validate_key(f"{tenant}/{OPTIONS_SEGMENT}/{OPTIONS_FILE}")


def read_options(storage: Storage, tenant: str) -> dict[str, Any]:
    """The tenant's stored options ({} when none were set). Blocking; StorageUnavailable (503) when down."""
    try:
        raw = storage.get(options_key(tenant))
    except NotFound:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}  # a damaged object: fall back to the defaults rather than refusing every request
    return data if isinstance(data, dict) else {}


def ignored_options(changes: Mapping[str, Any]) -> list[JobWarning]:
    """Warnings naming the options of `changes` that the farm does not keep. Raises InputError (422) for an option
    that would change a render and that the farm cannot do."""
    return review_overrides(changes, prefix="", translated=False)


def settable(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The options of `changes` that the farm keeps, checked; others are dropped (`ignored_options` names them).
    Raises InputError (422)."""
    kept = {key: value for key, value in changes.items() if key in SUPPORTED_OVERRIDE_KEYS}
    checkpoint = kept.get("sd_model_checkpoint")
    if checkpoint is not None and (
        not isinstance(checkpoint, str) or not checkpoint.strip() or len(checkpoint) > MAX_CHECKPOINT_LENGTH
    ):
        raise InputError(
            f"sd_model_checkpoint: must be a model name of 1-{MAX_CHECKPOINT_LENGTH} characters "
            "(see GET /sdapi/v1/sd-models)",
            code="invalid_model",
            field="sd_model_checkpoint",
        )
    try:
        _OVERRIDES.validate_python(kept)
    except ValidationError as exc:
        problems = [
            FieldProblem(".".join(str(part) for part in error["loc"]) or "body", str(error["msg"]), "invalid")
            for error in exc.errors()
        ]
        raise InputError.from_problems(problems) from None
    return kept


def write_options(storage: Storage, tenant: str, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the settable part of `changes` into the tenant's options; returns what is stored now. Blocking."""
    kept = settable(changes)
    if not kept:
        return read_options(storage, tenant)
    merged = {**read_options(storage, tenant), **kept}
    data = json.dumps(merged, sort_keys=True, separators=(",", ":")).encode()
    storage.put(options_key(tenant), data, "application/json")
    return merged
