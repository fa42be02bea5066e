"""From an A1111 request to a farm job, and from a finished farm job back to the A1111 answer.

Pure functions (no I/O): the routes read and write, these only reshape. Written from img2img-semantics.md §5.2:

- the task id is `force_task_id` or a new `task(img2img-XXXXXXX)` (`shared.job.ids.new_a1111_task_id`);
- the sampler is `sampler_name or sampler_index` (so the default is "Euler"); names with a schedule suffix such as
  "DPM++ 2M Karras", aliases such as "k_euler_a", and schedules by name or label in either case are matched by
  `shared.job.spec` / `shared.sampler_names`. Unlike the reference, an unknown name is a 422 naming the field (§7.5);
- `override_settings`: the keys the farm supports are passed on (and checked); the others are left out here, after
  `scheduler.a1111.field_policy` has refused them or named them in the job's warnings. `sd_model_checkpoint` (from
  the request, else the tenant's default set with `POST /sdapi/v1/options`) becomes the job's model;
- `infotext`: fields found there fill in the request fields that were not sent; settings go into override_settings;
- fields the farm does not honour (scripts, face restoration, ...) are refused or warned about by
  `scheduler.a1111.field_policy.review_request`, which the routes call before this translation;
- the answer's `info` is the reference's `processed.js()` shape rebuilt from the job and its artifacts.

The scheduler image has no worker package (and no torch), so nothing here imports `worker`.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from scheduler.a1111.schema import Img2ImgRequest
from shared.errors import FieldProblem, InputError
from shared.infotext import LEADING_KEYS, TRAILING_KEYS, parse_infotext
from shared.job.seeds import resolved_seeds
from shared.job.spec import SUPPORTED_OVERRIDE_KEYS, Img2ImgJob
from shared.output_formats import encode_result, infotext_of, output_format, read_infotext

FARM_VERSION = "renderfarm"  # what `info.version` says instead of the webui's version

# The reference's own infotext keys; the rest of a parameter line are extra generation params.
LEADING_INFOTEXT_KEYS = frozenset(LEADING_KEYS + TRAILING_KEYS)

_HASH_SUFFIX_RE = re.compile(r"\s*\[[0-9A-Fa-f]{6,64}\]$")  # "model.safetensors [6ce0161689]": the webui's title
_SIZE_RE = re.compile(r"(\d+)x(\d+)")


def model_of_checkpoint(checkpoint: str | None, default_model: str) -> str | None:
    """The job's model for a webui checkpoint title, or None for the farm's default model.

    A title may carry a hash suffix ("v1-5.safetensors [6ce0161689]"); it is kept, and admission checks it against
    the models folder and stores the canonical name (scheduler/model_checks.py). The default model (with or without
    a suffix) maps to None on purpose: a job with no model runs on the default queue, which every default worker
    serves, whereas a named model gets a queue of its own family.
    """
    if checkpoint is None:
        return None
    name = _HASH_SUFFIX_RE.sub("", checkpoint.strip())
    if not name or name == default_model:
        return None
    return checkpoint.strip()


# --------------------------------------------------------------------------------------------------------------
# Infotext


def _number(text: str) -> int | float | str:
    """`text` as an int or float when it is one (infotext values are text), else unchanged."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


_INPAINT_FILL = {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}

# The infotext keys `_fields_from_infotext` reads (keep it in step: a key read there but missing here only earns a
# needless warning), and those that describe a render without changing one. Any other key of a request's infotext
# is named in an `ignored_infotext` warning (scheduler.a1111.field_policy).
INFOTEXT_KEYS_READ = frozenset(
    {
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Image CFG scale",
        "Seed",
        "Variation seed",
        "Variation seed strength",
        "Denoising strength",
        "Mask blur",
        "Masked area padding",
        "Noise multiplier",
        "Eta",
        "Size",
        "Seed resize from",
        "Tiling",
        "Inpaint area",
        "Mask mode",
        "Masked content",
        "Clip skip",
        "ENSD",
        "Model",
        "RNG",
    }
)
INFOTEXT_KEYS_DESCRIPTIVE = frozenset({"Model hash", "VAE hash", "Init image hash", "Version", "User"})


