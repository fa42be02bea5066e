"""Classifier-free guidance: the UNet as the sampler sees it, ε(x, t) from the prompt's conds and the negative
prompt's uncond at the current evaluation (docs/engine.md, "Prompt encoding"; img2img-semantics.md §3.3).

One call of :class:`CFGDenoiser` is one *evaluation*: every AND sub-prompt of every image and the uncond, in as few
UNet batches as their token lengths allow. Its counter `step` (from 0, +1 per call) picks the entry of each prompt's
schedule, as the reference's denoiser does; a new denoiser is built for every sampling run.

Combination (ε space; the reference combines x0 predictions, which is the same linear combination because
x0 = x − σ·ε with one x per image):

* normal models: ε = u + Σⱼ wⱼ·cfg·(cⱼ − u) over the image's sub-prompts j;
* edit (InstructPix2Pix) models with an image CFG scale ≠ 1: three passes (text+image, uncond+image,
  uncond+zero image), ε = u₀ + cfg·(c − u_img) + image_cfg·(u_img − u₀);
* negative guidance minimum sigma (`s_min_uncond`): on odd evaluations (every evaluation with `s_min_uncond_all`)
  whose noise level is below it, the uncond pass is skipped and the first sub-prompt's output stands in for it, with
  a scale of 1 — so ε = c₁ + Σⱼ wⱼ·(cⱼ − c₁). Not for the three-pass edit path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from worker.engine.conditioning.schedules import CondBatch, MulticondBatch, constant_schedule
from worker.engine.sampling import DenoiseEps

__all__ = ["CFGDenoiser", "cfg_denoiser"]


@dataclass(eq=False)
class _Pass:
    """Rows of one kind (conds, uncond, uncond without image) for the UNet."""

    x: torch.Tensor
    t: torch.Tensor
    context: torch.Tensor
    extra: torch.Tensor | None
    pooled: torch.Tensor | None = None  # SDXL's text_embeds rows


@dataclass(eq=False)
class CFGDenoiser:
    """ε(x_in, timestep, σ) with classifier-free guidance; a `DenoiseEps` for `worker.engine.sampling.run_sampler`.

    Attributes:
        unet: the diffusers UNet (untyped callable).
        conds: the batch's positive prompts (AND sub-prompts with weights, each scheduled).
        uncond: the batch's negative prompts (scheduled).
        image_cond: the extra UNet input channels (edit and 9-channel inpainting models), `(1 or B, c, h, w)`, or
            None.
        cfg_scale: the guidance scale.
        image_cfg_scale: edit models only (None otherwise); a value other than 1 selects the three-pass path.
        s_min_uncond: negative guidance minimum sigma (0 = off).
        s_min_uncond_all: skip the uncond on every evaluation below `s_min_uncond`, not only the odd ones.
        noise_level_is_timestep: compare `s_min_uncond` with the timestep instead of σ. The reference's timestep
            samplers (DDIM, PLMS, UniPC) hand their denoiser the timestep where σ is expected, so there the
            threshold is compared with the timestep.
        pad_cond_uncond: pad the shorter of cond and uncond with copies of `empty_cond` (77 tokens each).
        pad_cond_uncond_v0: pad (repeat its last vector) or truncate the uncond to the cond's length; wins over
            `pad_cond_uncond`. With neither, cond and uncond of different lengths run in separate UNet batches.
        empty_cond: the encoding `(77, C)` of the empty prompt, needed by `pad_cond_uncond`.
        time_ids: SDXL's size conditioning `(6,)` (`worker.engine.conditioning.sdxl.sdxl_time_ids`), the same for
            every row; with it the UNet also gets each row's pooled vector as `text_embeds`. None for SD 1.x/2.x.

    State (read by processing and the previews):
        step: evaluations made so far.
        last_prompt_x0: the x0 prediction `(B, c, h, w)` of each image's first sub-prompt alone at the last
            evaluation — no CFG, no mask blend: the reference's "Prompt" live-preview content.
        last_uncond_eps: the unconditional ε of the last evaluation (the first sub-prompt's when s_min_uncond
            skipped the pass; the image-and-text-free pass of an edit model): what DDIM CFG++ steps with.
        padded_cond_uncond, padded_cond_uncond_v0, skipped_uncond: whether any evaluation padded or skipped (the
            infotext's "Pad conds", "Pad conds v0" and "NGMS").
    """

    unet: Any
    conds: MulticondBatch
    uncond: CondBatch
    image_cond: torch.Tensor | None
    cfg_scale: float
    image_cfg_scale: float | None = None
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    noise_level_is_timestep: bool = False
    pad_cond_uncond: bool = False
    pad_cond_uncond_v0: bool = False
    empty_cond: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    step: int = field(default=0, init=False)
    last_prompt_x0: torch.Tensor | None = field(default=None, init=False)
    last_uncond_eps: torch.Tensor | None = field(default=None, init=False)
    padded_cond_uncond: bool = field(default=False, init=False)
    padded_cond_uncond_v0: bool = field(default=False, init=False)
    skipped_uncond: bool = field(default=False, init=False)

    @property
    def three_pass(self) -> bool:
        return self.image_cond is not None and self.image_cfg_scale is not None and self.image_cfg_scale != 1.0

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, sigma: float) -> torch.Tensor:
        conds_list, cond = self.conds.at(self.step)
        uncond = self.uncond.at(self.step)
        pooled_cond = self.conds.pooled_at(self.step) if self.time_ids is not None else None
        pooled_uncond = self.uncond.pooled_at(self.step) if self.time_ids is not None else None
        batch = x_in.shape[0]
        if len(conds_list) != batch or uncond.shape[0] != batch:
            raise ValueError(f"{len(conds_list)} prompts and {uncond.shape[0]} negative prompts for {batch} latents")
        three_pass = self.three_pass
        if three_pass and any(len(sub) != 1 for sub in conds_list):
            raise ValueError("an edit model with an image CFG scale takes no AND prompts")

        rows = torch.tensor([i for i, sub in enumerate(conds_list) for _ in sub], device=x_in.device)
        extra = self.image_cond.expand(batch, -1, -1, -1) if self.image_cond is not None else None
        level = float(timestep[0]) if self.noise_level_is_timestep else sigma
        skip_uncond = (
            not three_pass
            and self.s_min_uncond > 0
            and level < self.s_min_uncond
            and (self.step % 2 == 1 or self.s_min_uncond_all)
        )
        cond, uncond = self._match_lengths(cond, uncond)

        passes = [_Pass(x_in[rows], timestep[rows], cond, extra[rows] if extra is not None else None, pooled_cond)]
        if three_pass:
            assert extra is not None
            passes.append(_Pass(x_in, timestep, uncond, extra))
            passes.append(_Pass(x_in, timestep, uncond, torch.zeros_like(extra)))
        elif not skip_uncond:
            passes.append(_Pass(x_in, timestep, uncond, extra, pooled_uncond))
        outputs = self._run(passes)

        eps_cond = outputs[0]
        first = [sub[0][0] for sub in conds_list]
        if three_pass:
            image_only, neither = outputs[1], outputs[2]
            assert self.image_cfg_scale is not None
            eps = neither + self.cfg_scale * (eps_cond - image_only) + self.image_cfg_scale * (image_only - neither)
            self.last_uncond_eps = neither
        else:
            if skip_uncond:
                self.skipped_uncond = True
                eps_uncond, scale = eps_cond[first], 1.0
            else:
                eps_uncond, scale = outputs[1], self.cfg_scale
            self.last_uncond_eps = eps_uncond
            eps = eps_uncond.clone()
            for i, sub_prompts in enumerate(conds_list):
                for row, weight in sub_prompts:
                    eps[i] += (eps_cond[row] - eps_uncond[i]) * (weight * scale)

        # x0 of a VP-scaled input: x_in·√(1+σ²) − σ·ε, for k-diffusion and timestep samplers alike.
        self.last_prompt_x0 = x_in * math.sqrt(1.0 + sigma * sigma) - sigma * eps_cond[first]
        self.step += 1
        return eps

    def _match_lengths(self, cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the pad options when cond and uncond differ in token length (docs/engine.md, "Prompt encoding")."""
        length, uncond_length = cond.shape[1], uncond.shape[1]
        if length == uncond_length:
            return cond, uncond
        if self.pad_cond_uncond_v0:
            self.padded_cond_uncond_v0 = True
            if uncond_length < length:
                return cond, torch.cat([uncond, uncond[:, -1:].expand(-1, length - uncond_length, -1)], dim=1)
            return cond, uncond[:, :length]
        if self.pad_cond_uncond:
            if self.empty_cond is None:
                raise ValueError("pad_cond_uncond needs the empty prompt's encoding")
            empty = self.empty_cond.to(cond)
            repeats = (length - uncond_length) // empty.shape[0]
            if repeats < 0:
                cond = _append_empty(cond, -repeats, empty)
                self.padded_cond_uncond = True
            elif repeats > 0:
                uncond = _append_empty(uncond, repeats, empty)
                self.padded_cond_uncond = True
        return cond, uncond

    def _run(self, passes: list[_Pass]) -> list[torch.Tensor]:
        """The UNet's ε for each pass. Consecutive passes whose contexts have the same token length share one UNet
        batch; a different length starts a new one (the reference's behaviour without padding)."""
        outputs: list[torch.Tensor] = []
        start = 0
        while start < len(passes):
            end = start + 1
            length = passes[start].context.shape[1]
            while end < len(passes) and passes[end].context.shape[1] == length:
                end += 1
            group = passes[start:end]
            extras = [p.extra for p in group]
            extra = torch.cat(cast(list[torch.Tensor], extras)) if extras[0] is not None else None
            pooled = [p.pooled for p in group]
            out = self._unet(
                torch.cat([p.x for p in group]),
                torch.cat([p.t for p in group]),
                torch.cat([p.context for p in group]),
                extra,
                torch.cat(cast(list[torch.Tensor], pooled)) if pooled[0] is not None else None,
            )
            outputs.extend(out.split([p.x.shape[0] for p in group]))
            start = end
        return outputs

    def _unet(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        extra: torch.Tensor | None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model_input = x if extra is None else torch.cat([x, extra], dim=1)
        kwargs: dict[str, Any] = {}
        if self.time_ids is not None:
            if pooled is None:
                raise ValueError("an SDXL UNet needs the pooled text vectors of every row")
            time_ids = self.time_ids.to(device=x.device, dtype=context.dtype).expand(x.shape[0], -1)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(context), "time_ids": time_ids}
        with torch.no_grad():
            return cast(torch.Tensor, self.unet(model_input, t, encoder_hidden_states=context, **kwargs).sample)


def _append_empty(conds: torch.Tensor, repeats: int, empty: torch.Tensor) -> torch.Tensor:
    """`conds` `(B, T, C)` followed by `repeats` copies of the empty prompt's 77 vectors."""
    padding = empty.repeat(repeats, 1).expand(conds.shape[0], -1, -1)
    return torch.cat([conds, padding], dim=1)


def cfg_denoiser(
    unet: Any,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    image_cond: torch.Tensor | None,
    cfg_scale: float,
    image_cfg_scale: float | None,
) -> DenoiseEps:
    """A :class:`CFGDenoiser` for one constant cond `(B, T, C)` per image (no schedule, no AND)."""
    return CFGDenoiser(
        unet,
        MulticondBatch.single(cond),
        CondBatch(tuple(constant_schedule(u) for u in uncond)),
        image_cond,
        cfg_scale,
        image_cfg_scale,
    )
