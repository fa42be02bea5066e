"""The job contract between scheduler and worker: one img2img / inpainting request, validated.

`Img2ImgJob` carries every field of the reference's `StableDiffusionProcessingImg2Img` with the reference API's
defaults (img2img-semantics.md §1, §5.2), plus the farm's own fields (`priority`, `tags`, `webhook_url`). The
scheduler builds it with `parse_job(body, limits)`, which checks everything, the farm's limits included, and turns
every problem into one `InputError` (422) naming the fields, or `PayloadTooLarge` (413) when an inline image is over
the limit. The job is stored as `job.to_request_json()`; the worker reads it back with
`Img2ImgJob.from_request_json(data)`, which re-checks the structure but not the limits (the job was admitted under
the scheduler's limits; a worker with other settings must not refuse it afterwards).

The stored request has no task id: `force_task_id` is accepted in a body (A1111 clients send it), and the
scheduler takes it as the job's id, but the id lives in the URL and the row's column, never in the stored request.
Create-or-get compares `shared.job.hashing.request_hash(job)` of that stored request.

Images are references here, never pixels: `asset:<sha256>`, a URL of the farm's storage, or inline base64 (a bare
string or a `data:image/...;base64,` URI). `shared.job.image_refs` classifies one; `shared.images` decodes them.

Deliberate differences from the reference API (img2img-semantics.md §7.5, §7.6): out-of-range values, unknown
sampler/schedule names, unknown fields and unknown `override_settings` keys are rejected; `latent_mask` is an image
reference like `mask`; `styles` must be empty (the farm keeps no style presets).

This module imports no torch and no web framework.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, get_type_hints

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12

from shared.job.ids import is_valid_task_id, task_id_problem
from shared.job.image_refs import CONTROL_RE, ImageRef, ImageRefProblem, check_url, classify_image_ref
from shared.job.limits import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_INLINE_IMAGE_BYTES,
    DEFAULT_MAX_N_ITER,
    DEFAULT_MAX_PROMPT_TOKENS,
)
from shared.job.problems import Loc, field_problems, headline_first, problem, several
from shared.job.text import text_problems
from shared.prompts import prompt_problems
from shared.prompts.token_limit import prompt_token_problems
from shared.sampler_names import (
    SAMPLER_LABELS,
    SCHEDULE_LABELS,
    SamplerName,
    ScheduleName,
    find_schedule,
    split_sampler_and_schedule,
)

__all__ = [
    "MAX_MASK_BLUR_PX",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "MIN_SIDE_PX",
    "SIZE_MULTIPLE_PX",
    "SUPPORTED_OVERRIDE_KEYS",
    "Img2ImgJob",
    "OverrideSettings",
    "SpecLimits",
    "parse_job",
]

# ----------------------------------------------------------------------------------------------------------------
# Bounds. Where the reference's UI has a slider, its range is the allowed range (the reference API checks nothing).

SIZE_MULTIPLE_PX = 8  # width and height: the VAE downsamples by 8, so the latent is W/8 × H/8 exactly
MIN_SIDE_PX = 64  # pixels; a smaller side gives a latent of under 8 cells, which the UNet cannot downsample
MAX_STEPS = 150  # the UI's sampling-steps slider
MAX_CFG_SCALE = 30.0
MAX_MASK_BLUR_PX = 64  # the UI's mask-blur slider; Gaussian sigma in pixels of the original picture
MAX_INITIAL_NOISE_MULTIPLIER = 1.5  # the option's slider
MAX_SEED = 2**32 - 1  # the webui draws random seeds below this and writes them into the infotext
MAX_SEED_RESIZE_PX = 8192  # seed_resize_from_h/w; noise is drawn at that size / 8
MAX_PADDING_PX = 8192  # inpaint_full_res_padding, pixels of the original picture
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
MAX_TAGS = 16
MAX_TAG_LENGTH = 64  # characters
MAX_MODEL_NAME_LENGTH = 512  # characters
# Characters of prompt and of negative_prompt. The webui sets no limit; real prompts are a few thousand characters
# at most. Without one, a 60 MB prompt drove a worker past 11 GB before its first step and made every status read
# of the job as large.
MAX_PROMPT_LENGTH = 32_768
MAX_CLIP_SKIP = 12
MAX_S_MIN_UNCOND = 15.0  # the "Negative Guidance minimum sigma" slider
MAX_COMMA_PADDING_BACKTRACK = 74  # the option's slider: tokens of a 75-token chunk

MAX_S_CHURN = 100.0  # the webui's slider range
MAX_S_NOISE = 10.0
MAX_SCHEDULE_SIGMA = 1000.0  # far above any model's σ_max (SD: 14.6)
MAX_RHO = 100.0
MAX_UNI_PC_ORDER = 50  # the webui's slider range
MAX_BETA_SHAPE = 100.0
ETA_DEFAULT = 1.0  # what `eta = None` means for ancestral samplers (the webui option eta_ancestral)

_HEX_COLOR_RE = re.compile(r"#[0-9a-fA-F]{6}")


# ----------------------------------------------------------------------------------------------------------------
# Limits


class LimitSettings(Protocol):
    """What `SpecLimits.from_settings` reads: the farm's `shared.config.Settings` has these (the job contract does
    not import the settings, so the SDK's client install needs no pydantic-settings)."""

    @property
    def max_image_pixels(self) -> int: ...
    @property
    def max_inline_image_bytes(self) -> int: ...
    @property
    def max_batch_size(self) -> int: ...
    @property
    def max_n_iter(self) -> int: ...
    @property
    def max_prompt_tokens(self) -> int: ...


