"""Models built locally with random weights: the tiny ones the tests and the demo render with on a CPU in well
under a second (`tiny`, `tiny-inpaint`, `tiny-edit`, and the SDXL-shaped `tiny-xl`, `tiny-xl-inpaint`), and SD 1.5-
and SDXL-shaped ones with the real layer sizes for benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import torch

from worker.engine.models.loaded import (
    CLIP_MAX_LENGTH,
    KIND_IN_CHANNELS,
    ModelError,
    ModelKind,
    diffusers_model_classes,
)

if TYPE_CHECKING:
    from transformers import CLIPTextConfig

__all__ = [
    "SD1_SCHEDULER_CONFIG",
    "TINY_MARKER",
    "TINY_MODEL_NAMES",
    "TINY_XL_NAMES",
    "build_sd15_shaped_model",
    "build_sdxl_shaped_model",
    "build_tiny_model",
]

TINY_MODEL_NAMES: Final[Mapping[str, ModelKind]] = {
    "tiny": "img2img",
    "tiny-inpaint": "inpaint",
    "tiny-edit": "edit",
    "tiny-xl": "img2img",
    "tiny-xl-inpaint": "inpaint",
}
#: The tiny models with SDXL's architecture (two text encoders, vector conditioning).
TINY_XL_NAMES: Final = frozenset({"tiny-xl", "tiny-xl-inpaint"})

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
SDXL_LATENT_SCALING_FACTOR: Final = 0.13025  # the SDXL VAE's

TINY_MARKER: Final = ".renderfarm-model.json"  # written last, so its presence means "completely built"
_BUILD_FORMAT: Final = 1  # bump when the built layout or the architecture changes, so old builds are replaced


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
    """Layer sizes of a Stable Diffusion model to build (UNet in_channels comes from the kind). `text_2` is SDXL's
    second text encoder (OpenCLIP bigG-shaped, with its projection); None for SD 1.x."""

    name: str
    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    text: Mapping[str, Any]
    vocab_size: int
    text_2: Mapping[str, Any] | None = None

    @property
    def is_sdxl(self) -> bool:
        return self.text_2 is not None


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

# Small enough to render 64×64 in ~0.1 s on a CPU, yet with every part of the real thing: SD 1.5 with its sizes cut
# down. A VAE with four blocks (the real 8× downscale; fewer blocks would make the UNet run on a larger latent),
# cross-attention, a CLIP encoder.
_TINY = _Architecture(
    name="tiny",
    unet={
        **_SD15.unet,
        "sample_size": 32,
        "layers_per_block": 1,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
    },
    vae={
        **_SD15.vae,
        "sample_size": 256,
        "layers_per_block": 1,
        "block_out_channels": (8, 16, 32, 32),
        "norm_num_groups": 8,
    },
    text={
        **_SD15.text,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "projection_dim": 32,
    },
    vocab_size=514,
)


def _published_config(family: str, part: str) -> dict[str, Any]:
    """A config shipped for single-file checkpoints (`configs/<family>/<part>/config.json`), without the
    `_`-prefixed metadata and the special-token ids the builder sets itself."""
    path = Path(__file__).parent / "configs" / family / part / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    dropped = {"architectures", "model_type", "bos_token_id", "eos_token_id", "pad_token_id", "vocab_size"}
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in dropped}


def _sdxl_shaped() -> _Architecture:
    """SDXL base's layer sizes (2.6B-parameter UNet; its published configs, as shipped in `configs/sdxl`)."""
    unet = {k: v for k, v in _published_config("sdxl", "unet").items() if k != "in_channels"}
    return _Architecture(
        name="sdxl-shaped",
        unet=unet,
        vae=_published_config("sdxl", "vae"),
        text=_published_config("sdxl", "text_encoder"),
        text_2=_published_config("sdxl", "text_encoder_2"),
        vocab_size=49408,
    )


# SDXL with its sizes cut down, as small as `_TINY`: the real UNet's block layout (no attention at the top level,
# linear projections, the added time/text embedding), two CLIP encoders of different widths (a single-file loader
# tells them apart by width), the second with a projection whose output is the pooled vector.
_TINY_XL_POOLED = 48
_TINY_XL_TIME_CHANNELS = 8  # per size number; SDXL has 256
_TINY_XL = _Architecture(
    name="tiny-xl",
    unet={
        **_TINY.unet,
        "attention_head_dim": (2, 4),
        "cross_attention_dim": 32 + 64,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": _TINY_XL_TIME_CHANNELS,
        "projection_class_embeddings_input_dim": _TINY_XL_POOLED + 6 * _TINY_XL_TIME_CHANNELS,
    },
    vae={**_TINY.vae, "scaling_factor": SDXL_LATENT_SCALING_FACTOR, "force_upcast": True},
    text={**_TINY.text, "num_hidden_layers": 3},
    text_2={
        **_TINY.text,
        "hidden_size": 64,
        "intermediate_size": 80,
        "num_hidden_layers": 3,
        "projection_dim": _TINY_XL_POOLED,
        "hidden_act": "gelu",
    },
    vocab_size=_TINY.vocab_size,
)

