"""The A1111 webui API's request and response shapes, written from img2img-semantics.md §1 and §5.

`Img2ImgRequest` mirrors the reference's `StableDiffusionImg2ImgProcessingAPI`: every field, with the reference
API's defaults (not the UI's: inpainting_fill 0, inpaint_full_res true, padding 0, sampler_index "Euler", 50 steps).
Types are as lenient as the reference's (pydantic's lax mode: "42" is 42, 0/1 are booleans). Unknown fields are kept
aside (`model_extra`) so that `scheduler.a1111.field_policy` can name them in the job's warnings; the reference
ignores them. What the farm does with each field (honour, warn, refuse) is decided in that module. The farm's own,
stricter checks (ranges, names) come after translation, from `shared.job.spec.parse_job`, and name the fields with
their A1111 names.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Img2ImgRequest(BaseModel):
    """The body of `POST /sdapi/v1/img2img`, field for field as the reference API defines it."""

    model_config = ConfigDict(extra="allow")  # unknown fields: warned about (field_policy), never used

    # --- StableDiffusionProcessing (base)
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None

    # --- StableDiffusionProcessingImg2Img
    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    force_task_id: str | None = None

    # --- the API's own
    sampler_index: str = "Euler"
    include_init_images: bool = False
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Img2ImgResponse(BaseModel):
    """The reference's answer: base64 PNGs, the request echoed, and `info` as a JSON *string*."""

    images: list[str]
    parameters: dict[str, Any]
    info: str


class InternalProgressRequest(BaseModel):
    """The body of `POST /internal/progress`."""

    model_config = ConfigDict(extra="ignore")

    id_task: str | None = None
    id_live_preview: int = -1
    live_preview: bool = True


class InternalProgressResponse(BaseModel):
    active: bool
    queued: bool
    completed: bool
    progress: float | None = None
    eta: float | None = None
    live_preview: str | None = None
    id_live_preview: int | None = None
    textinfo: str | None = None


class PendingTasksResponse(BaseModel):
    size: int
    tasks: list[str]


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    stopping_generation: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    """`GET /sdapi/v1/progress`."""

    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class SDVaeItem(BaseModel):
    model_name: str  # the file name with its extension: what sd_vae names
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class HypernetworkItem(BaseModel):
    name: str
    path: str


# The start-up probes of features the farm does not have (upscalers, face restorers, styles, scripts): the
# reference's item shapes, listed empty. They are typed so the OpenAPI document tells clients what an item holds.


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class LatentUpscalerModeItem(BaseModel):
    name: str


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None


class RealesrganItem(BaseModel):
    name: str
    path: str | None
    scale: int | None


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


class MemoryResponse(BaseModel):
    """`GET /sdapi/v1/memory`: `ram` (free, used, total bytes, or `error`) and `cuda` (`error` without CUDA)."""

    ram: dict[str, Any]
    cuda: dict[str, Any]


class PNGInfoRequest(BaseModel):
    image: str = Field(description="The image, base64 or a data:image/...;base64, URI")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ScriptInfoItem(BaseModel):
    name: str | None
    is_alwayson: bool | None
    is_img2img: bool | None
    args: list[dict[str, Any]]


class ExtensionItem(BaseModel):
    name: str
    remote: str
    branch: str
    commit_hash: str
    version: str
    commit_date: int
    enabled: bool
