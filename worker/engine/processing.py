"""`StableDiffusionProcessingImg2Img`: the reference's img2img job, with `init()` and `sample()`, on diffusers.

The behaviour is img2img-semantics.md, written from its prose (never from the AGPL reference):

* `init()` (§2): the pixel stage (`worker.engine.pixel_stage.prepare_pixels`: masks, crops, resize modes, fill,
  overlays), then the VAE encode, the resize-mode-3 latent upscale, the latent mask, the latent fill modes and the image
  conditioning of 9-channel inpainting and 8-channel edit models.
* `sample()` (§3): seeded per-image noise (`worker.engine.noise`), the reference's strength → steps rule
  (`shared.job.steps`) and sigma schedules (`worker.engine.sampling`), CFG (three passes for edit models), the
  per-step blend of the x0 prediction and the final blend.
* `process_images(p)` (§4): batches, prompts and seeds, decode, overlay paste-back, infotexts; returns `Processed`.

Usage, as in the reference::

    model = load_model("tiny", tiny_dir="models")
    p = StableDiffusionProcessingImg2Img(sd_model=model, prompt="a cat", init_images=[img], mask=mask)
    processed = process_images(p)
    processed.images[0].save("out.png")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from shared.errors import InputError
from shared.infotext import create_infotext
from shared.job.spec import Img2ImgJob
from shared.job.steps import eta_kind
from shared.prompts import EmbeddingLookup, EmbeddingTooLong, find_extra_networks, strip_extra_networks
from shared.prompts.extra_networks import HYPERNET_TYPE, LoraRequest, LoraTagError, lora_requests
from shared.sampler_names import find_schedule, split_sampler_and_schedule
from shared.version import __version__
from worker.engine.color_correction import apply_color_correction
from worker.engine.conditioning.clip import ClipBackend
from worker.engine.conditioning.conds import (
    learned_conditioning,
    multicond_learned_conditioning,
    old_timelines_differ,
    schedule_steps,
)
from worker.engine.conditioning.encoder import ConditioningEncoder, PromptEncoder
from worker.engine.conditioning.schedules import CondBatch, MulticondBatch
from worker.engine.conditioning.sdxl import sdxl_prompt_encoder, sdxl_time_ids
from worker.engine.embeddings import Embedding, EmbeddingDatabase, ti_hashes
from worker.engine.guidance import CFGDenoiser
from worker.engine.imaging import apply_overlay
from worker.engine.latents import POSTERIOR_STREAM, encode_samples, image_conditioning, resize_latent
from worker.engine.models import LoadedModel
from worker.engine.networks import AppliedNetworks, NetworkNotFound, activate_networks
from worker.engine.noise import create_noise, resolve_seeds
from worker.engine.options import DEFAULT_OPTIONS, Options
from worker.engine.pixel_stage import PixelStage, PixelWarning, prepare_pixels
from worker.engine.results import Processed, decode_latent, mask_composite
from worker.engine.sampling import (
    DenoiseEpsCfgPP,
    SamplingPlan,
    StepInfo,
    StopSampling,
    plan_img2img,
    run_sampler,
    sampler_default_eta,
)
from worker.engine.sampling.settings import JobSamplerFields, resolve_sampler_options
from worker.engine.tiling import circular_padding

LATENT_CHANNELS = 4


@dataclass(frozen=True)
class Progress:
    """Where a render is: batch `job_no` of `job_count`, sampling step `step` of `total_steps` (0-based batches)."""

    job_no: int
    job_count: int
    step: int
    total_steps: int
    preview_latent: torch.Tensor | None = None

    @property
    def fraction(self) -> float:
        """0..1 over the whole job, as the reference's progress: batches done plus the share of this one."""
        if self.job_count <= 0:
            return 0.0
        within = self.step / self.total_steps if self.total_steps else 1.0
        return min(1.0, (self.job_no + within) / self.job_count)


ProgressCallback = Callable[[Progress], None]


#: The job spec's fields that the processing object takes as they are, under the same name (`from_job` resolves the
#: sampler and schedule names and copies the overrides; `mask_blur_x`/`_y` already hold the effective blur).
_FIELDS_FROM_JOB = (
    "prompt",
    "negative_prompt",
    "seed",
    "subseed",
    "subseed_strength",
    "seed_resize_from_h",
    "seed_resize_from_w",
    "batch_size",
    "n_iter",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "eta",
    "s_churn",
    "s_tmin",
    "s_tmax",
    "s_noise",
    "resize_mode",
    "denoising_strength",
    "image_cfg_scale",
    "mask_blur_x",
    "mask_blur_y",
    "mask_round",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
    "initial_noise_multiplier",
    "s_min_uncond",
    "tiling",
)