def _fields_from_infotext(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request fields, override settings) that an infotext names. Values that do not parse are left out: the
    fields they would fill keep their defaults, as the reference does."""
    prompt, negative, params = parse_infotext(text)
    fields: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
    overrides: dict[str, Any] = {}
    simple = {
        "Steps": ("steps", int),
        "Sampler": ("sampler_name", str),
        "Schedule type": ("scheduler", str),
        "CFG scale": ("cfg_scale", float),
        "Image CFG scale": ("image_cfg_scale", float),
        "Seed": ("seed", int),
        "Variation seed": ("subseed", int),
        "Variation seed strength": ("subseed_strength", float),
        "Denoising strength": ("denoising_strength", float),
        "Mask blur": ("mask_blur", int),
        "Masked area padding": ("inpaint_full_res_padding", int),
        "Noise multiplier": ("initial_noise_multiplier", float),
        "Eta": ("eta", float),
        "NGMS": ("s_min_uncond", float),
    }
    for key, (name, kind) in simple.items():
        if key in params:
            with contextlib.suppress(ValueError):
                fields[name] = kind(params[key])
    for key, (size_w, size_h) in (
        ("Size", ("width", "height")),
        ("Seed resize from", ("seed_resize_from_w", "seed_resize_from_h")),
    ):
        match = _SIZE_RE.fullmatch(params.get(key, ""))
        if match:
            fields[size_w], fields[size_h] = int(match.group(1)), int(match.group(2))
    if "Tiling" in params:
        fields["tiling"] = params["Tiling"] == "True"
    if "Inpaint area" in params:
        fields["inpaint_full_res"] = params["Inpaint area"] == "Only masked"
    if "Mask mode" in params:
        fields["inpainting_mask_invert"] = int(params["Mask mode"] == "Inpaint not masked")
    if params.get("Masked content") in _INPAINT_FILL:
        fields["inpainting_fill"] = _INPAINT_FILL[params["Masked content"]]
    setting_keys = {"Clip skip": "CLIP_stop_at_last_layers", "ENSD": "eta_noise_seed_delta"}
    for key, option in setting_keys.items():
        if key in params and isinstance(_number(params[key]), int):
            overrides[option] = _number(params[key])
    if "Emphasis" in params:
        overrides["emphasis"] = params["Emphasis"]
    flag_keys = {
        "Pad conds": "pad_cond_uncond",
        "Pad conds v0": "pad_cond_uncond_v0",
        "Old prompt editing timelines": "use_old_scheduling",
        "NGMS all steps": "s_min_uncond_all",
    }
    for key, option in flag_keys.items():
        if params.get(key) in ("True", "False"):
            overrides[option] = params[key] == "True"
    if "Model" in params:
        overrides["sd_model_checkpoint"] = params["Model"]
    if params.get("RNG") in ("GPU", "CPU", "NV"):
        overrides["randn_source"] = params["RNG"]
    return fields, overrides


# --------------------------------------------------------------------------------------------------------------
# Request → job


def job_body(
    request: Img2ImgRequest,
    *,
    task_id: str,
    default_model: str,
    tenant_options: Mapping[str, Any],
) -> dict[str, Any]:
    """The farm job (a body for `shared.job.spec.parse_job`) that runs `request`.

    `tenant_options` are the tenant's stored webui options (`POST /sdapi/v1/options`): defaults under the request's
    own override_settings. It drops what the farm does not use: review the request first
    (`scheduler.a1111.field_policy.review_request`), so that nothing is dropped silently.
    """
    sent = dict(request.model_dump())
    overrides: dict[str, Any] = dict(tenant_options)
    if request.infotext:
        found, found_overrides = _fields_from_infotext(request.infotext)
        for name, value in found.items():
            if name not in request.model_fields_set:
                sent[name] = value
        overrides.update(found_overrides)
    overrides.update(request.override_settings or {})
    checkpoint = overrides.pop("sd_model_checkpoint", None)
    farm_overrides = {key: value for key, value in overrides.items() if key in SUPPORTED_OVERRIDE_KEYS}
    body: dict[str, Any] = {
        "init_images": sent["init_images"],
        "resize_mode": sent["resize_mode"],
        "denoising_strength": sent["denoising_strength"],
        "image_cfg_scale": sent["image_cfg_scale"],
        "mask": sent["mask"],
        "mask_blur_x": sent["mask_blur_x"],
        "mask_blur_y": sent["mask_blur_y"],
        "mask_round": sent["mask_round"],
        "inpainting_fill": sent["inpainting_fill"],
        "inpaint_full_res": sent["inpaint_full_res"],
        "inpaint_full_res_padding": sent["inpaint_full_res_padding"],
        "inpainting_mask_invert": sent["inpainting_mask_invert"],
        "initial_noise_multiplier": sent["initial_noise_multiplier"],
        "latent_mask": sent["latent_mask"],
        "force_task_id": task_id,
        "prompt": sent["prompt"],
        "negative_prompt": sent["negative_prompt"],
        "styles": sent["styles"] or [],
        "seed": sent["seed"],
        "subseed": sent["subseed"],
        "subseed_strength": sent["subseed_strength"],
        "seed_resize_from_h": sent["seed_resize_from_h"],
        "seed_resize_from_w": sent["seed_resize_from_w"],
        # The reference: `sampler_name or sampler_index`, and sampler_index defaults to "Euler".
        "sampler_name": sent["sampler_name"] or sent["sampler_index"],
        "scheduler": sent["scheduler"],
        "batch_size": sent["batch_size"],
        "n_iter": sent["n_iter"],
        "steps": sent["steps"],
        "cfg_scale": sent["cfg_scale"],
        "width": sent["width"],
        "height": sent["height"],
        "eta": sent["eta"],
        "s_min_uncond": sent["s_min_uncond"],
        # The reference: the field, or when it is null the webui option `tiling` (default off).
        "tiling": bool(sent["tiling"] if sent["tiling"] is not None else overrides.get("tiling") is True),
        "s_churn": sent["s_churn"],
        "s_tmin": sent["s_tmin"],
        "s_tmax": sent["s_tmax"],
        "s_noise": sent["s_noise"],
        "override_settings": farm_overrides,
    }
    if sent["mask_blur"] is not None:
        body["mask_blur"] = sent["mask_blur"]
    model = model_of_checkpoint(checkpoint, default_model)
    if model is not None:
        body["model"] = model
    return body


def rename_fields(exc: InputError, renames: Mapping[str, str]) -> InputError:
    """`exc` with its field names as the A1111 client sent them (e.g. sampler_index for a sampler_name error)."""
    if not renames or not any(problem.field in renames for problem in exc.problems):
        return exc
    problems = [
        FieldProblem(renames.get(problem.field, problem.field), problem.message, problem.code)
        for problem in exc.problems
    ]
    renamed = type(exc).from_problems(problems)
    return renamed


def field_renames(request: Img2ImgRequest) -> dict[str, str]:
    """Farm field names → the A1111 names a client used for them, where they differ."""
    renames: dict[str, str] = {}
    if not request.sampler_name:
        renames["sampler_name"] = "sampler_index"
    if request.override_settings and "sd_model_checkpoint" in request.override_settings:
        renames["model"] = "override_settings.sd_model_checkpoint"
    return renames


def echoed_parameters(request: Img2ImgRequest) -> dict[str, Any]:
    """The answer's `parameters`: the request as parsed (defaults filled in), images nulled unless asked for. Unknown
    fields are left out, as the reference's parsing drops them."""
    parameters = request.model_dump(exclude=set(request.model_extra or ()))
    if not request.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    return parameters


