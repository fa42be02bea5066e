"""The header of a `.safetensors` file, read without the safetensors package or torch.

The format: 8 bytes little-endian N, then N bytes of JSON `{name: {"dtype", "shape", "data_offsets"}, ...,
"__metadata__": {str: str}}`, then the raw tensor data (never read here).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Final

from shared.embeddings.torch_pickle import TensorShape

__all__ = ["MAX_HEADER_BYTES", "SafetensorsError", "read_safetensors_header"]

MAX_HEADER_BYTES: Final = 100 * 1024 * 1024  # the format's own limit


class SafetensorsError(ValueError):
    """Not a readable safetensors file."""


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorShape], dict[str, str]]:
    """The file's tensors (name → shape, in the header's order) and its `__metadata__`."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise SafetensorsError("too short for a safetensors file")
        (size,) = struct.unpack("<Q", prefix)
        if size > MAX_HEADER_BYTES:
            raise SafetensorsError(f"header of {size} bytes, over {MAX_HEADER_BYTES}")
        raw = handle.read(size)
    if len(raw) != size:
        raise SafetensorsError("the header is cut short")
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise SafetensorsError(f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorShape] = {}
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise SafetensorsError(f"tensor {name!r} has no valid shape")
        tensors[name] = TensorShape(tuple(shape))
    return tensors, {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