# The diffusers pipeline whose save_pretrained layout (model_index.json) a built model of each kind has.
_PIPELINE_CLASS: Final[Mapping[ModelKind, str]] = {
    "img2img": "StableDiffusionPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "edit": "StableDiffusionInstructPix2PixPipeline",
}
_SDXL_PIPELINE_CLASS: Final[Mapping[ModelKind, str]] = {
    "img2img": "StableDiffusionXLImg2ImgPipeline",
    "inpaint": "StableDiffusionXLInpaintPipeline",
}


def _text_config(arch: _Architecture, text: Mapping[str, Any] | None = None) -> CLIPTextConfig:
    # The special ids must be those of the generated vocabulary (its last two), not CLIP's defaults: the encoder
    # finds the pooled (EOS) position by this id.
    from transformers import CLIPTextConfig

    settings = {"max_position_embeddings": CLIP_MAX_LENGTH, **(text if text is not None else arch.text)}
    return CLIPTextConfig(
        vocab_size=arch.vocab_size,
        bos_token_id=arch.vocab_size - 2,
        eos_token_id=arch.vocab_size - 1,
        pad_token_id=arch.vocab_size - 1,
        **settings,
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

    UNet2DConditionModel, AutoencoderKL = diffusers_model_classes()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_unet_config(arch, kind))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**arch.vae)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(arch))
    vocab = _byte_level_vocab(arch.vocab_size)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)
    if arch.is_sdxl:
        _write_sdxl_model(folder, arch, kind, seed, unet, vae, text_encoder, tokenizer, vocab)
        return
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


def _write_sdxl_model(
    folder: Path,
    arch: _Architecture,
    kind: ModelKind,
    seed: int,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    vocab: dict[str, int],
) -> None:
    """The SDXL part of `_write_model`: the second text encoder (with projection) and tokenizer (OpenCLIP pads with
    `!`, id 0 of the byte-level vocabulary too), saved as diffusers' SDXL img2img / inpaint pipeline would."""
    import diffusers
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    if kind not in _SDXL_PIPELINE_CLASS:
        raise ValueError(f"SDXL models are built as {sorted(_SDXL_PIPELINE_CLASS)}, not {kind!r}")
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(arch, arch.text_2))
    tokenizer_2 = CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=CLIP_MAX_LENGTH)  # noqa: S106
    scheduler = EulerDiscreteScheduler(
        **{
            k: v
            for k, v in SD1_SCHEDULER_CONFIG.items()
            if k not in ("clip_sample", "set_alpha_to_one", "skip_prk_steps")
        }
    )
    pipeline_class: Any = getattr(diffusers, _SDXL_PIPELINE_CLASS[kind])
    pipeline = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_json = {**json.loads(scheduler_file.read_text(encoding="utf-8")), **SD1_SCHEDULER_CONFIG}
    scheduler_file.write_text(json.dumps(scheduler_json, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for part in ("tokenizer", "tokenizer_2"):
        (folder / part / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / part / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


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


def build_tiny_model(
    path: str | os.PathLike[str], kind: ModelKind = "img2img", seed: int = 0, *, sdxl: bool = False
) -> Path:
    """Build the tiny random-weight model of `kind` as a diffusers folder at `path`, and return its path: SD 1.x-
    shaped, or SDXL-shaped with `sdxl` (img2img and inpaint only).

    Deterministic: the same kind and seed give byte-identical weights. Idempotent: a folder already built with the
    same kind and seed is kept; one built with another kind or seed is replaced. Takes about a second.
    Raises ValueError for an unknown kind, ModelError when `path` holds something other than a built model.
    """
    return _build(path, _TINY_XL if sdxl else _TINY, kind, seed)


def build_sd15_shaped_model(path: str | os.PathLike[str], kind: ModelKind = "img2img", seed: int = 0) -> Path:
    """Build a random-weight model with SD 1.5's layer sizes (860M-parameter UNet, ~4 GB in fp32) at `path`.

    For benchmarks: it costs what SD 1.5 costs to run, renders noise, and needs no download. Takes a minute or
    more. Same idempotence and raise conditions as `build_tiny_model`.
    """
    return _build(path, _SD15, kind, seed)


def build_sdxl_shaped_model(path: str | os.PathLike[str], kind: ModelKind = "img2img", seed: int = 0) -> Path:
    """Build a random-weight model with SDXL base's layer sizes (2.6B-parameter UNet, two text encoders; ~14 GB in
    fp32) at `path`, for benchmarks, like `build_sd15_shaped_model` (img2img and inpaint only). Takes minutes."""
    return _build(path, _sdxl_shaped(), kind, seed)