# --------------------------------------------------------------------------------------------------------------
# Job → answer


def job_timestamp(when: datetime | None) -> str:
    """The webui's job timestamp, `YYYYmmddHHMMSS` (UTC here), or "0" when unknown."""
    if when is None:
        return "0"
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def build_info(
    job: Img2ImgJob,
    *,
    job_id: uuid.UUID,
    task_id: str,
    seeds: Sequence[int | None],
    infotexts: Sequence[str],
    started_at: datetime | None,
    warnings: Sequence[Mapping[str, Any]],
    grid_first: bool,
) -> dict[str, Any]:
    """The reference's `processed.js()` for a finished job (the answer's `info`, before JSON encoding).

    `seeds` and `infotexts` are per result image; `grid_first` puts the grid's infotext first (and
    index_of_first_image = 1), as the reference does when it returns a grid. `task_id` and `warnings` are the
    farm's additions: the reference's answer carries no task id, and the farm's warnings (such as the blank-mask
    fallback) are worth seeing.
    """
    seed, subseed = resolved_seeds(job.seed, job.subseed, job_id)
    count = len(infotexts)
    all_seeds = [value if value is not None else seed for value in seeds]
    params = parse_infotext(infotexts[0])[2] if infotexts else {}
    extra = {key: _number(value) for key, value in params.items() if key not in LEADING_INFOTEXT_KEYS}
    return {
        "prompt": job.prompt,
        "all_prompts": [job.prompt] * count,
        "negative_prompt": job.negative_prompt,
        "all_negative_prompts": [job.negative_prompt] * count,
        "seed": all_seeds[0] if all_seeds else seed,
        "all_seeds": all_seeds,
        "subseed": subseed,
        "all_subseeds": [subseed + i for i in range(count)],
        "subseed_strength": job.subseed_strength,
        "width": job.width,
        "height": job.height,
        "sampler_name": job.sampler.name,
        "cfg_scale": job.cfg_scale,
        "steps": job.steps,
        "batch_size": job.effective_batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": params.get("Model"),
        "sd_model_hash": params.get("Model hash"),
        "sd_vae_name": params.get("VAE"),
        "sd_vae_hash": params.get("VAE hash"),
        "seed_resize_from_w": job.seed_resize_from_w,
        "seed_resize_from_h": job.seed_resize_from_h,
        "denoising_strength": job.denoising_strength,
        "extra_generation_params": extra,
        "index_of_first_image": 1 if grid_first else 0,
        "infotexts": ([infotexts[0]] if grid_first and infotexts else []) + list(infotexts),
        "styles": list(job.styles),
        "job_timestamp": job_timestamp(started_at),
        "clip_skip": job.override_settings.get("CLIP_stop_at_last_layers", 1),
        "is_using_inpainting_conditioning": "Conditional mask weight" in params,
        "version": FARM_VERSION,
        "task_id": task_id,
        "warnings": [dict(warning) for warning in warnings],
    }


