"""The loaded model: a Stable Diffusion model's modules ready to render with, its family, its kind, and the model
errors.

Families (`ModelFamily`): `sd1` (one OpenAI CLIP text encoder), `sd2` (one OpenCLIP encoder), `sdxl` (CLIP-L and
OpenCLIP bigG, vector conditioning; docs/engine.md "SDXL and single-file checkpoints"). The kind of a model comes
from its UNet's input channels: 4 img2img, 9 inpaint (Runway), 8 edit (InstructPix2Pix; SD 1.x/2.x only).

Errors (all permanent: retrying the same job cannot help):

    PermanentError (shared.errors)
    └── ModelError                  a model cannot be built or loaded (broken file, unsupported architecture)
        ├── ModelNotFound           no model of that name: not a path, not in the models folder, not on the hub
        └── ModelConfigMissing      a single-file checkpoint whose configs cannot be resolved offline
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import torch

from shared.errors import InputError, PermanentError
from worker.engine.diffusers_internals import cast_module, clip_final_layer_norm

# diffusers and transformers are imported where they are used: importing them takes seconds, and modules that only
# need this module's names and types (the API's model-name checks, processing's pixel stage) should not pay for it.
if TYPE_CHECKING:
    # From their modules, not the package root: diffusers' root hides them from mypy behind dummy classes.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


def diffusers_model_classes() -> tuple[type[UNet2DConditionModel], type[AutoencoderKL]]:
    """diffusers' UNet and VAE classes, imported on first use (see above)."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    return UNet2DConditionModel, AutoencoderKL


__all__ = [
    "CLIP_MAX_LENGTH",
    "KIND_IN_CHANNELS",
    "LoadedModel",
    "ModelConfigMissing",
    "ModelError",
    "ModelFamily",
    "ModelKind",
    "ModelNotFound",
    "VaeNaN",
    "diffusers_model_classes",
    "kind_of",
]

logger = logging.getLogger(__name__)

ModelKind = Literal["img2img", "inpaint", "edit"]
ModelFamily = Literal["sd1", "sd2", "sdxl"]

KIND_IN_CHANNELS: Final[Mapping[ModelKind, int]] = {"img2img": 4, "inpaint": 9, "edit": 8}
_KIND_BY_IN_CHANNELS: Final[Mapping[int, ModelKind]] = {v: k for k, v in KIND_IN_CHANNELS.items()}

CLIP_MAX_LENGTH: Final = 77  # tokens of one CLIP window: BOS + 75 + EOS
HASH_HEX_CHARS: Final = 10  # A1111's short model hash: the first 10 hex digits of the file's sha256
_HASH_CHUNK_BYTES: Final = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# Errors


class ModelError(PermanentError, default_code="model_error"):
    """A model cannot be built or loaded: a broken file, an unsupported architecture, an unusable folder."""


class ModelNotFound(ModelError, default_code="model_not_found"):
    """No model answers to the name: it is no path, not in the models folder, and not (reachable) on the hub."""


class ModelConfigMissing(ModelError, default_code="model_config_missing"):
    """A single-file checkpoint whose component configs cannot be found locally (the hub is out of reach)."""


class VaeNaN(PermanentError, default_code="vae_nan"):
    """The VAE decoded NaN values even in fp32: the picture would be black. The job fails instead."""


def kind_of(in_channels: int, source: str) -> ModelKind:
    """The kind of a model whose UNet has `in_channels` inputs. Raises ModelError (code model_unsupported)."""
    try:
        return _KIND_BY_IN_CHANNELS[in_channels]
    except KeyError:
        raise ModelError(
            f"{source}: a UNet with {in_channels} input channels is not supported "
            "(4: img2img, 9: inpainting, 8: InstructPix2Pix)",
            code="model_unsupported",
        ) from None


# ----------------------------------------------------------------------------------------------------------------
# The loaded model


@contextmanager
def _replaced_token_vectors(
    text_encoder: Any, token_vectors: Sequence[Sequence[tuple[int, torch.Tensor]]] | None
) -> Iterator[None]:
    """While inside, the text encoder's token-embedding layer returns `token_vectors` at their positions (a forward
    hook on that layer, removed on exit)."""
    if not token_vectors or not any(token_vectors):
        yield
        return

    def replace(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        del module, inputs
        output = output.clone()
        for row, insertions in enumerate(token_vectors):
            for position, vectors in insertions:
                count = min(output.shape[1] - position, vectors.shape[0])
                if count > 0:
                    output[row, position : position + count] = vectors[:count].to(output)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)  # the token embedding layer
    try:
        yield
    finally:
        handle.remove()


