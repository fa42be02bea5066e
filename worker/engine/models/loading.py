"""Loading a Stable Diffusion model, ready to render with, from one of:

- a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`);
- a single checkpoint file (`.safetensors`, `.ckpt`) in the original (A1111 / LDM) layout. Its component configs
  must come from a local diffusers folder of the same architecture (`config=`), or from the Hugging Face cache
  when the hub is reachable;
- a hub id (`org/name`), downloaded into the Hugging Face cache unless `HF_HUB_OFFLINE` is set;
- the names `tiny`, `tiny-inpaint`, `tiny-edit`: random-weight models built on first use in `tiny_dir`
  (:mod:`worker.engine.models.tiny`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import torch

from worker.engine.diffusers_internals import cast_module
from worker.engine.models.clip_tokenizer import build_clip_tokenizer
from worker.engine.models.loaded import (
    LoadedModel,
    ModelConfigMissing,
    ModelError,
    ModelFamily,
    ModelNotFound,
    diffusers_model_classes,
    kind_of,
)
from worker.engine.models.single_file import (
    BUNDLED_CONFIGS,
    checkpoint_family,
    embedded_configs_folder,
    refuse_v_prediction,
)
from worker.engine.models.tiny import TINY_MODEL_NAMES, TINY_XL_NAMES, build_tiny_model

if TYPE_CHECKING:
    # From their modules, not the package root: diffusers' root hides them from mypy behind dummy classes.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

__all__ = ["LDM_UNET_PREFIX", "load_model", "pick_device", "pick_dtype"]

_CHECKPOINT_SUFFIXES: Final = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_HUB_ID_RE: Final = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: The key prefix of the UNet's weights in a single-file checkpoint of the original (LDM / A1111) layout.
LDM_UNET_PREFIX: Final = "model.diffusion_model."


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


def _hub_offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_CPU_ALIGNMENT: Final = 64  # bytes: what the CPU's vector kernels assume of a tensor's start


def _align_on_cpu(module: torch.nn.Module) -> None:
    """Copy the weights that start off a 64-byte boundary (safetensors maps tensors at any offset) into fresh
    memory. On the CPU the matrix kernels round differently for a misaligned operand, so the same weights loaded
    from a folder and from a single file rendered pixels apart (tests/engine/test_single_files.py)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.numel() and tensor.data_ptr() % _CPU_ALIGNMENT:
            tensor.data = tensor.data.clone()


def _finish(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    if next(module.parameters()).dtype != dtype:
        cast_module(module, dtype)
    module.to(device=device)
    if device.type == "cpu":
        _align_on_cpu(module)
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


def _family_of_folder(folder: Path) -> ModelFamily:
    """SDXL when the folder has a second text encoder; SD 2.x when its text encoder is OpenCLIP's (GELU); else
    SD 1.x."""
    if (folder / "text_encoder_2").is_dir():
        return "sdxl"
    config = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    return "sd2" if config.get("hidden_act") == "gelu" else "sd1"


def _load_folder(folder: Path, name: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    source = str(folder)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / part).is_dir():
            raise ModelError(f"{source}: not a complete diffusers model folder (no {part}/)")
    family = _family_of_folder(folder)
    if family == "sdxl" and not (folder / "tokenizer_2").is_dir():
        raise ModelError(f"{source}: an SDXL folder without tokenizer_2/")
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    UNet2DConditionModel, AutoencoderKL = diffusers_model_classes()
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
        text_encoder_2 = None
        if family == "sdxl":
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder_2", variant=_variant(folder / "text_encoder_2"), dtype=dtype
            )
        tokenizer, tokenizer_2, scheduler_config = _tokenizers_and_scheduler_config(folder, family)
        parts = _Parts(unet, vae, text_encoder, tokenizer, scheduler_config, family, text_encoder_2, tokenizer_2)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{source}: cannot load the model: {exc}") from exc
    return _assemble(name, source, parts, device, dtype, _weights_in(folder / "unet"))


