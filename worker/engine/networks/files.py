"""Network files: their tensors, safetensors metadata and short hash (prompts-and-models.md §3.3, §3.7).

A file is read once and kept (a few, least recently used first out) while its path, size and modification time stay
the same, so consecutive jobs with the same LoRAs do not reread them.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import torch

from shared.models.hashes import addnet_hash
from worker.engine.networks.errors import NetworkUnreadable

__all__ = ["NETWORK_SUFFIXES", "NetworkFile", "read_network_file", "safetensors_metadata"]

NETWORK_SUFFIXES: Final = (".safetensors", ".pt", ".ckpt")
SHORT_HASH_HEX: Final = 12  # `Lora hashes` carries 12 hex digits
_KEPT_FILES: Final = 8

FileIdentity = tuple[str, int, int]  # resolved path, size, mtime_ns


@dataclass(frozen=True, eq=False)
class NetworkFile:
    """A network file's tensors (on the CPU, as stored), metadata (safetensors only) and short hash."""

    path: Path
    identity: FileIdentity
    tensors: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str] = field(repr=False)
    short_hash: str


def identity_of(path: Path) -> FileIdentity:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's header ({} when there is none or the file is no safetensors)."""
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors and torch raise many types for a broken file
        raise NetworkUnreadable(f"{path.name}: cannot read the network file ({error})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise NetworkUnreadable(f"{path.name}: not a dictionary of tensors")
    return {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


_files: OrderedDict[FileIdentity, NetworkFile] = OrderedDict()
_files_lock = threading.Lock()


def read_network_file(path: Path) -> NetworkFile:
    """The network file at `path`, from the cache while it is unchanged. Raises NetworkUnreadable."""
    try:
        identity = identity_of(path)
    except OSError as error:
        raise NetworkUnreadable(f"{path.name}: {error.strerror or error}") from None
    with _files_lock:
        cached = _files.get(identity)
        if cached is not None:
            _files.move_to_end(identity)
            return cached
    metadata = safetensors_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    tensors = _read_tensors(path)
    full_hash = metadata.get("sshs_model_hash") or addnet_hash(path)
    loaded = NetworkFile(path, identity, tensors, metadata, full_hash[:SHORT_HASH_HEX])
    with _files_lock:
        _files[identity] = loaded
        while len(_files) > _KEPT_FILES:
            _files.popitem(last=False)
    return loaded
