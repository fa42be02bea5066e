"""One embedding file loaded with torch: its vectors, name, hash and the metadata the listing shows.

Formats and rules: docs/engine.md "Textual-inversion embeddings". torch files are loaded with
`torch.load(weights_only=True)` (no code from the file runs), which also accepts the `ParameterDict` that older
training code saved; safetensors with the safetensors package; images through `shared/embeddings/images.py`. The
layout rules are `shared/embeddings/layout.py`, the same the scheduler's torch-free reader applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from shared.embeddings.folder import (
    IMAGE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    TORCH_SUFFIXES,
    embedding_name,
    file_sha256,
)
from shared.embeddings.images import read_image_embedding
from shared.embeddings.layout import EmbeddingFormatError, Layout, read_layout
from shared.embeddings.reading import embedding_listing_entry, image_name, plain_value

__all__ = ["SHORT_HASH_CHARS", "Embedding", "TorchOps", "load_embedding_file"]

SHORT_HASH_CHARS: Final = 12  # `TI hashes` shows the first 12 hex digits of the file's sha256


class TorchOps:
    """`TensorOps` for what torch.load and safetensors return (a `Parameter` is a tensor but not a plain one)."""

    def is_tensor(self, value: object) -> bool:
        return isinstance(value, torch.Tensor)

    def is_plain_tensor(self, value: object) -> bool:
        return type(value) is torch.Tensor

    def shape(self, value: Any) -> tuple[int, ...]:
        return tuple(int(n) for n in value.shape)


class _ImageOps(TorchOps):
    """An image's JSON document holds numpy arrays where the reference builds plain tensors."""

    def is_tensor(self, value: object) -> bool:
        return isinstance(value, np.ndarray)

    def is_plain_tensor(self, value: object) -> bool:
        return isinstance(value, np.ndarray)


@dataclass(frozen=True, eq=False)
class Embedding:
    """A loaded embedding. `vec` is `(vectors, width)` float32 on the CPU: the vectors that replace the name's
    tokens at the token-embedding layer (for SDXL, `clip_l` and `clip_g` side by side; `parts` holds each).
    `width` is what the reference calls `shape`; `hash` the file's sha256."""

    name: str
    vec: torch.Tensor
    width: int
    vectors: int
    filename: Path
    hash: str
    step: Any = None
    sd_checkpoint: Any = None
    sd_checkpoint_name: Any = None
    parts: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @property
    def shape(self) -> int:
        """The reference's name for the width."""
        return self.width

    @property
    def shorthash(self) -> str:
        return self.hash[:SHORT_HASH_CHARS]

    def listing_entry(self) -> dict[str, Any]:
        return embedding_listing_entry(self.step, self.sd_checkpoint, self.sd_checkpoint_name, self.width, self.vectors)


def _as_tensor(value: Any) -> torch.Tensor:
    tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
    return tensor.detach().to(device="cpu", dtype=torch.float32)


def _load_torch(path: Path) -> Any:
    with torch.serialization.safe_globals([torch.nn.ParameterDict]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path, device="cpu")


def _embedding(name: str, path: Path, layout: Layout[Any]) -> Embedding:
    parts = {key: _as_tensor(value) for key, value in layout.tensors.items()}
    if layout.kind == "sdxl":
        vec = torch.cat([parts["clip_l"], parts["clip_g"]], dim=-1)
    else:
        vec = parts.pop("")
        if layout.one_dimensional:
            vec = vec.unsqueeze(0)
    return Embedding(
        name=name,
        vec=vec,
        width=layout.width,
        vectors=layout.vectors,
        filename=path,
        hash=file_sha256(path),
        step=plain_value(layout.step),
        sd_checkpoint=plain_value(layout.sd_checkpoint),
        sd_checkpoint_name=plain_value(layout.sd_checkpoint_name),
        parts=parts,
    )


def load_embedding_file(path: Path) -> Embedding | None:
    """The embedding in `path`, or None for an image that carries none (a preview picture). Raises
    EmbeddingFormatError, ValueError, OSError or torch's unpickling error for a file that is not a usable one."""
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return _embedding(embedding_name(path), path, read_layout(_load_torch(path), TorchOps()))
    if suffix == SAFETENSORS_SUFFIX:
        return _embedding(embedding_name(path), path, read_layout(_load_safetensors(path), TorchOps()))
    if suffix in IMAGE_SUFFIXES:
        document = read_image_embedding(path)
        if document is None:
            return None
        return _embedding(image_name(document, path), path, read_layout(document, _ImageOps()))
    raise EmbeddingFormatError(f"{suffix} is not an embedding file extension")
