"""What an embedding file is, read without torch: name, width, vectors and the training metadata the listing shows.

The scheduler answers `GET /sdapi/v1/embeddings` with this (it has no torch); the worker's torch loader
(`worker/engine/embeddings/loading.py`) decides with the same layout rules (`shared/embeddings/layout.py`), and a
test checks that both agree file by file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.embeddings.folder import IMAGE_SUFFIXES, SAFETENSORS_SUFFIX, TORCH_SUFFIXES, embedding_name
from shared.embeddings.images import read_image_embedding
from shared.embeddings.layout import EmbeddingFormatError, Layout, read_layout
from shared.embeddings.safetensors_header import read_safetensors_header
from shared.embeddings.torch_pickle import TensorShape, read_torch_structure

__all__ = ["EmbeddingInfo", "ShapeOps", "embedding_listing_entry", "image_name", "plain_value", "read_embedding_info"]


class ShapeOps:
    """`TensorOps` for shapes read from torch pickles and safetensors headers, and for the numpy arrays of an
    image's JSON document (plain tensors, as the reference builds them)."""

    def is_tensor(self, value: object) -> bool:
        return isinstance(value, TensorShape | np.ndarray)

    def is_plain_tensor(self, value: object) -> bool:
        return isinstance(value, np.ndarray) or (isinstance(value, TensorShape) and not value.parameter)

    def shape(self, value: Any) -> tuple[int, ...]:
        return tuple(int(n) for n in value.shape)


def plain_value(value: object) -> Any:
    """A metadata value as JSON can show it (the reference's files hold ints and strings; anything else is shown
    as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def image_name(document: object, path: Path) -> str:
    """An image embedding's name: the JSON document's `name`, else the file's."""
    name = document.get("name") if isinstance(document, dict) else None
    return name if isinstance(name, str) else embedding_name(path)


@dataclass(frozen=True)
class EmbeddingInfo:
    """One embedding file as the listing shows it; `width` is what the reference calls `shape`."""

    name: str
    path: Path
    width: int
    vectors: int
    step: Any = None
    sd_checkpoint: Any = None
    sd_checkpoint_name: Any = None

    @classmethod
    def of(cls, name: str, path: Path, layout: Layout[Any]) -> EmbeddingInfo:
        return cls(
            name,
            path,
            layout.width,
            layout.vectors,
            plain_value(layout.step),
            plain_value(layout.sd_checkpoint),
            plain_value(layout.sd_checkpoint_name),
        )

    def listing_entry(self) -> dict[str, Any]:
        """The reference's fields for this embedding in `/sdapi/v1/embeddings`."""
        return embedding_listing_entry(self.step, self.sd_checkpoint, self.sd_checkpoint_name, self.width, self.vectors)


def embedding_listing_entry(
    step: Any, sd_checkpoint: Any, sd_checkpoint_name: Any, width: int, vectors: int
) -> dict[str, Any]:
    """The reference's fields of one embedding in `/sdapi/v1/embeddings` (the scheduler's and the worker's)."""
    return {
        "step": step,
        "sd_checkpoint": sd_checkpoint,
        "sd_checkpoint_name": sd_checkpoint_name,
        "shape": width,
        "vectors": vectors,
    }


def read_embedding_info(path: Path) -> EmbeddingInfo | None:
    """The embedding in `path`, or None for an image without one (a preview). Raises EmbeddingFormatError,
    ValueError, `pickle.UnpicklingError` or OSError for a file that cannot be read as an embedding."""
    suffix = path.suffix.lower()
    name = embedding_name(path)
    data: object
    if suffix in TORCH_SUFFIXES:
        data = read_torch_structure(path)
    elif suffix == SAFETENSORS_SUFFIX:
        data = dict(read_safetensors_header(path)[0])
    elif suffix in IMAGE_SUFFIXES:
        data = read_image_embedding(path)
        if data is None:
            return None
        name = image_name(data, path)
    else:
        raise EmbeddingFormatError(f"{suffix} is not an embedding file extension")
    return EmbeddingInfo.of(name, path, read_layout(data, ShapeOps()))