@dataclass
class StableDiffusionProcessingImg2Img:
    """One img2img / inpainting job: the reference's fields and defaults (semantics §1), plus the state `init()` sets.

    A progress callback may raise any exception to abort (the farm's cancel); `interrupt()` and `skip()` stop
    cooperatively as the webui's buttons do (the current batch is decoded from its last x0 prediction).
    """

    sd_model: LoadedModel | None = None
    # -- base processing fields ----------------------------------------------------------------------------------
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    eta: float | None = None
    s_min_uncond: float | None = None  # negative guidance minimum sigma; None = 0 (off)
    tiling: bool = False  # circular padding of every convolution of the UNet and VAE (worker/engine/tiling.py)
    s_churn: float | None = None  # None: the option of the same name (docs/engine.md "Sampler options")
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = field(default_factory=dict)
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)
    options: Options = DEFAULT_OPTIONS
    progress_callback: ProgressCallback | None = None
    # -- StableDiffusionProcessingImg2Img fields -------------------------------------------------------------------
    init_images: list[Image.Image] | None = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: Any = None  # the PIL mask as passed; after init() the latent keep-mask tensor, as in the reference
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: InitVar[int | None] = None  # replaced by the property below once the class exists
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: Image.Image | None = None
    # -- set by init() ---------------------------------------------------------------------------------------------
    image_mask: Image.Image | None = field(default=None, init=False)
    nmask: torch.Tensor | None = field(default=None, init=False)
    image_conditioning: torch.Tensor | None = field(default=None, init=False)
    init_latent: torch.Tensor | None = field(default=None, init=False)
    mask_for_overlay: Image.Image | None = field(default=None, init=False)
    overlay_images: list[Image.Image] = field(default_factory=list, init=False)
    crop_region: tuple[int, int, int, int] | None = field(default=None, init=False)
    paste_to: tuple[int, int, int, int] | None = field(default=None, init=False)
    pixel_stage: PixelStage | None = field(default=None, init=False, repr=False)
    warnings: list[PixelWarning] = field(default_factory=list, init=False)
    plan: SamplingPlan | None = field(default=None, init=False, repr=False)
    color_corrections: tuple[NDArray[np.uint8], ...] | None = field(default=None, init=False, repr=False)
    image_seeds: tuple[int, ...] = field(default=(), init=False)
    interrupted: bool = field(default=False, init=False)
    skipped: bool = field(default=False, init=False)
    job_no: int = field(default=0, init=False)
    embeddings: EmbeddingLookup | None = field(default=None, repr=False)  # textual-inversion embeddings
    # A `<lora:NAME>` tag's file: NAME → path, or None when there is none (worker.model_files on the farm).
    lora_files: Callable[[str], Path | None] | None = field(default=None, repr=False)
    prompt_encoder: ConditioningEncoder | None = field(default=None, init=False, repr=False)
    denoiser: CFGDenoiser | None = field(default=None, init=False, repr=False)  # the current batch's

    def __post_init__(self, mask_blur: int | None) -> None:
        # The reference's dataclass quirk (§1): an int mask_blur overrides both axes; None or a float does nothing.
        if isinstance(mask_blur, int):
            self.mask_blur_x = self.mask_blur_y = mask_blur
        # The PIL mask moves to image_mask; `mask` is reused for the latent keep-mask after init().
        self.image_mask = self.mask
        self.mask = None
        # Resolved now, before override_settings apply, so an override of it has no effect (§1).
        if self.initial_noise_multiplier is None:
            self.initial_noise_multiplier = self.options.initial_noise_multiplier
        if self.s_min_uncond is None:
            self.s_min_uncond = 0.0
        if not self.seed_enable_extras:
            self.subseed, self.subseed_strength = -1, 0.0
            self.seed_resize_from_h = self.seed_resize_from_w = 0
        self.options = self.options.with_overrides(self.override_settings)

    # -- construction from the farm's job spec ---------------------------------------------------------------------

    @classmethod
    def from_job(
        cls,
        job: Img2ImgJob,
        *,
        sd_model: LoadedModel,
        init_images: Sequence[Image.Image],
        mask: Image.Image | None = None,
        latent_mask: Image.Image | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> StableDiffusionProcessingImg2Img:
        """Build a job from the validated spec and its decoded images (the spec holds references, not pixels)."""
        return cls(
            sd_model=sd_model,
            sampler_name=job.sampler.name,
            scheduler=job.schedule.label,
            override_settings=dict(job.override_settings),
            options=options,
            init_images=list(init_images),
            mask=mask,
            latent_mask=latent_mask,
            **{name: getattr(job, name) for name in _FIELDS_FROM_JOB},
        )

    # -- cooperative stops -----------------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop at the next step; decode the current batch from its last x0 prediction; run no further batch."""
        self.interrupted = True

    def skip(self) -> None:
        """End the current batch at the next step; the next batch runs."""
        self.skipped = True

    # -- the model -------------------------------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        if self.sd_model is None:
            raise ValueError("sd_model is not set: pass the model returned by worker.engine.models.load_model")
        return self.sd_model

    @property
    def is_edit_model(self) -> bool:
        return self.model.kind == "edit"

    @property
    def is_inpainting_model(self) -> bool:
        return self.model.kind == "inpaint"

    # -- init() ----------------------------------------------------------------------------------------------------

    def init(self, all_prompts: Sequence[str], all_seeds: Sequence[int], all_subseeds: Sequence[int]) -> None:
        """Prepare the init latent, masks, overlays and image conditioning (semantics §2)."""
        del all_prompts, all_subseeds  # the reference's signature; only the seeds matter here
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if not self.is_edit_model:
            self.image_cfg_scale = None
        if not self.init_images:
            raise ValueError("init_images is empty")
        stage = prepare_pixels(
            self.init_images,
            width=self.width,
            height=self.height,
            batch_size=self.batch_size,
            resize_mode=self.resize_mode,
            mask=self.image_mask,
            latent_mask=self.latent_mask,
            mask_blur_x=self.mask_blur_x,
            mask_blur_y=self.mask_blur_y,
            mask_round=self.mask_round,
            inpainting_fill=self.inpainting_fill,
            inpaint_full_res=self.inpaint_full_res,
            inpaint_full_res_padding=self.inpaint_full_res_padding,
            inpainting_mask_invert=bool(self.inpainting_mask_invert),
            img2img_background_color=self.options.img2img_background_color,
            img2img_color_correction=self.options.img2img_color_correction,
        )
        self.pixel_stage = stage
        self.batch_size = stage.batch_size
        self.image_mask = stage.image_mask
        self.mask_for_overlay = stage.mask_for_overlay
        self.overlay_images = list(stage.overlay_images)
        self.crop_region = stage.crop_region
        self.paste_to = stage.paste_to
        self.inpaint_full_res = stage.inpaint_full_res
        self.extra_generation_params.update(stage.extra_generation_params)
        self.comments.extend(stage.comments)
        self.warnings.extend(stage.warnings)
        self.color_corrections = stage.color_corrections
        # The seeds of the batch slots: the random draws of init() (posterior samples) are seeded from them.
        self.image_seeds = tuple(int(s) for s in all_seeds[: self.batch_size])

        model = self.model
        pixels = torch.from_numpy(np.ascontiguousarray(stage.images)).to(model.device, torch.float32)
        signed = pixels * 2.0 - 1.0
        latent_size = (self.height // 8, self.width // 8)
        # One image at a time, as the reference encodes a batch. The posterior sample is seeded per slot so that the
        # same seed gives the same pixels (a documented deviation: the reference draws it from the unseeded global
        # RNG). Its seed is derived from the slot's seed rather than equal to it, so that the posterior noise is not
        # the very tensor the initial noise of that seed will be (which would correlate the two).
        init_latent = encode_samples(model, signed, self.image_seeds, POSTERIOR_STREAM)
        if stage.resize_mode_3_latent_upscale is not None:
            init_latent = resize_latent(init_latent, latent_size)

        if stage.latent_mask is not None:
            latmask = torch.from_numpy(stage.latent_mask).to(model.device, model.dtype)
            self.nmask = latmask.expand(1, LATENT_CHANNELS, *latmask.shape).clone()
            self.mask = 1.0 - self.nmask
            if self.inpainting_fill == 2:
                # Latent noise (§2.7): the first batch's seeds, no variation seed and no seed resize, reused for
                # every batch, as the reference does.
                first = create_noise(
                    (LATENT_CHANNELS, *latent_size),
                    list(all_seeds[: self.batch_size]),
                    source=self.options.randn_source,
                    device=model.device,
                ).noise.to(model.dtype)
                init_latent = init_latent * self.mask + first * self.nmask
            elif self.inpainting_fill == 3:
                init_latent = init_latent * self.mask
        self.init_latent = init_latent
        if self.is_inpainting_model:
            self.extra_generation_params["Conditional mask weight"] = self.options.inpainting_mask_weight
        self.image_conditioning = image_conditioning(
            model,
            signed,
            stage.conditioning_mask,
            latent_size,
            self.image_seeds,
            self.options.inpainting_mask_weight,
        )

    # -- sample() --------------------------------------------------------------------------------------------------

    def sample(
        self,
        conditioning: MulticondBatch,
        unconditional_conditioning: CondBatch,
        seeds: Sequence[int],
        subseeds: Sequence[int],
        subseed_strength: float,
        prompts: Sequence[str],
    ) -> torch.Tensor:
        """Denoise one batch from the init latent (semantics §3); returns its latent."""
        del prompts
        if self.init_latent is None:
            raise ValueError("call init() before sample()")
        model = self.model
        latent_shape = (LATENT_CHANNELS, self.height // 8, self.width // 8)
        noise = create_noise(
            latent_shape,
            list(seeds),
            list(subseeds),
            subseed_strength,
            self.seed_resize_from_h,
            self.seed_resize_from_w,
            source=self.options.randn_source,
            device=model.device,
            eta_noise_seed_delta=self.options.eta_noise_seed_delta,
        )
        # Infotext order of the reference: Noise multiplier, Extra noise, Eta, then the schedule's own entries.
        multiplier = float(self.initial_noise_multiplier if self.initial_noise_multiplier is not None else 1.0)
        if multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = multiplier
        if self.options.img2img_extra_noise > 0:
            self.extra_generation_params["Extra noise"] = self.options.img2img_extra_noise
        sampler_kwargs = self._eta_arguments()
        plan = self._plan()

        init_latent = self.init_latent
        keep, regenerate = self.mask, self.nmask

        def blend(x: torch.Tensor) -> torch.Tensor:
            # Installed only when init() made a latent mask, so both are set.
            assert keep is not None
            assert regenerate is not None
            return x * regenerate + init_latent * keep

        stopped = False

        def on_step(info: StepInfo) -> None:
            nonlocal stopped
            if self.progress_callback is not None:
                # The preview shows the reference's default "Prompt" content: the first sub-prompt's own x0, without
                # CFG or the mask blend (proposal P17; docs/engine.md "Live previews").
                latest = denoiser.last_prompt_x0
                preview = latest if latest is not None else info.x0_preview
                self.progress_callback(Progress(self.job_no, self.n_iter, info.step, info.total_steps, preview))
            # After the last step there is nothing left to stop; stopping there would return the x0 prediction
            # instead of the finished latent.
            if (self.interrupted or self.skipped) and info.step + 1 < info.total_steps:
                stopped = True
                raise StopSampling

        denoiser = self._denoiser(conditioning, unconditional_conditioning, plan)
        if plan.sampler.name == "DDIM CFG++":
            sampler_kwargs["denoise_eps_cfgpp"] = _with_uncond_eps(denoiser)
        samples = run_sampler(
            plan,
            init_latent,
            noise.noise.to(model.dtype),
            denoiser,
            blend_x0=blend if keep is not None else None,
            blend_xt_before=blend if keep is not None else None,
            generators=noise.generators,
            seeds=list(seeds),
            callback=on_step,
            extra_noise=self.options.img2img_extra_noise,
            noise_multiplier=multiplier,
            **sampler_kwargs,
        )
        if stopped and denoiser.last_prompt_x0 is not None:
            # An interrupted run ends on the reference's last latent, which is the "Prompt" x0 (proposal P17).
            samples = denoiser.last_prompt_x0.to(samples.dtype)
        if keep is not None:
            samples = blend(samples)  # the final mix (§3.4)
        self._record_guidance(denoiser)
        return samples

    def resolved_eta(self) -> float | None:
        """The eta this job's sampler should use: the job's `eta`, else the webui option (eta_ancestral for
        ancestral/SDE samplers, eta_ddim for DDIM); None for samplers that have no eta."""
        kind = eta_kind(self.sampler_name)
        if kind is None:
            return None
        if self.eta is not None:
            return float(self.eta)
        return float(self.options.eta_ancestral if kind == "ancestral" else self.options.eta_ddim)

    def _eta_arguments(self) -> dict[str, Any]:
        """`run_sampler` keyword arguments for eta, and its infotext entry.

        The resolved eta is passed to samplers that use one; "Eta" is written only when it differs from that
        sampler's default (`shared.job.steps.default_eta`: 1.0 ancestral/SDE, 0.0 DDIM), as the reference does.
        """
        default = sampler_default_eta(self.sampler_name)
        eta = self.resolved_eta()
        if default is None or eta is None:
            return {}
        if eta != default:
            # The reference's timestep samplers write theirs as "Eta DDIM".
            self.extra_generation_params["Eta DDIM" if eta_kind(self.sampler_name) == "ddim" else "Eta"] = eta
        return {"eta": eta}

    def _plan(self) -> SamplingPlan:
        if self.plan is None:
            fields = JobSamplerFields(self.s_churn, self.s_tmin, self.s_tmax, self.s_noise)
            sampler_options, sigma_entries = resolve_sampler_options(
                _sampler_label(self.sampler_name), fields, self.options, sdxl=_is_sdxl(self.model)
            )
            self.plan = plan_img2img(
                self.sampler_name,
                self.scheduler,
                self.steps,
                self.denoising_strength,
                self.options.img2img_fix_steps,
                self.model.scheduler_config,
                options=sampler_options,
            )
            self.extra_generation_params.update(sigma_entries)
            self.extra_generation_params.update(
                (k, v) for k, v in self.plan.extra_generation_params.items() if k != "Schedule type"
            )
        return self.plan

    def _schedule_label(self, plan: SamplingPlan) -> str:
        """The infotext's "Schedule type" as the reference writes it: the job's schedule, where "Automatic" stays
        "Automatic" for the samplers that have no schedule option of their own (Euler, Euler a, LMS, Heun: their
        automatic discretisation is the uniform one) and names the sampler's own schedule otherwise (DPM++ 2M →
        "Karras"). Timestep samplers are always "Automatic"."""
        explicit = find_schedule(self.scheduler) if self.scheduler else None
        named = split_sampler_and_schedule(self.sampler_name)
        automatic = (explicit is None or explicit.name == "automatic") and (named is None or named[1] is None)
        if automatic and plan.sampler.default_schedule == "uniform":
            return "Automatic"
        return plan.schedule_type

    def _denoiser(self, cond: MulticondBatch, uncond: CondBatch, plan: SamplingPlan) -> CFGDenoiser:
        """ε(x) with classifier-free guidance over the scheduled conds; three passes for edit models with an image
        CFG scale (§3.3). A new one per batch: its evaluation counter starts at 0 (docs/engine.md, "Prompt
        encoding")."""
        options = self.options
        empty = self._prompt_encoder().encode([""])[0] if options.pad_cond_uncond else None
        self.denoiser = CFGDenoiser(
            self.model.unet,
            cond,
            uncond,
            self.image_conditioning,
            # DDIM CFG++ guides at cfg_scale / 12.5 (docs/engine.md, "Samplers").
            self.cfg_scale / CFGPP_SCALE_DIVISOR if plan.sampler.name == "DDIM CFG++" else self.cfg_scale,
            self.image_cfg_scale if self.is_edit_model else None,
            s_min_uncond=float(self.s_min_uncond or 0.0),
            s_min_uncond_all=options.s_min_uncond_all,
            noise_level_is_timestep=plan.is_timestep_sampler,
            pad_cond_uncond=options.pad_cond_uncond,
            pad_cond_uncond_v0=options.pad_cond_uncond_v0,
            empty_cond=empty,
            time_ids=self._sdxl_time_ids(),
        )
        return self.denoiser

    def _sdxl_time_ids(self) -> torch.Tensor | None:
        """SDXL's size conditioning: the processing size as original and target size, the crop options' corner
        (prompts-and-models.md "Vector conditioning"); None for other models."""
        if not self.model.is_sdxl:
            return None
        return sdxl_time_ids(self.height, self.width, self.options.sdxl_crop_top, self.options.sdxl_crop_left)

    def _record_guidance(self, denoiser: CFGDenoiser) -> None:
        """The infotext entries of what the denoiser did (the reference writes them only when it happened)."""
        if denoiser.skipped_uncond:
            self.extra_generation_params["NGMS"] = self.s_min_uncond
            if self.options.s_min_uncond_all:
                self.extra_generation_params["NGMS all steps"] = True
        if denoiser.padded_cond_uncond:
            self.extra_generation_params["Pad conds"] = True
        if denoiser.padded_cond_uncond_v0:
            self.extra_generation_params["Pad conds v0"] = True

    # -- prompts ---------------------------------------------------------------------------------------------------

    def _prompt_encoder(self) -> ConditioningEncoder:
        if self.prompt_encoder is None:
            model = self.model
            clip_skip = self.options.CLIP_stop_at_last_layers
            if clip_skip > 1 and (model.uses_open_clip or model.is_sdxl):
                what = "an SDXL model" if model.is_sdxl else "an SD 2.x OpenCLIP text encoder"
                self.warnings.append(
                    PixelWarning(
                        "clip_skip_ignored",
                        f"Clip skip {clip_skip} has no effect on this model ({what}): the reference ignores it "
                        "there, and so does the farm, to render the same picture",
                    )
                )
            settings: dict[str, Any] = {
                "emphasis": self.options.emphasis,
                "comma_padding_backtrack": self.options.comma_padding_backtrack,
                "embeddings": self.embeddings,
            }
            if model.is_sdxl:
                self.prompt_encoder = sdxl_prompt_encoder(model, **settings)
            else:
                self.prompt_encoder = PromptEncoder(ClipBackend(model, clip_skip), **settings)
        return self.prompt_encoder

    def setup_conds(self, prompts: Sequence[str], negative_prompts: Sequence[str]) -> tuple[MulticondBatch, CondBatch]:
        """The scheduled conditionings of one batch's prompts and negative prompts (docs/engine.md, "Prompt
        encoding"): schedules built for the steps × 2 of second-order samplers, AND only in the prompts."""
        options = self.options
        encoder = self._prompt_encoder()
        steps = schedule_steps(self.steps, _sampler_label(self.sampler_name))
        old = options.use_old_scheduling
        try:
            uncond = learned_conditioning(
                encoder, negative_prompts, steps, use_old_scheduling=old, zero_empty=self.model.is_sdxl
            )
        except EmbeddingTooLong as error:
            raise InputError(str(error), code="embedding_too_long", field="negative_prompt") from None
        try:
            cond = multicond_learned_conditioning(encoder, prompts, steps, use_old_scheduling=old)
        except EmbeddingTooLong as error:
            raise InputError(str(error), code="embedding_too_long", field="prompt") from None
        three_pass = self.is_edit_model and self.image_cfg_scale is not None and self.image_cfg_scale != 1.0
        if three_pass and any(len(sub_prompts) != 1 for sub_prompts in cond.images):
            raise InputError(
                "AND prompts cannot be used with an edit (InstructPix2Pix) model and an image CFG scale other than 1",
                field="prompt",
            )
        self._record_embeddings(encoder, prompts, negative_prompts)
        if old and old_timelines_differ([*prompts, *negative_prompts], steps):
            self.extra_generation_params["Old prompt editing timelines"] = True
        if options.emphasis != "Original" and encoder.emphasis_syntax_seen:
            self.extra_generation_params["Emphasis"] = options.emphasis
        return cond, uncond

    def _record_embeddings(
        self, encoder: ConditioningEncoder, prompts: Sequence[str], negative_prompts: Sequence[str]
    ) -> None:
        """The infotext's "TI hashes" of the embeddings the encoder placed, and the warnings for embeddings of
        another width named in the prompts (docs/engine.md, "Textual-inversion embeddings")."""
        used = [embedding for embedding in encoder.used_embeddings.values() if isinstance(embedding, Embedding)]
        hashes = ti_hashes(used)
        if hashes:
            self.extra_generation_params["TI hashes"] = hashes
        if isinstance(self.embeddings, EmbeddingDatabase):
            for field_name, texts in (("prompt", prompts), ("negative_prompt", negative_prompts)):
                for warning in self.embeddings.incompatible_warnings_in_texts(dict.fromkeys(texts), field_name):
                    if warning not in self.warnings:
                        self.warnings.append(warning)

    # -- extra networks --------------------------------------------------------------------------------------------

    def activate_extra_networks(self, prompts: Sequence[str]) -> list[str]:
        """The batch's prompts without their extra-network tags, once the LoRAs of the first (which supplies the
        networks of the whole batch, as in the reference) are the model's active networks; the empty set restores
        the original weights (docs/engine.md, "LoRA and LyCORIS"). Raises InputError for tags the scheduler would
        refuse, NetworkNotFound for a name without a file here, NetworkError when a file cannot be applied."""
        first = prompts[0] if prompts else ""
        try:
            requests = lora_requests(first)
        except LoraTagError as error:
            raise InputError(str(error), code="invalid_lora_tag", field="prompt") from None
        if any(tag.type == HYPERNET_TYPE for tag in find_extra_networks(first)):
            raise InputError("hypernetworks (<hypernet:…>) are not supported", code="unsupported", field="prompt")
        files: list[tuple[LoraRequest, Path]] = []
        for request in requests:
            path = self.lora_files(request.name) if self.lora_files is not None else None
            if path is None:
                raise NetworkNotFound(
                    f"{request.text}: no LoRA/LyCORIS file named {request.name!r} on this worker", field="prompt"
                )
            files.append((request, path))
        self._record_networks(activate_networks(self.model, files))
        return [strip_extra_networks(prompt)[0] for prompt in prompts]

    def _record_networks(self, applied: AppliedNetworks) -> None:
        """`Lora hashes` of the networks that changed a layer (P11), and the warnings about the set."""
        if applied.changed:
            self.extra_generation_params["Lora hashes"] = ", ".join(
                f"{request.label}: {short_hash}" for request, short_hash in applied.changed
            )
        else:
            self.extra_generation_params.pop("Lora hashes", None)
        for request, network in applied.networks:
            found: list[PixelWarning] = []
            if network.dotted:
                found.append(
                    PixelWarning(
                        "lora_format_not_in_reference",
                        f"the network {request.name!r} uses diffusers/PEFT key names (unet.…lora_A.weight); the farm "
                        "applies it, the webui would silently ignore it",
                    )
                )
            if network.unmatched:
                found.append(
                    PixelWarning(
                        "lora_keys_unmatched",
                        f"{len(network.unmatched)} of the keys of the network {request.name!r} name no layer of this "
                        "model, or are not read by their layer's network type, and do nothing (for example "
                        f"{network.unmatched[0]!r})",
                    )
                )
            self.warnings.extend(w for w in found if w not in self.warnings)

    # -- infotext --------------------------------------------------------------------------------------------------

    def infotext(self, index: int, all_seeds: Sequence[int], all_subseeds: Sequence[int]) -> str:
        """The A1111 infotext of image `index` of the job (semantics §4)."""
        model = self.model
        sampler = _sampler_label(self.sampler_name)
        plan = self._plan()
        leading: dict[str, object] = {
            "Steps": self.steps,
            "Sampler": sampler,
            "Schedule type": self._schedule_label(plan),
            "CFG scale": self.cfg_scale,
            "Image CFG scale": self.image_cfg_scale,
            "Seed": all_seeds[index],
            "Size": f"{self.width}x{self.height}",
            **model.infotext_fields(),
            "Denoising strength": self.extra_generation_params.get("Denoising strength"),
            "Conditional mask weight": self.extra_generation_params.get("Conditional mask weight"),
            "Clip skip": self.options.CLIP_stop_at_last_layers if self.options.CLIP_stop_at_last_layers > 1 else None,
            "ENSD": self.options.eta_noise_seed_delta or None,
            "RNG": self.options.randn_source if self.options.randn_source != "GPU" else None,
            "Tiling": True if self.tiling else None,
        }
        if self.subseed_strength:
            leading["Variation seed"] = all_subseeds[index]
            leading["Variation seed strength"] = self.subseed_strength
        if self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0:
            leading["Seed resize from"] = f"{self.seed_resize_from_w}x{self.seed_resize_from_h}"
        leading_keys = {"Denoising strength", "Conditional mask weight"}
        extra = {k: v for k, v in self.extra_generation_params.items() if k not in leading_keys}
        return create_infotext(
            self.prompt, self.negative_prompt, leading, extra, {"Version": f"renderfarm {__version__}"}
        )


#: DDIM CFG++ maps the CFG scale's usual range [0, 12.5] onto its own [0, 1].
CFGPP_SCALE_DIVISOR = 12.5


def _is_sdxl(model: LoadedModel) -> bool:
    """SDXL UNets take the added time/text embedding ("text_time"); Align Your Steps has a list for them."""
    config = getattr(getattr(model, "unet", None), "config", None)
    return getattr(config, "addition_embed_type", None) == "text_time"


def _with_uncond_eps(denoiser: CFGDenoiser) -> DenoiseEpsCfgPP:
    """DDIM CFG++'s model: the guided ε and the unconditional ε of the same evaluation."""

    def denoise(x_in: torch.Tensor, t: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        eps = denoiser(x_in, t, sigma)
        assert denoiser.last_uncond_eps is not None
        return eps, denoiser.last_uncond_eps

    return denoise


def _sampler_label(name: str) -> str:
    """The webui label of a sampler name or alias ("k_euler" -> "Euler"; "DPM++ 2M Karras" -> "DPM++ 2M")."""
    found = split_sampler_and_schedule(name)
    return found[0].name if found else name


def process_images(p: StableDiffusionProcessingImg2Img) -> Processed:
    """Run the whole job: init once, then `n_iter` batches of sample + decode + overlay (semantics §4)."""
    model = p.model
    if p.init_images and 1 < len(p.init_images) <= p.batch_size:
        p.batch_size = len(p.init_images)  # one image per batch slot (§1); known before the seeds are drawn
    count = p.batch_size * p.n_iter
    all_prompts = [p.prompt] * count
    all_negative_prompts = [p.negative_prompt] * count
    all_seeds, all_subseeds = resolve_seeds(p.seed, p.subseed, p.subseed_strength, count)
    with torch.inference_mode(False), torch.no_grad(), circular_padding((model.unet, model.vae), p.tiling):
        p.init(all_prompts, all_seeds, all_subseeds)
        images: list[Image.Image] = []
        overlays: list[Image.Image | None] = []
        masks: list[Image.Image | None] = []
        extra_images: list[Image.Image] = []
        for n in range(p.n_iter):
            if p.interrupted:
                break
            p.job_no, p.skipped = n, False
            batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
            prompts = p.activate_extra_networks(all_prompts[batch])
            conditioning, unconditional = p.setup_conds(prompts, all_negative_prompts[batch])
            samples = p.sample(
                conditioning,
                unconditional,
                all_seeds[batch],
                all_subseeds[batch],
                p.subseed_strength,
                prompts,
            )
            for i in range(samples.shape[0]):
                # i is the slot within the batch: overlays and colour targets are per slot, repeated every batch.
                picture = decode_latent(model, samples[i : i + 1])
                if p.color_corrections is not None and i < len(p.color_corrections):
                    picture = apply_color_correction(p.color_corrections[i], picture)
                overlay = p.overlay_images[i] if i < len(p.overlay_images) else None
                denoised = picture
                if overlay is not None and p.options.overlay_inpaint:
                    result = apply_overlay(picture, p.paste_to, overlay)
                    picture, denoised = result.image, result.original_denoised_image
                images.append(picture)
                overlays.append(overlay)
                mask = p.mask_for_overlay.convert("L") if p.mask_for_overlay is not None else None
                masks.append(mask)
                if mask is not None and p.options.return_mask:
                    extra_images.append(mask.convert("RGB"))
                if mask is not None and p.options.return_mask_composite:
                    extra_images.append(mask_composite(denoised, mask))
        if p.progress_callback is not None and not p.interrupted:
            total = p.plan.total_steps if p.plan else 0
            p.progress_callback(Progress(p.n_iter, p.n_iter, total, total))
    done = len(images)
    return Processed(
        images=images,
        overlay_images=overlays,
        masks=masks,
        seeds=list(all_seeds[:done]),
        subseeds=list(all_subseeds[:done]),
        prompts=all_prompts[:done],
        negative_prompts=all_negative_prompts[:done],
        infotexts=[p.infotext(i, all_seeds, all_subseeds) for i in range(done)],
        comments=list(p.comments),
        warnings=list(p.warnings),
        interrupted=p.interrupted,
        width=p.width,
        height=p.height,
        extra_images=extra_images,
    )


def _mask_blur_get(self: StableDiffusionProcessingImg2Img) -> int | None:
    """The reference's property: the blur when both axes agree, else None (then left out of the infotext)."""
    return self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None


def _mask_blur_set(self: StableDiffusionProcessingImg2Img, value: int | None) -> None:
    """Only an int sets both axes; a float or None does nothing, as in the reference (§1)."""
    if isinstance(value, int):
        self.mask_blur_x = self.mask_blur_y = value


# Installed after the dataclass is built so that `mask_blur=` stays a constructor argument (an InitVar) while
# reading and writing it afterwards behaves as the reference's property.
StableDiffusionProcessingImg2Img.mask_blur = property(_mask_blur_get, _mask_blur_set)  # type: ignore[attr-defined]

__all__ = [
    "Processed",
    "Progress",
    "ProgressCallback",
    "StableDiffusionProcessingImg2Img",
    "process_images",
]
