"""Stable Diffusion models for the worker: load them, keep them loaded, and build the tiny offline ones.

A model is loaded from one of:

- a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`);
- a single checkpoint file (`.safetensors`, `.ckpt`) in the original (A1111 / LDM) layout. Its component configs
  must come from a local diffusers folder of the same architecture (`config=`), or from the Hugging Face cache
  when the hub is reachable;
- a hub id (`org/name`), downloaded into the Hugging Face cache unless `HF_HUB_OFFLINE` is set;
- the names `tiny`, `tiny-inpaint`, `tiny-edit`: random-weight models built locally on first use, which the tests
  and the demo render with on a CPU in well under a second.

Only SD 1.x / 2.x-shaped models (one CLIP text encoder, a 4-, 9- or 8-channel UNet) are supported; the kind of a
model comes from its UNet's input channels: 4 img2img, 9 inpaint (Runway), 8 edit (InstructPix2Pix).

Errors (all permanent: retrying the same job cannot help):

    PermanentError (shared.errors)
    └── ModelError                  a model cannot be built or loaded (broken file, unsupported architecture)
        ├── ModelNotFound           no model of that name: not a path, not in the models folder, not on the hub
        └── ModelConfigMissing      a single-file checkpoint whose configs cannot be resolved offline
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import torch

from shared.config import ENV_PREFIX, default_data_dir
from shared.errors import InputError, PermanentError

# diffusers and transformers are imported where they are used: importing them takes seconds, and modules that only
# need this module's names and types (the API's model-name checks, processing's pixel stage) should not pay for it.
if TYPE_CHECKING:
    # From their modules, not the package root: diffusers' root hides them from mypy behind dummy classes.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def _diffusers_models() -> tuple[type[UNet2DConditionModel], type[AutoencoderKL]]:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    return UNet2DConditionModel, AutoencoderKL


__all__ = [
    "KIND_IN_CHANNELS",
    "SD1_SCHEDULER_CONFIG",
    "TINY_MARKER",
    "TINY_MODEL_NAMES",
    "LoadedModel",
    "ModelCache",
    "ModelConfigMissing",
    "ModelError",
    "ModelKind",
    "ModelNotFound",
    "build_sd15_shaped_model",
    "build_tiny_cli",
    "build_tiny_model",
    "default_models_dir",
    "export_single_file",
    "load_model",
    "pick_device",
    "pick_dtype",
]

logger = logging.getLogger(__name__)

ModelKind = Literal["img2img", "inpaint", "edit"]

KIND_IN_CHANNELS: Final[Mapping[ModelKind, int]] = {"img2img": 4, "inpaint": 9, "edit": 8}
_KIND_BY_IN_CHANNELS: Final[Mapping[int, ModelKind]] = {v: k for k, v in KIND_IN_CHANNELS.items()}

TINY_MODEL_NAMES: Final[Mapping[str, ModelKind]] = {
    "tiny": "img2img",
    "tiny-inpaint": "inpaint",
    "tiny-edit": "edit",
}

# The noise schedule of SD 1.x (its published scheduler_config.json): σ runs from 0.0292 (t=0) to 14.6146 (t=999).
SD1_SCHEDULER_CONFIG: Final[Mapping[str, Any]] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
SD1_LATENT_SCALING_FACTOR: Final = 0.18215  # the SD 1.x VAE's latent scale
CLIP_MAX_LENGTH: Final = 77  # tokens of one CLIP window: BOS + 75 + EOS
HASH_HEX_CHARS: Final = 10  # A1111's short model hash: the first 10 hex digits of the file's sha256
_HASH_CHUNK_BYTES: Final = 1 << 20

TINY_MARKER: Final = ".renderfarm-model.json"  # written last, so its presence means "completely built"
_BUILD_FORMAT: Final = 1  # bump when the built layout or the architecture changes, so old builds are replaced

_CHECKPOINT_SUFFIXES: Final = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_HUB_ID_RE: Final = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# LDM (original Stable Diffusion / A1111) key prefixes of a single-file checkpoint.
_LDM_UNET: Final = "model.diffusion_model."
_LDM_VAE: Final = "first_stage_model."
_LDM_CLIP: Final = "cond_stage_model.transformer.text_model."


# ----------------------------------------------------------------------------------------------------------------
# Errors


class ModelError(PermanentError):
    """A model cannot be built or loaded: a broken file, an unsupported architecture, an unusable folder."""

    default_code = "model_error"


class ModelNotFound(ModelError):
    """No model answers to the name: it is no path, not in the models folder, and not (reachable) on the hub."""

    default_code = "model_not_found"


class ModelConfigMissing(ModelError):
    """A single-file checkpoint whose component configs cannot be found locally (the hub is out of reach)."""

    default_code = "model_config_missing"


# ----------------------------------------------------------------------------------------------------------------
# Devices and dtypes


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """The device to render on: `preferred` if given, else CUDA, then Apple MPS, then the CPU."""
    if preferred is not None:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: str | torch.device, precision: Literal["auto", "fp16", "bf16", "fp32"] = "auto") -> torch.dtype:
    """The weights' dtype: fp16 on CUDA and MPS, fp32 on the CPU, unless `precision` asks otherwise.

    Raises ValueError for fp16 on the CPU (many CPU kernels lack half precision) and bf16 on a GPU that lacks it.
    """
    kind = torch.device(device).type
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("bf16 was requested but this GPU does not support it; use fp16 or fp32")
        return torch.bfloat16
    if precision == "fp16":
        if kind == "cpu":
            raise ValueError("fp16 is not supported on the CPU; use fp32 or bf16")
        return torch.float16
    return torch.float16 if kind in ("cuda", "mps") else torch.float32


# ----------------------------------------------------------------------------------------------------------------
# The loaded model


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
    Not frozen: `vae_decode` may switch the VAE to fp32 when fp16 overflows, as A1111 does.
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
        """Bytes held by the weights and buffers of the UNet, VAE and text encoder (activations not counted)."""
        return sum(_module_bytes(m) for m in (self.unet, self.vae, self.text_encoder))

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

    def encode_tokens(self, token_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        """CLIP embeddings (B, T, D) of token ids (B, T), in `dtype`.

        `clip_skip` is A1111's CLIP_stop_at_last_layers: 1 takes the last layer's output; n > 1 takes the hidden
        state n layers from the end and applies the final layer norm to it. Raises InputError when `clip_skip` is
        not in 1..number of layers.
        """
        layers = int(self.text_encoder.config.num_hidden_layers)
        if not 1 <= clip_skip <= layers:
            raise InputError(f"clip_skip must be between 1 and {layers} for this model", field="clip_skip")
        with torch.no_grad():
            outputs = self.text_encoder(input_ids=token_ids.to(self.device), output_hidden_states=clip_skip > 1)
            if clip_skip == 1:
                hidden = outputs.last_hidden_state
            else:
                # hidden_states[-1] is the last layer before the final norm, so -clip_skip counts as A1111 does.
                text_model = getattr(self.text_encoder, "text_model", self.text_encoder)
                hidden = text_model.final_layer_norm(outputs.hidden_states[-clip_skip])
        return cast(torch.Tensor, hidden).to(self.dtype)

    def encode_prompt(self, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
        """CLIP embeddings (B, 77, D) of plain prompts (no A1111 emphasis or 75-token chunking: that is
        processing's job, which calls `tokenize` and `encode_tokens`). Raises as `encode_tokens`."""
        return self.encode_tokens(self.tokenize(prompts), clip_skip=clip_skip)

    # -- VAE -----------------------------------------------------------------------------------------------------

    def _to_vae(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=self.vae_dtype)

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
        to fp32 for good and the batch decoded again.
        """
        with torch.no_grad():
            scaled = latents / self.latent_scale_factor
            images = self.vae.decode(self._to_vae(scaled)).sample
            if self.vae_dtype == torch.float16 and torch.isnan(images).any():
                logger.warning("VAE produced NaN in fp16; switching %s's VAE to fp32", self.name)
                torch.nn.Module.to(self.vae, dtype=torch.float32)
                images = self.vae.decode(self._to_vae(scaled)).sample
        return cast(torch.Tensor, images)


# ----------------------------------------------------------------------------------------------------------------
# Building models locally: the tiny one for tests and the demo, the SD 1.5-shaped one for benchmarks


def _byte_level_vocab(size: int) -> dict[str, int]:
    """A CLIP BPE vocabulary of `size` entries that tokenizes any text without merges.

    The 256 byte symbols of GPT-2/CLIP's byte-level encoding, each also with CLIP's end-of-word suffix, then unused
    fillers, then BOS and EOS as the last two ids (where real CLIP has them, 49406 and 49407).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    remapped = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(remapped))]
    tokens = symbols + [s + "</w>" for s in symbols]
    if size < len(tokens) + 2:
        raise ValueError(f"a byte-level CLIP vocabulary needs at least {len(tokens) + 2} entries, not {size}")
    tokens += [f"<|unused{i}|>" for i in range(size - len(tokens) - 2)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


@dataclass(frozen=True)
class _Architecture:
    """Layer sizes of a Stable Diffusion model to build (UNet in_channels comes from the kind)."""

    name: str
    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    text: Mapping[str, Any]
    vocab_size: int


# Small enough to render 64×64 in ~0.1 s on a CPU, yet with every part of the real thing: a VAE with four blocks (the
# real 8× downscale; fewer blocks would make the UNet run on a larger latent), cross-attention, a CLIP encoder.
_TINY = _Architecture(
    name="tiny",
    unet={
        "sample_size": 32,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={
        "sample_size": 256,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (8, 16, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "norm_num_groups": 8,
        "scaling_factor": SD1_LATENT_SCALING_FACTOR,
    },
    text={
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "projection_dim": 32,
        "hidden_act": "quick_gelu",
    },
    vocab_size=514,
)

# The layer sizes of SD 1.5's published configs (unet/vae/text_encoder config.json).
_SD15 = _Architecture(
    name="sd15-shaped",
    unet={
        "sample_size": 64,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={
        "sample_size": 512,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "norm_num_groups": 32,
        "scaling_factor": SD1_LATENT_SCALING_FACTOR,
    },
    text={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
    },
    vocab_size=49408,
)

# The diffusers pipeline whose save_pretrained layout (model_index.json) a built model of each kind has.
_PIPELINE_CLASS: Final[Mapping[ModelKind, str]] = {
    "img2img": "StableDiffusionPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "edit": "StableDiffusionInstructPix2PixPipeline",
}


def _text_config(arch: _Architecture) -> CLIPTextConfig:
    # The special ids must be those of the generated vocabulary (its last two), not CLIP's defaults: the encoder
    # finds the pooled (EOS) position by this id.
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=arch.vocab_size,
        max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=arch.vocab_size - 2,
        eos_token_id=arch.vocab_size - 1,
        pad_token_id=arch.vocab_size - 1,
        **arch.text,
    )


def _unet_config(arch: _Architecture, kind: ModelKind) -> dict[str, Any]:
    return {**arch.unet, "in_channels": KIND_IN_CHANNELS[kind]}


def _write_model(folder: Path, arch: _Architecture, kind: ModelKind, seed: int) -> None:
    """Build random-weight components (seeded per component, so the result depends only on arch/kind/seed) and
    save them as the diffusers pipeline of `kind` would."""
    # The pipelines, imported only here, pull in image-processor modules that only building needs.
    import diffusers
    from diffusers.schedulers.scheduling_pndm import PNDMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    UNet2DConditionModel, AutoencoderKL = _diffusers_models()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_unet_config(arch, kind))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**arch.vae)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(arch))
    vocab = _byte_level_vocab(arch.vocab_size)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)
    # PNDM as SD 1.x ships; it does not take every SD 1.x key (clip_sample), so those are written in below.
    scheduler = PNDMScheduler(**{k: v for k, v in SD1_SCHEDULER_CONFIG.items() if k != "clip_sample"})
    pipeline_class: Any = getattr(diffusers, _PIPELINE_CLASS[kind])
    pipeline = pipeline_class(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    # The full SD 1.x scheduler config, so that any scheduler built from it (DDIM's clip_sample defaults to True)
    # gets SD's settings.
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_json = {**json.loads(scheduler_file.read_text(encoding="utf-8")), **SD1_SCHEDULER_CONFIG}
    scheduler_file.write_text(json.dumps(scheduler_json, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    # The slow-tokenizer files too, as real SD folders carry them, for loaders that cannot read tokenizer.json.
    tokenizer_dir = folder / "tokenizer"
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / TINY_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _build(path: str | os.PathLike[str], arch: _Architecture, kind: ModelKind, seed: int) -> Path:
    if kind not in KIND_IN_CHANNELS:
        raise ValueError(f"kind must be one of {sorted(KIND_IN_CHANNELS)}, not {kind!r}")
    target = Path(path).expanduser().absolute()
    wanted = {"format": _BUILD_FORMAT, "architecture": arch.name, "kind": kind, "seed": seed}
    if _read_marker(target) == wanted:
        return target
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and _read_marker(target) is None)):
        raise ModelError(f"{target} exists and is not a model built by renderfarm; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename into place, so that a crash never leaves a half-written model and several
    # workers sharing one data folder may race to build it: the first rename wins, the others find it built.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    old = target.parent / f".{target.name}.old-{os.getpid()}-{threading.get_ident()}"
    try:
        _write_model(staging, arch, kind, seed)
        (staging / TINY_MARKER).write_text(json.dumps(wanted, sort_keys=True), encoding="utf-8")
        if target.exists():
            with contextlib.suppress(FileNotFoundError):
                target.rename(old)
        try:
            staging.rename(target)
        except OSError:
            if _read_marker(target) != wanted:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


def build_tiny_model(path: str | os.PathLike[str], kind: ModelKind = "img2img", seed: int = 0) -> Path:
    """Build the tiny random-weight model of `kind` as a diffusers folder at `path`, and return its path.

    Deterministic: the same kind and seed give byte-identical weights. Idempotent: a folder already built with the
    same kind and seed is kept; one built with another kind or seed is replaced. Takes about a second.
    Raises ValueError for an unknown kind, ModelError when `path` holds something other than a built model.
    """
    return _build(path, _TINY, kind, seed)


def build_sd15_shaped_model(path: str | os.PathLike[str], kind: ModelKind = "img2img", seed: int = 0) -> Path:
    """Build a random-weight model with SD 1.5's layer sizes (860M-parameter UNet, ~4 GB in fp32) at `path`.

    For benchmarks: it costs what SD 1.5 costs to run, renders noise, and needs no download. Takes a minute or
    more. Same idempotence and raise conditions as `build_tiny_model`.
    """
    return _build(path, _SD15, kind, seed)


def build_tiny_cli(directory: str | os.PathLike[str], kind: ModelKind = "img2img", seed: int = 0) -> Path:
    """`renderfarm model build-tiny DIR`: build the tiny model into DIR (see `build_tiny_model`)."""
    return build_tiny_model(directory, kind=kind, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# Single-file checkpoints in the original (LDM / A1111) layout


def _ldm_resnet(name: str) -> str:
    for diffusers_name, ldm_name in (
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("time_emb_proj", "emb_layers.1"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("conv_shortcut", "skip_connection"),
    ):
        if name.startswith(diffusers_name + "."):
            return ldm_name + name[len(diffusers_name) :]
    raise ValueError(f"unexpected UNet resnet weight {name!r}")


def _unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Diffusers UNet2DConditionModel weights → the LDM UNetModel's names (SD 1.x/2.x layout)."""
    per = int(config["layers_per_block"]) + 1  # LDM blocks per diffusers down block: the layers + a downsampler
    with_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    simple = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        new: str | None = next((ldm + key[len(d) :] for d, ldm in simple.items() if key.startswith(d)), None)
        if new is None and parts[0] == "down_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"input_blocks.{1 + block * per + index}.0.{_ldm_resnet(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{1 + block * per + index}.1.{rest}"
            elif kind == "downsamplers":
                new = f"input_blocks.{(block + 1) * per}.0.op.{rest.removeprefix('conv.')}"
        elif new is None and parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                new = f"middle_block.{2 * index}.{_ldm_resnet(rest)}"
            elif kind == "attentions":
                new = f"middle_block.1.{rest}"
        elif new is None and parts[0] == "up_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"output_blocks.{block * per + index}.0.{_ldm_resnet(rest)}"
            elif kind == "attentions":
                new = f"output_blocks.{block * per + index}.1.{rest}"
            elif kind == "upsamplers":
                slot = 2 if with_attention[block] else 1
                new = f"output_blocks.{block * per + per - 1}.{slot}.{rest}"
        if new is None:
            raise ValueError(f"unexpected UNet weight {key!r}")
        out[_LDM_UNET + new] = tensor
    return out


def _vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL weights → the LDM AutoencoderKL's names."""
    blocks = len(config["block_out_channels"])
    renames = [
        (".conv_shortcut.", ".nin_shortcut."),
        (".mid_block.resnets.0.", ".mid.block_1."),
        (".mid_block.resnets.1.", ".mid.block_2."),
        (".mid_block.attentions.0.", ".mid.attn_1."),
        (".conv_norm_out.", ".norm_out."),
        (".downsamplers.0.", ".downsample."),
        (".upsamplers.0.", ".upsample."),
        (".group_norm.", ".norm."),
        (".to_q.", ".q."),
        (".to_k.", ".k."),
        (".to_v.", ".v."),
        (".to_out.0.", ".proj_out."),
        (".resnets.", ".block."),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = "." + key
        match = re.match(r"^\.encoder\.down_blocks\.(\d+)\.", new)
        if match:
            new = f".encoder.down.{match.group(1)}." + new[match.end() :]
        match = re.match(r"^\.decoder\.up_blocks\.(\d+)\.", new)
        if match:  # LDM numbers the decoder's blocks from the lowest resolution up, diffusers from the top down
            new = f".decoder.up.{blocks - 1 - int(match.group(1))}." + new[match.end() :]
        for old_part, new_part in renames:
            new = new.replace(old_part, new_part)
        value = tensor
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", new):
            value = tensor.reshape(*tensor.shape, 1, 1)  # LDM's attention projections are 1×1 convolutions
        out[_LDM_VAE + new[1:]] = value
    return out


def _load_safetensors_dir(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder} has no .safetensors weights to export")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return state


def export_single_file(model_folder: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Write the diffusers folder's UNet, VAE and text encoder as one `.safetensors` checkpoint in the original
    LDM layout (what A1111 users keep in their models folder). Returns the written path.

    Raises ModelError when the folder lacks a component's safetensors weights.
    """
    folder = Path(model_folder)
    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    state = _unet_to_ldm(_load_safetensors_dir(folder / "unet"), unet_config)
    state.update(_vae_to_ldm(_load_safetensors_dir(folder / "vae"), vae_config))
    text = _load_safetensors_dir(folder / "text_encoder")
    state.update({_LDM_CLIP + key.removeprefix("text_model."): value for key, value in text.items()})
    from safetensors.torch import save_file

    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target


# ----------------------------------------------------------------------------------------------------------------
# Loading


def default_models_dir() -> Path:
    """Where the tiny models are built: `$RENDERFARM_DATA_DIR/models`, else the default data folder's `models`."""
    data_dir = os.environ.get(f"{ENV_PREFIX}DATA_DIR")
    return (Path(data_dir).expanduser() if data_dir else default_data_dir()) / "models"


def _hub_offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _kind_of(in_channels: int, source: str) -> ModelKind:
    try:
        return _KIND_BY_IN_CHANNELS[in_channels]
    except KeyError:
        raise ModelError(
            f"{source}: a UNet with {in_channels} input channels is not supported "
            "(4: img2img, 9: inpainting, 8: InstructPix2Pix)",
            code="model_unsupported",
        ) from None


def _finish(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    if next(module.parameters()).dtype != dtype:
        # torch's own `to`: diffusers' override logs a spurious "keep in float32" warning on every dtype cast
        # (diffusers 0.42 warns even when no module must stay in float32). SD's UNet and VAE have none.
        torch.nn.Module.to(module, dtype=dtype)
    module.to(device=device)
    module.eval()
    module.requires_grad_(False)


def _weights_in(component_dir: Path) -> tuple[Path, ...]:
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(p for p in component_dir.glob(pattern) if ".fp16." not in p.name)
        if files:
            return tuple(files)
    return tuple(sorted(component_dir.glob("*.fp16.safetensors")))


def _variant(component_dir: Path) -> str | None:
    """ "fp16" when the folder only carries fp16-variant weights (some hub repos do), else None."""
    has_plain = any(".fp16." not in p.name for p in component_dir.glob("*.safetensors")) or any(
        component_dir.glob("*.bin")
    )
    return None if has_plain or not any(component_dir.glob("*.fp16.*")) else "fp16"


def _load_folder(folder: Path, name: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    source = str(folder)
    if (folder / "text_encoder_2").exists() or not (folder / "text_encoder").is_dir():
        raise ModelError(
            f"{source}: only SD 1.x/2.x models with one CLIP text encoder are supported (SDXL is not yet)",
            code="model_unsupported",
        )
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / part).is_dir():
            raise ModelError(f"{source}: not a complete diffusers model folder (no {part}/)")
    from transformers import CLIPTextModel, CLIPTokenizer

    UNet2DConditionModel, AutoencoderKL = _diffusers_models()
    try:
        # low_cpu_mem_usage=False: the default needs `accelerate`, which the worker does not install.
        unet = UNet2DConditionModel.from_pretrained(
            folder,
            subfolder="unet",
            variant=_variant(folder / "unet"),
            torch_dtype=dtype,
            low_cpu_mem_usage=False,
        )
        vae = AutoencoderKL.from_pretrained(
            folder, subfolder="vae", variant=_variant(folder / "vae"), torch_dtype=dtype, low_cpu_mem_usage=False
        )
        text_encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", variant=_variant(folder / "text_encoder"), dtype=dtype
        )
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{source}: cannot load the model: {exc}") from exc
    return _assemble(
        name=name,
        source=source,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        device=device,
        dtype=dtype,
        weights_files=_weights_in(folder / "unet"),
    )


def _assemble(
    *,
    name: str,
    source: str,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    scheduler_config: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    weights_files: tuple[Path, ...],
) -> LoadedModel:
    kind = _kind_of(int(unet.config["in_channels"]), source)
    for module in (unet, vae, text_encoder):
        _finish(module, device, dtype)
    return LoadedModel(
        name=name,
        source=source,
        kind=kind,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config={k: v for k, v in scheduler_config.items() if not k.startswith("_")},
        device=device,
        dtype=dtype,
        weights_files=weights_files,
    )


def _snapshot(repo_id: str, *, allow_patterns: list[str], what: str) -> Path:
    """Download (or find in the Hugging Face cache when offline) the files of a hub repo; its local folder.

    Raises ModelNotFound when the repo does not exist or, offline, is not in the cache.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = _hub_offline()
    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=allow_patterns,
                ignore_patterns=["*.fp16.*", "*non_ema*", "*.ema.*", "safety_checker/*", "feature_extractor/*"],
                local_files_only=offline,
            )
        )
    except RepositoryNotFoundError as exc:
        raise ModelNotFound(f"{what}: no such model on the Hugging Face hub: {repo_id!r}") from exc
    except LocalEntryNotFoundError as exc:
        reason = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise ModelNotFound(
            f"{what}: {repo_id!r} is not in the local Hugging Face cache and {reason}; download it on a machine "
            "that is online, or give a local diffusers folder or checkpoint file",
        ) from exc
    except HfHubHTTPError as exc:
        raise ModelNotFound(f"{what}: cannot fetch {repo_id!r} from the Hugging Face hub: {exc}") from exc


def _single_file_config(checkpoint: Mapping[str, torch.Tensor], path: Path, config: Path | None) -> Path:
    """A local diffusers folder whose component configs fit the checkpoint. Raises ModelConfigMissing."""
    if config is not None:
        if not (config / "unet" / "config.json").is_file():
            raise ModelConfigMissing(
                f"{path.name}: config {config} is not a diffusers model folder (no unet/config.json)"
            )
        return config
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    try:
        repo_id = str(fetch_diffusers_config(checkpoint)["pretrained_model_name_or_path"])
    except (KeyError, ValueError) as exc:
        raise ModelConfigMissing(f"{path.name}: the checkpoint's architecture is not recognised ({exc})") from exc
    try:
        return _snapshot(repo_id, allow_patterns=["*.json", "*.txt"], what=path.name)
    except ModelNotFound as exc:
        reason = "HF_HUB_OFFLINE is set" if _hub_offline() else "the hub cannot be reached"
        raise ModelConfigMissing(
            f"{path.name}: the configs of its architecture ({repo_id}) are not in the local Hugging Face cache and "
            f"{reason}; pass config=<a local diffusers folder of the same architecture> (for an SD 1.5 checkpoint, "
            "any SD 1.5 diffusers folder; the tiny models' folders fit checkpoints exported from them)",
        ) from exc


def _load_single_file(
    path: Path, name: str, device: torch.device, dtype: torch.dtype, config: Path | None
) -> LoadedModel:
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm, load_single_file_checkpoint
    from transformers import CLIPTextModel, CLIPTokenizer

    UNet2DConditionModel, AutoencoderKL = _diffusers_models()

    try:
        checkpoint = load_single_file_checkpoint(str(path))
    except Exception as exc:  # a truncated or foreign file fails in many ways (safetensors, pickle, zip)
        raise ModelError(f"{path}: cannot read the checkpoint: {exc}") from exc
    first_conv = checkpoint.get(_LDM_UNET + "input_blocks.0.0.weight")
    if first_conv is None:
        raise ModelError(f"{path}: not a Stable Diffusion checkpoint in the original layout (no {_LDM_UNET}*)")
    in_channels = int(first_conv.shape[1])
    _kind_of(in_channels, str(path))
    folder = _single_file_config(checkpoint, path, config)
    try:
        # The config folder's UNet may be another kind of the same architecture: the checkpoint decides in_channels.
        unet = UNet2DConditionModel.from_single_file(
            checkpoint,
            config=str(folder),
            subfolder="unet",
            in_channels=in_channels,
            local_files_only=True,
        )
        vae = AutoencoderKL.from_single_file(checkpoint, config=str(folder), subfolder="vae", local_files_only=True)
        text_encoder = create_diffusers_clip_model_from_ldm(
            CLIPTextModel,
            checkpoint,
            subfolder="text_encoder",
            config=str(folder),
            local_files_only=True,
        )
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"{path}: cannot load the checkpoint with the configs of {folder}: {exc}") from exc
    return _assemble(
        name=name,
        source=str(path),
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        device=device,
        dtype=dtype,
        weights_files=(path,),
    )


def _local_candidates(name: str, models_dir: Path | None) -> Iterator[Path]:
    yield Path(name).expanduser()
    if models_dir is not None:
        yield models_dir / name
        for suffix in (".safetensors", ".ckpt"):
            yield models_dir / f"{name}{suffix}"


def load_model(
    path_or_id: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    tiny_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a model by name, ready to render on `device` (default `pick_device()`) in `dtype` (`pick_dtype`).

    `path_or_id` is, in the order tried: `tiny` / `tiny-inpaint` / `tiny-edit` (built on first use under
    `tiny_dir`, default `default_models_dir()`); a diffusers folder or checkpoint file; a name in `models_dir`
    (with or without `.safetensors` / `.ckpt`); a hub id `org/name`. `config` is the local diffusers folder whose
    configs describe a single-file checkpoint (needed offline).

    Raises ModelNotFound (no such model, or a hub id offline and not cached), ModelConfigMissing (a checkpoint
    whose configs cannot be resolved offline), ModelError (anything else that makes the model unusable).
    """
    name = os.fspath(path_or_id)
    target_device = pick_device(device)
    target_dtype = dtype or pick_dtype(target_device)
    config_path = Path(config).expanduser() if config is not None else None
    if name in TINY_MODEL_NAMES:
        folder = build_tiny_model(Path(tiny_dir or default_models_dir()) / name, kind=TINY_MODEL_NAMES[name])
        return _load_folder(folder, name, target_device, target_dtype)
    searched = Path(models_dir).expanduser() if models_dir is not None else None
    for candidate in _local_candidates(name, searched):
        if candidate.is_dir():
            return _load_folder(candidate, candidate.name, target_device, target_dtype)
        if candidate.is_file():
            if candidate.suffix.lower() not in _CHECKPOINT_SUFFIXES:
                raise ModelError(f"{candidate}: not a checkpoint file (expected one of {_CHECKPOINT_SUFFIXES})")
            return _load_single_file(candidate, candidate.stem, target_device, target_dtype, config_path)
    if _HUB_ID_RE.match(name) and not name.startswith((".", "/", "~")):
        folder = _snapshot(
            name,
            allow_patterns=["*.json", "*.txt", "unet/*.safetensors", "vae/*.safetensors", "text_encoder/*.safetensors"],
            what=name,
        )
        return _load_folder(folder, name, target_device, target_dtype)
    where = f" or in {searched}" if searched is not None else ""
    raise ModelNotFound(
        f"unknown model {name!r}: not one of {sorted(TINY_MODEL_NAMES)}, no such folder or checkpoint file{where}, "
        "and not a hub id (org/name)"
    )


# ----------------------------------------------------------------------------------------------------------------
# Keeping models loaded across jobs


class ModelCache:
    """Loaded models kept across jobs, at most `max_bytes` of weights in all, least recently used evicted first.

    `get(name)` returns the cached model or loads it with `loader` (default: `load_model` with its defaults).
    Room is made before the load, with the size the model had when last loaded or else the largest size seen (a
    farm's models mostly share one architecture), so the old and the new weights do not meet on the GPU; and after
    it, with the real size. A model larger than `max_bytes` on its own is still loaded and kept, alone.
    Thread-safe: one lock serialises lookups and loads, so two jobs asking for the same model load it once.
    """

    def __init__(self, max_bytes: int, loader: Callable[[str], LoadedModel] | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.max_bytes = max_bytes
        self._loader: Callable[[str], LoadedModel] = loader or load_model
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._known_sizes: dict[str, int] = {}  # bytes of every model loaded so far, cached or not
        self._lock = threading.RLock()

    def get(self, name: str) -> LoadedModel:
        """The model called `name`, loaded on a miss. Raises what the loader raises (the models evicted to make
        room for it stay evicted)."""
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                self._models.move_to_end(name)
                return model
            expected = self._known_sizes.get(name, max(self._known_sizes.values(), default=0))
            self._evict_until_fits(expected)
            model = self._loader(name)
            size = model.memory_bytes
            self._known_sizes[name] = size
            self._evict_until_fits(size)
            self._models[name] = model
            self._sizes[name] = size
            return model

    def _evict_until_fits(self, incoming: int) -> None:
        evicted = False
        while self._models and self.total_bytes + incoming > self.max_bytes:
            old_name, _ = self._models.popitem(last=False)
            self._sizes.pop(old_name, None)
            logger.info("model cache: evicted %s to make room", old_name)
            evicted = True
        if evicted:
            # The evicted modules are unreachable once the caller drops them; collect now so their GPU memory is
            # really free before the new model grows into it.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def names(self) -> list[str]:
        """Cached model names, least recently used first."""
        with self._lock:
            return list(self._models)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def evict(self, name: str) -> bool:
        """Drop one model; False when it was not cached."""
        with self._lock:
            self._sizes.pop(name, None)
            return self._models.pop(name, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self._sizes.clear()