def answer_image(stored: bytes, samples_format: str) -> bytes:
    """A stored result encoded as the answer's `samples_format` says, as the webui's API encodes its images
    (shared.output_formats). A result already stored in that format (the worker writes the job's samples_format)
    is answered as it is; another one (a grid, a mask, a result stored before formats were honoured) is
    re-encoded with its infotext."""
    fmt = output_format(samples_format)
    with Image.open(io.BytesIO(stored)) as picture:
        if picture.format == fmt.pillow:
            return stored
        infotext = infotext_of(picture)
        if infotext is None and fmt.pillow != "PNG":
            infotext = ""  # the webui's API writes an empty UserComment for an image without parameters (a mask)
        picture.load()
        return encode_result(picture, fmt, infotext)


def answer_infotext(data: bytes) -> str | None:
    """The infotext of an answer's image, whichever of the formats above it is in (for clients and tests)."""
    return read_infotext(data)


def image_grid(images: Sequence[Image.Image]) -> Image.Image:
    """The webui's default grid: round(√n) rows (at most n), as many columns as needed, row by row, black behind."""
    count = len(images)
    rows = max(1, min(count, round(math.sqrt(count))))
    cols = math.ceil(count / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), "black")
    for i, image in enumerate(images):
        grid.paste(image, (i % cols * width, i // cols * height))
    return grid