@dataclass(frozen=True)
class SpecLimits:
    """The farm's size limits that a job is admitted under. Passed to `parse_job`; the worker does not re-check them.

    max_image_pixels: width × height of the processing size, and of seed_resize_from_w × _h (pixels).
    max_inline_image_bytes: base64-decoded size of one inline image (bytes); bigger → PayloadTooLarge (413).
    max_batch_size: images per sampling batch. max_n_iter: batches per job.
    max_prompt_tokens: CLIP tokens of prompt and of negative_prompt (shared.prompts.token_limit).
    """

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_inline_image_bytes: int = DEFAULT_MAX_INLINE_IMAGE_BYTES
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_n_iter: int = DEFAULT_MAX_N_ITER
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS

    @classmethod
    def from_settings(cls, settings: LimitSettings) -> SpecLimits:
        return cls(
            max_image_pixels=settings.max_image_pixels,
            max_inline_image_bytes=settings.max_inline_image_bytes,
            max_batch_size=settings.max_batch_size,
            max_n_iter=settings.max_n_iter,
            max_prompt_tokens=settings.max_prompt_tokens,
        )


_LIMITS_KEY = "spec_limits"  # key of the SpecLimits in pydantic's validation context


def _limits(info: ValidationInfo) -> SpecLimits | None:
    """The limits to check against, or None when validating a stored job (from_request_json) or a direct build."""
    context = info.context
    if isinstance(context, Mapping):
        limits = context.get(_LIMITS_KEY)
        if isinstance(limits, SpecLimits):
            return limits
    return None


# ----------------------------------------------------------------------------------------------------------------
# Image references (their form: shared.job.image_refs)


def _validate_image_ref(value: str, info: ValidationInfo) -> str:
    limits = _limits(info)
    try:
        classify_image_ref(value, limits.max_inline_image_bytes if limits else None)
    except ImageRefProblem as found:
        raise problem(found.code, found.message) from None
    return value


# A reference stays the string the client sent: it is what gets stored, hashed and echoed back.
ImageRefStr = Annotated[str, AfterValidator(_validate_image_ref)]


# ----------------------------------------------------------------------------------------------------------------
# Scalar types