class _Parts(NamedTuple):
    """A model's components as loaded, before they are moved to the device."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    family: ModelFamily = "sd1"
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None


def _tokenizer(folder: Path) -> CLIPTokenizer:
    """The folder's tokenizer; when it has no vocabulary (the configs shipped for single files), the real CLIP
    vocabulary built offline, with the pad token its tokenizer_config.json names."""
    from transformers import CLIPTokenizer

    if (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file():
        return CLIPTokenizer.from_pretrained(folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    return build_clip_tokenizer(str(settings.get("pad_token", "<|endoftext|>")))


def _tokenizers_and_scheduler_config(
    folder: Path, family: ModelFamily
) -> tuple[CLIPTokenizer, CLIPTokenizer | None, dict[str, Any]]:
    """The parts a model takes from a diffusers folder as they are, whatever holds its weights."""
    tokenizer = _tokenizer(folder / "tokenizer")
    tokenizer_2 = _tokenizer(folder / "tokenizer_2") if family == "sdxl" else None
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    return tokenizer, tokenizer_2, config


def _assemble(
    name: str, source: str, parts: _Parts, device: torch.device, dtype: torch.dtype, weights_files: tuple[Path, ...]
) -> LoadedModel:
    kind = kind_of(int(parts.unet.config["in_channels"]), source)
    if parts.family == "sdxl" and kind == "edit":
        raise ModelError(f"{source}: SDXL edit (InstructPix2Pix) models are not supported", code="model_unsupported")
    modules: list[torch.nn.Module] = [parts.unet, parts.vae, parts.text_encoder]
    if parts.text_encoder_2 is not None:
        modules.append(parts.text_encoder_2)
    for module in modules:
        _finish(module, device, dtype)
    model = LoadedModel(
        name=name,
        source=source,
        kind=kind,
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        scheduler_config={k: v for k, v in parts.scheduler_config.items() if not k.startswith("_")},
        device=device,
        dtype=dtype,
        weights_files=weights_files,
        family=parts.family,
        text_encoder_2=parts.text_encoder_2,
        tokenizer_2=parts.tokenizer_2,
    )
    model.ensure_vae_precision()  # SDXL's VAE runs in fp32 from the start (proposal P13)
    return model


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


def _single_file_config(
    checkpoint: Mapping[str, torch.Tensor], path: Path, config: Path | None, family: ModelFamily
) -> tuple[Path, Path | None]:
    """A local diffusers folder whose component configs fit the checkpoint, and the temporary folder to remove
    afterwards (None when there is none): `config=`, else the configs the file carries, else the shipped ones of
    its family (`worker.engine.models.single_file`). Raises ModelConfigMissing."""
    if config is not None:
        if not (config / "unet" / "config.json").is_file():
            raise ModelConfigMissing(
                f"{path.name}: config {config} is not a diffusers model folder (no unet/config.json)"
            )
        return config, None
    embedded = embedded_configs_folder(path)
    if embedded is not None:
        return embedded, embedded
    return BUNDLED_CONFIGS / family, None


def _check_fits_shipped_configs(first_conv: torch.Tensor, folder: Path, path: Path, family: ModelFamily) -> None:
    """Refuse, before building a full-size UNet, a checkpoint whose first UNet layer is not the published model's
    width (a model of its own layer sizes needs its own configs). Raises ModelConfigMissing."""
    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    expected = int(unet_config["block_out_channels"][0])
    if int(first_conv.shape[0]) != expected:
        raise ModelConfigMissing(
            f"{path.name}: its UNet's first layer has {int(first_conv.shape[0])} channels, not the {expected} of the "
            f"shipped {family} configs (a model with its own layer sizes); pass config=<a local diffusers folder of "
            "its architecture>"
        )


def _load_single_file(
    path: Path, name: str, device: torch.device, dtype: torch.dtype, config: Path | None
) -> LoadedModel:
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm, load_single_file_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    UNet2DConditionModel, AutoencoderKL = diffusers_model_classes()

    try:
        checkpoint = load_single_file_checkpoint(str(path))
    except Exception as exc:  # a truncated or foreign file fails in many ways (safetensors, pickle, zip)
        raise ModelError(f"{path}: cannot read the checkpoint: {exc}") from exc
    first_conv = checkpoint.get(LDM_UNET_PREFIX + "input_blocks.0.0.weight")
    if first_conv is None:
        raise ModelError(f"{path}: not a Stable Diffusion checkpoint in the original layout (no {LDM_UNET_PREFIX}*)")
    in_channels = int(first_conv.shape[1])
    kind_of(in_channels, str(path))
    family = checkpoint_family(checkpoint, path.name)
    if family == "sd2":
        refuse_v_prediction(path)
    folder, temporary = _single_file_config(checkpoint, path, config, family)
    if folder == BUNDLED_CONFIGS / family:
        _check_fits_shipped_configs(first_conv, folder, path, family)
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
        text_encoder_2 = None
        if family == "sdxl":
            text_encoder_2 = create_diffusers_clip_model_from_ldm(
                CLIPTextModelWithProjection,
                checkpoint,
                subfolder="text_encoder_2",
                config=str(folder),
                local_files_only=True,
            )
        tokenizer, tokenizer_2, scheduler_config = _tokenizers_and_scheduler_config(folder, family)
        parts = _Parts(unet, vae, text_encoder, tokenizer, scheduler_config, family, text_encoder_2, tokenizer_2)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot load the checkpoint with the configs of {folder}: {first_line}") from exc
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    return _assemble(name, str(path), parts, device, dtype, (path,))


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

    `path_or_id` is, in the order tried: `tiny` / `tiny-inpaint` / `tiny-edit` / `tiny-xl` / `tiny-xl-inpaint`
    (built on first use under `tiny_dir`, which the caller chooses: the farm's is
    `worker.model_cache.default_models_dir()`); a diffusers folder or checkpoint file; a name in `models_dir` (with
    or without `.safetensors` / `.ckpt`); a hub id `org/name`. `config` is a local diffusers folder whose configs
    describe a single-file checkpoint; without it a checkpoint's configs come from its own metadata or the configs
    shipped for SD 1.x / 2.x / SDXL (`worker.engine.models.single_file`), offline.

    Raises ModelNotFound (no such model, or a hub id offline and not cached), ModelConfigMissing (a checkpoint
    whose configs cannot be resolved offline), ModelError (anything else that makes the model unusable);
    ValueError for a tiny name without `tiny_dir`.
    """
    name = os.fspath(path_or_id)
    target_device = pick_device(device)
    target_dtype = dtype or pick_dtype(target_device)
    config_path = Path(config).expanduser() if config is not None else None
    if name in TINY_MODEL_NAMES:
        if tiny_dir is None:
            raise ValueError(f"{name!r} is built on first use: pass tiny_dir, the folder to build it in")
        folder = build_tiny_model(Path(tiny_dir) / name, kind=TINY_MODEL_NAMES[name], sdxl=name in TINY_XL_NAMES)
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
            allow_patterns=[
                "*.json",
                "*.txt",
                "unet/*.safetensors",
                "vae/*.safetensors",
                "text_encoder/*.safetensors",
                "text_encoder_2/*.safetensors",
            ],
            what=name,
        )
        return _load_folder(folder, name, target_device, target_dtype)
    where = f" or in {searched}" if searched is not None else ""
    raise ModelNotFound(
        f"unknown model {name!r}: not one of {sorted(TINY_MODEL_NAMES)}, no such folder or checkpoint file{where}, "
        "and not a hub id (org/name)"
    )
