"""External VAE files (prompts-and-models.md §6; docs/engine.md "VAE files"): a `.safetensors`/`.pt`/`.ckpt` holding an
autoencoder's weights in the LDM key layout, swapped in for the model's own VAE for one job.

The file's tensors (a top-level `state_dict` unwrapped; `loss*` and `model_ema.*` dropped) are converted to
diffusers' names by diffusers' single-file conversion and loaded **strictly** into a copy of the model's
AutoencoderKL: a missing, extra or misshapen tensor fails the job (`vae_file_invalid`). The checkpoint's own VAE is
put back when the job ends, without reloading anything. The infotext then names the file (`VAE`) and the first 10 hex
digits of its sha256 (`VAE hash`), hashed per file (not the reference's one shared cache entry).
"""

from __future__ import annotations

import copy
import hashlib
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch

from shared.errors import PermanentError
from worker.engine.models import LoadedModel

__all__ = ["VAE_FILE_SUFFIXES", "VaeFile", "VaeFileInvalid", "external_vae", "load_vae_weights", "read_vae_file"]

VAE_FILE_SUFFIXES: Final = (".safetensors", ".pt", ".ckpt")
_HASH_HEX: Final = 10
_CHUNK: Final = 1 << 20
_DROPPED_PREFIXES: Final = ("loss", "model_ema.")


class VaeFileInvalid(PermanentError, default_code="vae_file_invalid"):
    """A VAE file that cannot be read or does not fit the model's autoencoder."""


_hashes: dict[tuple[str, int, int], str] = {}
_hashes_lock = threading.Lock()


def _sha256(path: Path) -> str:
    """The file's sha256, remembered per (path, mtime, size)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _hashes_lock:
        known = _hashes.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    with _hashes_lock:
        _hashes[key] = digest.hexdigest()
    return digest.hexdigest()


@dataclass(frozen=True)
class VaeFile:
    """An external VAE file: `name` is its file name with the extension (the reference's VAE name)."""

    path: Path
    sha256: str

    @classmethod
    def open(cls, path: str | Path) -> VaeFile:
        target = Path(path)
        if target.suffix.lower() not in VAE_FILE_SUFFIXES:
            raise VaeFileInvalid(f"{target.name}: not a VAE file (expected one of {', '.join(VAE_FILE_SUFFIXES)})")
        try:
            return cls(target, _sha256(target))
        except OSError as exc:
            raise VaeFileInvalid(f"{target.name}: cannot read the VAE file: {exc}") from exc

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def short_hash(self) -> str:
        return self.sha256[:_HASH_HEX]


def read_vae_file(path: Path) -> dict[str, torch.Tensor]:
    """The file's autoencoder tensors in LDM names: `state_dict` unwrapped, `loss*` and `model_ema.*` dropped."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, zip and unpickling errors of a broken file all differ
        raise VaeFileInvalid(f"{path.name}: cannot read the VAE file: {exc}") from exc
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise VaeFileInvalid(f"{path.name}: holds no tensors by name")
    return {
        str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor) and not str(k).startswith(_DROPPED_PREFIXES)
    }


def load_vae_weights(model: LoadedModel, vae_file: VaeFile) -> Any:
    """A copy of the model's own AutoencoderKL holding the file's weights (strict: every tensor used, none missing).
    Raises VaeFileInvalid."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ldm = read_vae_file(vae_file.path)
    own = model.vae
    try:
        converted = convert_ldm_vae_checkpoint(ldm, own.config)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise VaeFileInvalid(f"{vae_file.name}: not an autoencoder in the LDM key layout ({exc})") from exc
    if len(converted) != len(ldm):  # every LDM tensor maps to exactly one diffusers tensor
        raise VaeFileInvalid(
            f"{vae_file.name}: {len(ldm) - len(converted)} of its {len(ldm)} tensors are not the LDM autoencoder's"
        )
    replacement = copy.deepcopy(own)
    try:
        replacement.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        raise VaeFileInvalid(f"{vae_file.name}: does not fit {model.name}'s VAE: {exc}") from exc
    return replacement


# The last external VAE loaded for each model (one at a time: a VAE is ~330 MB in fp32).
_loaded: weakref.WeakKeyDictionary[LoadedModel, tuple[VaeFile, Any]] = weakref.WeakKeyDictionary()
_loaded_lock = threading.Lock()


@contextmanager
def external_vae(model: LoadedModel, vae_file: VaeFile | None) -> Iterator[None]:
    """While inside, `model` renders with `vae_file`'s VAE (None: its own) and its infotext names the file; its own
    VAE object is put back on exit, whatever happens."""
    if vae_file is None:
        yield
        return
    with _loaded_lock:
        cached = _loaded.get(model)
    if cached is not None and cached[0] == vae_file:
        replacement = cached[1]
    else:
        replacement = load_vae_weights(model, vae_file)
        with _loaded_lock:
            _loaded[model] = (vae_file, replacement)
    own, own_file = model.vae, model.vae_file
    model.vae, model.vae_file = replacement, vae_file
    try:
        model.ensure_vae_precision()
        yield
    finally:
        model.vae, model.vae_file = own, own_file