def _module_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _sha256_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(eq=False)
class LoadedModel:
    """A Stable Diffusion model ready to render with: its modules on `device` in `dtype`, in eval mode.

    `name` is what the infotext calls it (a file's stem, a folder's name, a hub id, `tiny`); `source` where it was
    loaded from. `scheduler_config` is the model's scheduler_config.json without its `_`-prefixed metadata: the
    noise schedule to build any diffusers scheduler from (`EulerDiscreteScheduler.from_config(...)`).
    `weights_files` are what `model_hash` hashes (A1111: the checkpoint file; for a folder, the UNet's weights).
    `family` is the architecture; SDXL models also have `text_encoder_2` (OpenCLIP bigG, with its projection) and
    `tokenizer_2` (None for SD 1.x/2.x). `vae_file` names the external VAE file in use (`worker.engine.vae_files`),
    None while the checkpoint's own VAE is.
    Not frozen: `vae_decode` may switch the VAE to fp32 when fp16 overflows, as A1111 does, and a VAE file may be
    swapped in for one job.
    """

    name: str
    source: str
    kind: ModelKind
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    weights_files: tuple[Path, ...] = ()
    family: ModelFamily = "sd1"
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    vae_file: Any = None  # worker.engine.vae_files.VaeFile while an external VAE is swapped in
    _hash: str | None = field(default=None, init=False, repr=False)
    _hash_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # -- facts ---------------------------------------------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        """The UNet's input channels: 4 (img2img), 9 (inpaint) or 8 (edit)."""
        return int(self.unet.config["in_channels"])

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE's weights' dtype (it may differ from `dtype` after the fp16 fallback). diffusers' `vae.dtype`
        walks every submodule looking for casting hooks (0.35 ms for the tiny VAE, more for SD's), several times
        per image; the first floating parameter says the same for the farm's models, which carry no such hooks."""
        for parameter in self.vae.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
        return self.dtype

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config["latent_channels"])

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for SD)."""
        return int(2 ** (len(self.vae.config["block_out_channels"]) - 1))

    @property
    def latent_scale_factor(self) -> float:
        """The factor between the VAE posterior and the UNet's latents (0.18215 for SD 1.x)."""
        return float(self.vae.config["scaling_factor"])

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the weights and buffers of the UNet, VAE and text encoder(s) (activations not counted)."""
        modules: list[torch.nn.Module] = [self.unet, self.vae, self.text_encoder]
        if self.text_encoder_2 is not None:
            modules.append(self.text_encoder_2)
        return sum(_module_bytes(m) for m in modules)

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def vae_forced_fp32(self) -> bool:
        """Whether the VAE runs in fp32 whatever the model's dtype (proposal P13): SDXL VAEs whose config says
        `force_upcast` (the official one overflows in fp16; the fp16-fix VAE's config says false)."""
        return self.is_sdxl and bool(self.vae.config.get("force_upcast", False))

    @property
    def model_hash(self) -> str:
        """A1111's short hash: the first 10 hex digits of the weights' sha256 ("" when there is no file).

        Computed on first use (a few seconds for a 2 GB file) and remembered.
        """
        with self._hash_lock:
            if self._hash is None:
                self._hash = _sha256_files(self.weights_files)[:HASH_HEX_CHARS] if self.weights_files else ""
            return self._hash

    def infotext_fields(self) -> dict[str, str]:
        """The infotext's `Model hash` and `Model` entries, as A1111 writes them."""
        fields = {"Model hash": self.model_hash} if self.model_hash else {}
        fields["Model"] = self.name
        if self.vae_file is not None:
            fields["VAE hash"] = str(self.vae_file.short_hash)
            fields["VAE"] = str(self.vae_file.name)
        return fields

    # -- text ----------------------------------------------------------------------------------------------------

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (B, 77) on `device`: BOS, the prompt truncated to 75 tokens, EOS, then padding."""
        encoded = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=CLIP_MAX_LENGTH,
            truncation=True,
            return_tensors="pt",
        )
        return cast(torch.Tensor, encoded.input_ids).to(self.device)

    @property
    def uses_open_clip(self) -> bool:
        """Whether the text encoder is OpenCLIP's (SD 2.x: GELU activations, pad id 0 after EOS) rather than
        OpenAI's CLIP (SD 1.x: quick-GELU, padded with EOS). The reference treats the two differently (CLIP skip,
        padding; docs/engine.md, "Prompt encoding")."""
        return str(self.text_encoder.config.hidden_act) == "gelu"

    def encode_tokens(
        self,
        token_ids: torch.Tensor,
        clip_skip: int = 1,
        token_vectors: Sequence[Sequence[tuple[int, torch.Tensor]]] | None = None,
    ) -> torch.Tensor:
        """CLIP embeddings (B, T, D) of token ids (B, T), in `dtype`.

        `clip_skip` is A1111's CLIP_stop_at_last_layers: 1 takes the last layer's output; n > 1 takes the hidden
        state n layers from the end and applies the final layer norm to it. OpenCLIP (SD 2.x) encoders ignore it, as
        the reference does: their converted last layer already is the reference's choice. Raises InputError when
        `clip_skip` is not in 1..number of layers.

        `token_vectors`: per row, `(position, vectors (n, D))` that replace the token embeddings at positions
        position … position+n−1 (textual-inversion embeddings), before the position embeddings are added; vectors
        past the end of the row are dropped.
        """
        layers = int(self.text_encoder.config.num_hidden_layers)
        if not 1 <= clip_skip <= layers:
            raise InputError(f"clip_skip must be between 1 and {layers} for this model", field="clip_skip")
        skip = 1 if self.uses_open_clip else clip_skip
        with torch.no_grad(), _replaced_token_vectors(self.text_encoder, token_vectors):
            outputs = self.text_encoder(input_ids=token_ids.to(self.device), output_hidden_states=skip > 1)
            if skip == 1:
                hidden = outputs.last_hidden_state
            else:
                # hidden_states[-1] is the last layer before the final norm, so -clip_skip counts as A1111 does.
                hidden = clip_final_layer_norm(self.text_encoder, outputs.hidden_states[-skip])
        return cast(torch.Tensor, hidden).to(self.dtype)

    def encode_tokens_sdxl(
        self,
        token_ids: torch.Tensor,
        *,
        second: bool,
        token_vectors: Sequence[Sequence[tuple[int, torch.Tensor]]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One SDXL text encoder's context `(B, T, D)` of token ids `(B, T)`, in `dtype`: the penultimate layer's
        hidden state WITHOUT the final layer norm (CLIP-L, `second=False`, and bigG alike; prompts-and-models.md §5.2),
        and for bigG (`second=True`) also the pooled vector `(B, P)`: the final-norm output at the first EOS
        (diffusers picks it by the EOS id), projected. CLIP skip does not apply (proposal P14)."""
        encoder = self.text_encoder_2 if second else self.text_encoder
        if encoder is None:
            raise ModelError(f"{self.name}: not an SDXL model (no second text encoder)", code="model_unsupported")
        with torch.no_grad(), _replaced_token_vectors(encoder, token_vectors):
            outputs = encoder(input_ids=token_ids.to(self.device), output_hidden_states=True)
            hidden = cast(torch.Tensor, outputs.hidden_states[-2]).to(self.dtype)
            pooled = cast(torch.Tensor, outputs.text_embeds).to(self.dtype) if second else None
        return hidden, pooled

    def encode_prompt(self, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
        """CLIP embeddings (B, 77, D) of plain prompts, truncated to 75 tokens (no A1111 prompt syntax: rendering
        encodes through `worker.engine.conditioning`). Raises as `encode_tokens`."""
        return self.encode_tokens(self.tokenize(prompts), clip_skip=clip_skip)

    # -- VAE -----------------------------------------------------------------------------------------------------

    def _to_vae(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.vae_dtype)

    def ensure_vae_precision(self) -> None:
        """Cast the VAE to fp32 when `vae_forced_fp32` says it must run so (after loading, after a VAE swap)."""
        if self.vae_forced_fp32 and self.vae_dtype != torch.float32:
            cast_module(self.vae, torch.float32)

    def vae_encode(
        self, x: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Latents (B, 4, H/8, W/8) × the scale factor of images `x` (B, 3, H, W) in [-1, 1].

        `sample=True` draws from the posterior as A1111 does for SD 1.x/2.x (`generator` None: the global torch
        RNG); `sample=False` takes its mean.
        """
        with torch.no_grad():
            posterior = self.vae.encode(self._to_vae(x)).latent_dist
            latents = posterior.sample(generator=generator) if sample else posterior.mode()
        return cast(torch.Tensor, latents * self.latent_scale_factor).to(self.dtype)

    def vae_encode_mode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior's mode (= mean) of images `x` in [-1, 1], with NO scale factor: the image conditioning of
        edit (InstructPix2Pix) models, img2img-semantics.md §2.8."""
        with torch.no_grad():
            latents = self.vae.encode(self._to_vae(x)).latent_dist.mode()
        return cast(torch.Tensor, latents).to(self.dtype)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 8·h, 8·w), nominally in [-1, 1] but not clamped (the caller clamps, as A1111 does),
        of latents (B, 4, h, w) that carry the scale factor.

        In fp16 the SD VAE can overflow into NaN; then, like A1111's automatic VAE precision, the VAE is switched
        to fp32 for good and the batch decoded again. (SDXL VAEs that need it run in fp32 from the start:
        `vae_forced_fp32`.) NaN anywhere in the fp32 (or bf16) result raises VaeNaN rather than returning a black
        picture (proposal P13: the whole tensor is checked, not its first element).
        """
        self.ensure_vae_precision()
        with torch.no_grad():
            scaled = latents / self.latent_scale_factor
            images = self.vae.decode(self._to_vae(scaled)).sample
            if self.vae_dtype == torch.float16 and torch.isnan(images).any():
                logger.warning("VAE produced NaN in fp16; switching %s's VAE to fp32", self.name)
                cast_module(self.vae, torch.float32)
                images = self.vae.decode(self._to_vae(scaled)).sample
            if torch.isnan(images).any():
                raise VaeNaN(
                    f"the VAE of {self.name} decoded NaN values in {str(self.vae_dtype).removeprefix('torch.')} "
                    "(the latents or the VAE's weights are broken); no picture was produced"
                )
        return cast(torch.Tensor, images)