def _reject_bool(value: Any) -> Any:
    # pydantic's lax mode reads true as 1; a boolean where a number is meant is a client bug, so say so.
    if isinstance(value, bool):
        raise problem("invalid_type", "must be a number, not true/false")
    return value


Int = Annotated[int, BeforeValidator(_reject_bool)]
Float = Annotated[float, BeforeValidator(_reject_bool)]


# ----------------------------------------------------------------------------------------------------------------
# override_settings


def _check_hex_color(value: str) -> str:
    if not _HEX_COLOR_RE.fullmatch(value):
        raise problem("invalid_format", "must be a colour #rrggbb, e.g. #ffffff")
    return value


# The sd_vae values that name no file: "None" is the checkpoint's own VAE, "Automatic" a VAE file beside the
# checkpoint when there is one. Any other value is a VAE file name, which the scheduler checks against its models
# folder at submission (scheduler/model_checks.py; an unknown name is a 422 naming override_settings.sd_vae).
OWN_VAE_VALUES = ("Automatic", "None")


@with_config(ConfigDict(extra="forbid", allow_inf_nan=False))
class OverrideSettings(TypedDict, total=False):
    """The webui options a job may override, with their types. Any other key is rejected.

    `initial_noise_multiplier` is accepted for compatibility but has no effect: the reference resolves the job's
    noise multiplier when the processing object is built, before overrides apply (img2img-semantics.md §1). Use the
    job field `initial_noise_multiplier` instead (a job that sets it gets a warning, `shared.job.warnings`).
    `sd_model_checkpoint` selects the model like the job's `model` field; sending both with different values is
    rejected. `sd_vae` is `OWN_VAE_VALUES` or a VAE file name (checked by the scheduler). `samples_format` chooses
    the format the results are stored in and the A1111 answer encodes its images in (shared.output_formats).
    """

    sd_model_checkpoint: Annotated[str, annotated_types.Len(1, MAX_MODEL_NAME_LENGTH)]
    CLIP_stop_at_last_layers: Annotated[Int, annotated_types.Ge(1), annotated_types.Le(MAX_CLIP_SKIP)]
    img2img_fix_steps: bool
    initial_noise_multiplier: Annotated[
        Float, annotated_types.Ge(0.0), annotated_types.Le(MAX_INITIAL_NOISE_MULTIPLIER)
    ]
    img2img_background_color: Annotated[str, AfterValidator(_check_hex_color)]
    img2img_color_correction: bool
    eta_noise_seed_delta: Annotated[Int, annotated_types.Ge(0), annotated_types.Le(MAX_SEED)]
    inpainting_mask_weight: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(1.0)]
    eta_ancestral: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(1.0)]
    randn_source: Literal["GPU", "CPU", "NV"]
    sd_vae: Annotated[str, annotated_types.Len(1, MAX_MODEL_NAME_LENGTH)]
    samples_format: Literal["png", "jpg", "jpeg", "webp"]
    img2img_extra_noise: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(1.0)]
    overlay_inpaint: bool
    return_mask: bool
    return_mask_composite: bool
    # Prompt encoding (docs/engine.md, "Prompt encoding"); "Unknown names fall back to Original" in the reference,
    # here an unknown emphasis name is a 422.
    emphasis: Literal["Original", "No norm", "Ignore", "None"]
    comma_padding_backtrack: Annotated[Int, annotated_types.Ge(0), annotated_types.Le(MAX_COMMA_PADDING_BACKTRACK)]
    use_old_scheduling: bool
    pad_cond_uncond: bool
    pad_cond_uncond_v0: bool
    s_min_uncond_all: bool
    # Live previews (docs/engine.md "Live previews"): what watchers see while the job runs, not its result.
    live_previews_enable: bool
    show_progress_every_n_steps: Annotated[Int, annotated_types.Ge(-1), annotated_types.Le(MAX_STEPS)]
    show_progress_type: Literal["Full", "Approx NN", "Approx cheap", "TAESD"]
    show_progress_grid: bool
    # Sampler options (docs/engine.md "Sampler options"): churn/noise, schedule overrides (0 = off), UniPC's.
    eta_ddim: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(1.0)]
    s_churn: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(MAX_S_CHURN)]
    s_tmin: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(MAX_SCHEDULE_SIGMA)]
    s_tmax: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(MAX_SCHEDULE_SIGMA)]
    s_noise: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(MAX_S_NOISE)]
    sigma_min: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(MAX_SCHEDULE_SIGMA)]
    sigma_max: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(MAX_SCHEDULE_SIGMA)]
    rho: Annotated[Float, annotated_types.Ge(0.0), annotated_types.Le(MAX_RHO)]
    always_discard_next_to_last_sigma: bool
    sgm_noise_multiplier: bool
    # "vary_coeff" is the reference's third variant; diffusers' UniPC has no such solver, so it is refused.
    uni_pc_variant: Literal["bh1", "bh2"]
    uni_pc_skip_type: Literal["time_uniform", "time_quadratic", "logSNR"]
    uni_pc_order: Annotated[Int, annotated_types.Ge(1), annotated_types.Le(MAX_UNI_PC_ORDER)]
    uni_pc_lower_order_final: bool
    beta_dist_alpha: Annotated[Float, annotated_types.Gt(0.0), annotated_types.Le(MAX_BETA_SHAPE)]
    beta_dist_beta: Annotated[Float, annotated_types.Gt(0.0), annotated_types.Le(MAX_BETA_SHAPE)]
    # SDXL's crop conditioning (docs/engine.md "SDXL and single-file checkpoints"); other models ignore it, as the
    # reference's do.
    sdxl_crop_top: Annotated[Int, annotated_types.Ge(0), annotated_types.Le(MAX_SEED_RESIZE_PX)]
    sdxl_crop_left: Annotated[Int, annotated_types.Ge(0), annotated_types.Le(MAX_SEED_RESIZE_PX)]


