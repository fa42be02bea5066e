"""Which of the reference's embedding layouts a file's content holds (docs/engine.md "Textual-inversion embeddings").

Written once and generic over what a tensor is, so that the worker (torch tensors) and the scheduler (shapes read
without torch, `shared/embeddings/reading.py`) decide with the same rules and always agree. The rules, in order:

1. a mapping with `string_to_param` (the webui's own training output): that entry holds exactly one tensor
   `(vectors, width)` (a `ParameterDict` counts by its parameters);
2. a plain dict with `clip_l` and `clip_g` (SDXL): width = the sum of both widths, vectors = the rows of `clip_g`;
3. a plain dict whose first value is a plain tensor (diffusers / kohya, e.g. `{"<tok>": (D,)}`, `emb_params`): it
   must be the only entry; a 1-D tensor is one vector; the key is ignored.

Anything else is not an embedding. `step`, `sd_checkpoint` and `sd_checkpoint_name` are read from the mapping when
present (the reference's listing shows them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

__all__ = ["MAX_VECTORS", "EmbeddingFormatError", "Layout", "TensorOps", "read_layout"]

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

MAX_VECTORS = 75  # tokens of one prompt chunk: an embedding longer than this can never be placed (proposal P5)

LayoutKind = Literal["string_to_param", "sdxl", "single_tensor"]


class EmbeddingFormatError(ValueError):
    """The file holds no embedding in a layout the reference accepts (the message says why)."""


class TensorOps(Protocol[T_contra]):
    """What the rules need to know about a value: whether it is a tensor, a plain one (not a `Parameter`), and
    its shape."""

    def is_tensor(self, value: object) -> bool: ...

    def is_plain_tensor(self, value: object) -> bool: ...

    def shape(self, value: T_contra) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class Layout(Generic[T]):
    """An embedding as the rules found it. `tensors` is `{"": tensor}`, or `{"clip_l": …, "clip_g": …}` for SDXL;
    `width` is what the reference calls `shape`; `one_dimensional` marks a single-tensor file holding one `(D,)`
    vector."""

    kind: LayoutKind
    tensors: Mapping[str, T]
    width: int
    vectors: int
    step: Any = None
    sd_checkpoint: Any = None
    sd_checkpoint_name: Any = None
    one_dimensional: bool = False


def _matrix_shape(ops: TensorOps[T], value: object, what: str) -> tuple[int, int]:
    if not ops.is_tensor(value):
        raise EmbeddingFormatError(f"{what} is not a tensor")
    shape = ops.shape(value)  # type: ignore[arg-type]
    if len(shape) != 2:
        raise EmbeddingFormatError(f"{what} has shape {list(shape)}, not (vectors, width)")
    return shape[0], shape[1]


def _metadata(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: data.get(key) for key in ("step", "sd_checkpoint", "sd_checkpoint_name")}


def read_layout(data: object, ops: TensorOps[T]) -> Layout[T]:
    """The layout of a file's loaded content `data`. Raises EmbeddingFormatError when it is none of them."""
    if isinstance(data, Mapping) and "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # a ParameterDict (older training code) holds them there
        if not isinstance(params, Mapping) or len(params) != 1:
            count = len(params) if isinstance(params, Mapping) else "no"
            raise EmbeddingFormatError(f"string_to_param holds {count} terms; an embedding file holds exactly one")
        tensor = next(iter(params.values()))
        vectors, width = _matrix_shape(ops, tensor, "string_to_param's entry")
        return Layout("string_to_param", {"": tensor}, width, vectors, **_metadata(data))
    if type(data) is dict and "clip_g" in data and "clip_l" in data:
        rows_g, width_g = _matrix_shape(ops, data["clip_g"], "clip_g")
        rows_l, width_l = _matrix_shape(ops, data["clip_l"], "clip_l")
        if rows_g != rows_l:
            raise EmbeddingFormatError(f"clip_g has {rows_g} vectors and clip_l {rows_l}; they must match")
        tensors = {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
        return Layout("sdxl", tensors, width_l + width_g, rows_g, **_metadata(data))
    if type(data) is dict and data and ops.is_plain_tensor(next(iter(data.values()))):
        if len(data) != 1:
            raise EmbeddingFormatError(f"the file holds {len(data)} tensors; a single-tensor embedding holds one")
        tensor = next(iter(data.values()))
        shape = ops.shape(tensor)
        if len(shape) == 1:
            return Layout("single_tensor", {"": tensor}, shape[0], 1, **_metadata(data), one_dimensional=True)
        vectors, width = _matrix_shape(ops, tensor, "the tensor")
        return Layout("single_tensor", {"": tensor}, width, vectors, **_metadata(data))
    raise EmbeddingFormatError(
        "not an embedding: neither string_to_param (webui), clip_l and clip_g (SDXL) nor a single tensor (diffusers)"
    )