SUPPORTED_OVERRIDE_KEYS: tuple[str, ...] = tuple(OverrideSettings.__annotations__)


# ----------------------------------------------------------------------------------------------------------------
# The job


class Img2ImgJob(BaseModel):
    """One img2img / inpainting job: the reference's fields and API defaults, validated, immutable.

    Build it with `parse_job` (checks the limits too) or `from_request_json` (a stored job). Constructing it
    directly checks the structure but not the limits.

    Units: width/height in pixels of the processing size; mask_blur* are Gaussian sigmas in pixels of the original
    picture; inpaint_full_res_padding in pixels of the original picture; strengths and weights are fractions 0..1.
    After validation `mask_blur_x`/`mask_blur_y` are the effective blur: an int `mask_blur` has been copied into both.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # --- StableDiffusionProcessingImg2Img
    init_images: list[ImageRefStr]  # required; k ≤ batch_size (one image is repeated batch_size times)
    resize_mode: Int = Field(0, ge=0, le=3)  # 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale
    denoising_strength: Float = Field(0.75, ge=0.0, le=1.0)
    image_cfg_scale: Float | None = Field(None, ge=0.0, le=MAX_CFG_SCALE)  # edit (InstructPix2Pix) models only
    mask: ImageRefStr | None = None  # 255 regenerate, 0 keep
    mask_blur_x: Int = Field(4, ge=0, le=MAX_MASK_BLUR_PX)
    mask_blur_y: Int = Field(4, ge=0, le=MAX_MASK_BLUR_PX)
    mask_blur: Int | None = Field(None, ge=0, le=MAX_MASK_BLUR_PX)  # an int overrides mask_blur_x and _y
    mask_round: bool = True
    inpainting_fill: Int = Field(0, ge=0, le=3)  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = True  # True: "Only masked"
    inpaint_full_res_padding: Int = Field(0, ge=0, le=MAX_PADDING_PX)
    inpainting_mask_invert: Int = Field(0, ge=0, le=1)  # 1: "Inpaint not masked"
    initial_noise_multiplier: Float | None = Field(None, ge=0.0, le=MAX_INITIAL_NOISE_MULTIPLIER)  # None: 1.0
    latent_mask: ImageRefStr | None = None  # decoded like mask (the reference never decodes it, §7.6)
    force_task_id: str | None = None  # the public task id; not part of the request hash

    # --- StableDiffusionProcessing (base)
    prompt: str = Field("", max_length=MAX_PROMPT_LENGTH)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_LENGTH)
    styles: list[str] = Field(default_factory=list)  # must stay empty: the farm has no style presets
    seed: Int = Field(-1, ge=-1, le=MAX_SEED)  # -1: random
    subseed: Int = Field(-1, ge=-1, le=MAX_SEED)
    subseed_strength: Float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: Int = Field(-1, ge=-1, le=MAX_SEED_RESIZE_PX)  # ≤ 0: off
    seed_resize_from_w: Int = Field(-1, ge=-1, le=MAX_SEED_RESIZE_PX)
    sampler_name: str = "Euler"  # label or alias, case-insensitive; may carry a schedule ("DPM++ 2M Karras")
    scheduler: str | None = None  # schedule name or label; None means Automatic
    batch_size: Int = Field(1, ge=1)  # upper bound: SpecLimits.max_batch_size
    n_iter: Int = Field(1, ge=1)  # upper bound: SpecLimits.max_n_iter
    steps: Int = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: Float = Field(7.0, ge=0.0, le=MAX_CFG_SCALE)
    width: Int = 512  # multiple of 8, ≥ 64; width × height ≤ SpecLimits.max_image_pixels
    height: Int = 512
    eta: Float | None = Field(None, ge=0.0, le=1.0)  # ancestral noise amount; None: eta_ancestral option (1.0)
    s_min_uncond: Float | None = Field(None, ge=0.0, le=MAX_S_MIN_UNCOND)  # negative guidance minimum sigma; None: 0
    tiling: bool = False  # circular padding of the UNet and VAE: a seamless texture (worker/engine/tiling.py)
    # Churn and noise of the samplers that take them (docs/engine.md "Sampler options"); None: the option's value.
    s_churn: Float | None = Field(None, ge=0.0, le=MAX_S_CHURN)
    s_tmin: Float | None = Field(None, ge=0.0, le=MAX_SCHEDULE_SIGMA)
    s_tmax: Float | None = Field(None, ge=0.0, le=MAX_SCHEDULE_SIGMA)  # 0: no upper bound
    s_noise: Float | None = Field(None, ge=0.0, le=MAX_S_NOISE)
    model: str | None = Field(None, min_length=1, max_length=MAX_MODEL_NAME_LENGTH)  # None: the farm's default
    override_settings: OverrideSettings = Field(default_factory=lambda: OverrideSettings())

    # --- the farm's own
    priority: Int = Field(0, ge=MIN_PRIORITY, le=MAX_PRIORITY)  # higher runs first
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    webhook_url: str | None = None  # called with the job's events (docs/api.md "Events and webhooks")

    # ------------------------------------------------------------------------------------------------------------
    # Field checks

    @model_validator(mode="before")
    @classmethod
    def _check_text(cls, data: Any) -> Any:
        # Every string of the body, before anything else reads it (shared.job.text says why).
        problems = list(text_problems(data))
        if problems:
            raise several(problems)
        return data

    @model_validator(mode="before")
    @classmethod
    def _apply_mask_blur(cls, data: Any) -> Any:
        # The reference's constructor quirk: an int mask_blur overrides mask_blur_x and mask_blur_y (§1). Done
        # before field validation so that the model stays frozen; values that `_check_mask_blur` rejects are
        # left alone here, so only that field reports them.
        if isinstance(data, Mapping) and "mask_blur" in data:
            blur = _integral(data["mask_blur"])
            if blur is not None and 0 <= blur <= MAX_MASK_BLUR_PX:
                return {**data, "mask_blur_x": blur, "mask_blur_y": blur}
        return data

    @field_validator("mask_blur", mode="before")
    @classmethod
    def _check_mask_blur(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool):
            raise problem(
                "invalid_type",
                "must be a whole number of pixels or null, not true/false (the reference would read true as 1)",
            )
        if isinstance(value, float) and _integral(value) is None:
            raise problem(
                "invalid_type",
                "must be a whole number of pixels or null; the reference ignores a fractional mask_blur, so it "
                "is refused rather than silently dropped (use mask_blur_x and mask_blur_y, also whole pixels)",
            )
        if not isinstance(value, int | float):
            raise problem("invalid_type", "must be a whole number of pixels or null")
        return _integral(value)

    @field_validator("init_images")
    @classmethod
    def _check_init_images(cls, value: list[str]) -> list[str]:
        if not value:
            raise problem("missing", "needs at least one image (asset:<sha256>, a storage URL, or base64)")
        return value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _check_prompt(cls, value: str, info: ValidationInfo) -> str:
        problems = prompt_problems(str(info.field_name), value)  # docs/engine.md, "Prompt language"
        limits = _limits(info)
        if limits is not None:  # at admission only: a stored job is never refused for a changed limit
            problems += prompt_token_problems(str(info.field_name), value, limits.max_prompt_tokens)
        if problems:
            raise several([(p.field, p.code, p.message) for p in problems])
        return value

    @field_validator("styles")
    @classmethod
    def _check_styles(cls, value: list[str]) -> list[str]:
        if value:
            raise problem(
                "unsupported",
                "the farm has no style presets; put the style's text into prompt and negative_prompt instead",
            )
        return value

    @field_validator("force_task_id")
    @classmethod
    def _check_task_id(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_task_id(value):
            raise problem("invalid_task_id", task_id_problem())
        return value

    @field_validator("sampler_name")
    @classmethod
    def _check_sampler(cls, value: str) -> str:
        if split_sampler_and_schedule(value) is None:
            raise problem(
                "unknown_sampler",
                f"unknown sampler {value!r}; known samplers: {', '.join(SAMPLER_LABELS)} "
                f"(a schedule may follow the name, e.g. 'DPM++ 2M Karras')",
            )
        return value

    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, value: str | None) -> str | None:
        if value is not None and find_schedule(value) is None:
            raise problem(
                "unknown_schedule", f"unknown schedule {value!r}; known schedules: {', '.join(SCHEDULE_LABELS)}"
            )
        return value

    @field_validator("width", "height")
    @classmethod
    def _check_side(cls, value: int) -> int:
        if value < MIN_SIDE_PX:
            raise problem("out_of_range", f"must be at least {MIN_SIDE_PX} pixels (got {value})")
        if value % SIZE_MULTIPLE_PX:
            below = value // SIZE_MULTIPLE_PX * SIZE_MULTIPLE_PX
            raise problem(
                "not_multiple_of_8",
                f"must be a multiple of {SIZE_MULTIPLE_PX} pixels "
                f"(got {value}; {below} or {below + SIZE_MULTIPLE_PX} would do)",
            )
        return value

    @field_validator("batch_size", "n_iter")
    @classmethod
    def _check_against_limits(cls, value: int, info: ValidationInfo) -> int:
        # The upper bounds of batch_size and n_iter are the farm's limits, so they are checked here, not by Field.
        limits = _limits(info)
        if limits is not None:
            most = limits.max_batch_size if info.field_name == "batch_size" else limits.max_n_iter
            if value > most:
                raise problem("out_of_range", f"must be from 1 to {most} (got {value})")
        return value

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not tag or len(tag) > MAX_TAG_LENGTH or CONTROL_RE.search(tag):
                raise problem(
                    "invalid_tag",
                    f"each tag must be 1-{MAX_TAG_LENGTH} characters without control characters (got {tag!r:.80})",
                )
        return value

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_url(value, ("http", "https"))
            except ImageRefProblem as found:
                raise problem(found.code, found.message) from None
        return value

    @model_validator(mode="after")
    def _check_together(self, info: ValidationInfo) -> Img2ImgJob:
        # Checks that need several fields. pydantic reports one error per validator, so collect them all.
        problems: list[tuple[str, str, str]] = []
        if len(self.init_images) > self.batch_size:
            problems.append(
                (
                    "init_images",
                    "too_many_images",
                    f"{len(self.init_images)} images for batch_size {self.batch_size}: send one image (repeated "
                    f"batch_size times) or at most batch_size images (one per batch slot)",
                )
            )
        limits = _limits(info)
        if limits is not None and self.width * self.height > limits.max_image_pixels:
            problems.append(
                (
                    "width",
                    "too_many_pixels",
                    f"width × height = {self.width}×{self.height} = {self.width * self.height} pixels, over the "
                    f"limit of {limits.max_image_pixels} pixels",
                )
            )
        if (
            limits is not None
            and self.seed_resize_from_w > 0
            and self.seed_resize_from_h > 0
            and self.seed_resize_from_w * self.seed_resize_from_h > limits.max_image_pixels
        ):
            problems.append(
                (
                    "seed_resize_from_w",
                    "too_many_pixels",
                    f"seed_resize_from_w × seed_resize_from_h is over the limit of {limits.max_image_pixels} pixels",
                )
            )
        checkpoint = self.override_settings.get("sd_model_checkpoint")
        if checkpoint is not None and self.model is not None and checkpoint != self.model:
            problems.append(
                (
                    "override_settings.sd_model_checkpoint",
                    "conflict",
                    f"names model {checkpoint!r} but the field model names {self.model!r}; send one of them",
                )
            )
        if problems:
            raise several(problems)
        return self

    # ------------------------------------------------------------------------------------------------------------
    # Resolved values

    @property
    def sampler(self) -> SamplerName:
        """The sampler that `sampler_name` names (a schedule suffix such as " Karras" is split off)."""
        return _split(self.sampler_name)[0]

    @property
    def schedule(self) -> ScheduleName:
        """The schedule to use: an explicit non-automatic `scheduler` wins over a suffix of `sampler_name`, which
        wins over Automatic. Automatic means `self.sampler.default_schedule`; the worker resolves that."""
        explicit = find_schedule(self.scheduler) if self.scheduler is not None else None
        if explicit is not None and explicit.name != _AUTOMATIC.name:
            return explicit
        return _split(self.sampler_name)[1] or _AUTOMATIC

    @property
    def resolved_model(self) -> str | None:
        """The model to load: `model`, else override_settings.sd_model_checkpoint, else None (the farm's default)."""
        return self.model if self.model is not None else self.override_settings.get("sd_model_checkpoint")

    @property
    def effective_batch_size(self) -> int:
        """Images per batch as the reference runs them: batch_size with one init image, else the number of images."""
        return self.batch_size if len(self.init_images) == 1 else len(self.init_images)

    @property
    def init_image_refs(self) -> tuple[ImageRef, ...]:
        return tuple(classify_image_ref(text, None) for text in self.init_images)

    @property
    def mask_ref(self) -> ImageRef | None:
        return classify_image_ref(self.mask, None) if self.mask is not None else None

    @property
    def latent_mask_ref(self) -> ImageRef | None:
        return classify_image_ref(self.latent_mask, None) if self.latent_mask is not None else None

    # ------------------------------------------------------------------------------------------------------------
    # Storage

    def to_request_json(self) -> dict[str, Any]:
        """Every field but the task id, defaults included, as JSON-ready values: what the scheduler stores for the
        worker and what the request hash is computed over. `force_task_id` is left out: the id is the key the
        request is stored and compared under (the row's task_id column), not part of the request."""
        return self.model_dump(mode="json", exclude={"force_task_id"})

    @classmethod
    def from_request_json(cls, data: Mapping[str, Any]) -> Img2ImgJob:
        """Read back a stored job. Checks the structure again (a stored row may come from another version) but not
        the limits: the job was admitted under the scheduler's limits. Raises InputError if it does not validate."""
        return _validate(data, None)


_found_automatic = find_schedule("automatic")
if _found_automatic is None:  # pragma: no cover - a broken sampler_names table
    raise RuntimeError("shared.sampler_names has no 'automatic' schedule")
_AUTOMATIC: ScheduleName = _found_automatic


def _split(sampler_name: str) -> tuple[SamplerName, ScheduleName | None]:
    resolved = split_sampler_and_schedule(sampler_name)
    if resolved is None:  # pragma: no cover - validation rejected it
        raise ValueError(f"unknown sampler {sampler_name!r}")
    return resolved


def _integral(value: Any) -> int | None:
    """`value` as an int if it is an int or a float with no fraction (4.0), else None. Booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Entry points


def parse_job(data: Mapping[str, Any], limits: SpecLimits) -> Img2ImgJob:
    """Validate a request body into a job, checking the farm's limits.

    Raises PayloadTooLarge (413) if an inline image is over `limits.max_inline_image_bytes`, else InputError (422)
    with one FieldProblem per problem (dotted field path, stable code, message naming what is allowed).
    """
    return _validate(data, limits)


def _validate(data: Any, limits: SpecLimits | None) -> Img2ImgJob:
    try:
        if isinstance(data, Mapping) and not isinstance(data, dict):
            data = dict(data)
        return Img2ImgJob.model_validate(data, context={_LIMITS_KEY: limits} if limits is not None else None)
    except ValidationError as exc:
        problems = [
            found
            for error in exc.errors()
            for found in field_problems(error, metadata_at=_metadata_at, unknown_field=_unknown_field)
        ]
        kind, ordered = headline_first(problems)
        raise kind.from_problems(ordered) from None


# ----------------------------------------------------------------------------------------------------------------
# pydantic errors → FieldProblem: what is particular to a job (shared.job.problems does the rest)

# Fields of A1111's API request that are not job fields: a hint instead of a bare "unknown field".
_UNKNOWN_FIELD_HINTS: dict[str, str] = {
    "sampler_index": "use sampler_name",
    "send_images": "an option of POST /sdapi/v1/img2img, not of a job",
    "save_images": "an option of POST /sdapi/v1/img2img, not of a job",
    "include_init_images": "an option of POST /sdapi/v1/img2img, not of a job",
    "script_name": "scripts are not supported",
    "script_args": "scripts are not supported",
    "alwayson_scripts": "scripts are not supported",
    "infotext": "send the fields themselves",
}


def _unknown_field(loc: Loc) -> tuple[str, str]:
    if loc[:1] == ("override_settings",) and len(loc) == 2:
        return f"is not a setting the farm supports; supported: {', '.join(SUPPORTED_OVERRIDE_KEYS)}", "unknown_setting"
    hint = _UNKNOWN_FIELD_HINTS.get(str(loc[-1]), "see the API reference for the fields of a job")
    return f"is not a field of an img2img job ({hint})", "unknown_field"


def _metadata_at(loc: Loc) -> list[Any]:
    if len(loc) == 1 and isinstance(loc[0], str) and loc[0] in Img2ImgJob.model_fields:
        return list(Img2ImgJob.model_fields[loc[0]].metadata)
    if len(loc) == 2 and loc[0] == "override_settings":
        hint = _OVERRIDE_HINTS.get(str(loc[1]))
        return list(getattr(hint, "__metadata__", ()))
    return []


_OVERRIDE_HINTS: dict[str, Any] = get_type_hints(OverrideSettings, include_extras=True)
