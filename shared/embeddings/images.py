"""Embeddings carried by images (`.png .webp .jxl .avif`), decoded as docs/engine.md "Textual-inversion embeddings"
describes; numpy and PIL only, so the scheduler reads them too.

Two carriers, tried in this order:

1. a text chunk `sd-ti-embedding` holding base64 of a JSON document;
2. data hidden in the pixels: the picture has two data blocks left and right of the visible image, each separated
   from it by a black column. Inside the black border that frames the whole, the pixels' low four bits carry the
   data: the left block the low nibble of each byte, the right block the high nibble, both XOR-ed with a stream of
   nibbles from a linear congruential generator (x ← (1664525·x + 1013904223) mod 2³², starting from 0; each value
   mod 255, its low four bits). Read row by row, pixel by pixel, R G B, the bytes are a zlib stream of the JSON
   document, followed by filler.

In the JSON document a tensor is `{"TORCHTENSOR": nested lists of numbers}`; here it becomes a float64 numpy array
(the reference builds its tensor from the same array). An image with neither carrier is a preview picture, not an
embedding (`read_image_embedding` returns None).
"""

from __future__ import annotations

import base64
import json
import threading
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["TENSOR_KEY", "TEXT_CHUNK", "decode_embedding_json", "extract_hidden_data", "read_image_embedding"]

TEXT_CHUNK: Final = "sd-ti-embedding"
TENSOR_KEY: Final = "TORCHTENSOR"
LCG_A: Final = 1664525
LCG_C: Final = 1013904223
LCG_M: Final = 2**32
MAX_JSON_BYTES: Final = 256 * 1024 * 1024  # an embedding's JSON is at most a few MB; bounds a zlib bomb


def _tensor_hook(obj: dict[str, Any]) -> Any:
    if TENSOR_KEY in obj:
        try:
            return np.asarray(obj[TENSOR_KEY], dtype=np.float64)
        except (TypeError, ValueError) as exc:  # ragged lists, non-numbers
            raise ValueError(f"a {TENSOR_KEY} entry is not a rectangular array of numbers: {exc}") from None
    return obj


def decode_embedding_json(text: str | bytes) -> Any:
    """The JSON document with its tensors as numpy arrays."""
    return json.loads(text, object_hook=_tensor_hook)


class _NibbleStream:
    """The generator's nibbles, computed once and kept (a few hundred kB at most for real embeddings)."""

    def __init__(self) -> None:
        self._values = np.zeros(0, dtype=np.uint8)
        self._state = 0  # the generator's state after the last value kept
        self._lock = threading.Lock()

    def first(self, count: int) -> NDArray[np.uint8]:
        with self._lock:
            if count > self._values.size:
                produced = np.empty(max(count - self._values.size, 4096), dtype=np.uint8)
                state = self._state
                for index in range(produced.size):
                    state = (LCG_A * state + LCG_C) % LCG_M
                    produced[index] = (state % 255) & 0x0F
                self._state = state
                self._values = np.concatenate([self._values, produced])
            return self._values[:count]


_NIBBLES = _NibbleStream()


def _crop_black_border(pixels: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The smallest box holding every pixel whose three channels are all non-zero (unchanged when none is)."""
    lit = np.all(pixels > 0, axis=2)
    rows, cols = np.flatnonzero(np.any(lit, axis=1)), np.flatnonzero(np.any(lit, axis=0))
    if rows.size == 0:
        return pixels
    return pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _unmask(block: NDArray[np.uint8]) -> NDArray[np.uint8]:
    return block ^ _NIBBLES.first(block.size).reshape(block.shape)


def extract_hidden_data(image: Image.Image) -> Any:
    """The JSON document hidden in `image`'s pixels, or None when it has no black columns to split at.
    Raises ValueError (zlib.error included) when the blocks do not decode."""
    pixels = _crop_black_border(np.asarray(image.convert("RGB"), dtype=np.uint8))
    low_bits = (pixels & 0x0F).astype(np.uint8)
    black_columns = np.flatnonzero(low_bits.sum(axis=(0, 2)) == 0)
    if black_columns.size < 2:
        return None
    low_nibbles = _unmask(low_bits[:, : black_columns[0]])
    high_nibbles = _unmask(low_bits[:, black_columns[-1] + 1 :])
    if low_nibbles.shape != high_nibbles.shape:
        raise ValueError(f"the hidden data blocks differ in size ({low_nibbles.shape} and {high_nibbles.shape})")
    stream = ((high_nibbles << 4) | low_nibbles).astype(np.uint8).tobytes()
    inflater = zlib.decompressobj()
    document = inflater.decompress(stream, MAX_JSON_BYTES)  # the filler after the stream is ignored
    if not inflater.eof:
        raise ValueError("the hidden data is not a complete zlib stream")
    return decode_embedding_json(document)


def read_image_embedding(path: Path) -> Any:
    """The JSON document an image carries (text chunk first, then pixels), or None for a plain (preview) image.
    Raises OSError (not an image PIL can open) or ValueError (a carrier that does not decode)."""
    with Image.open(path) as image:
        chunks = getattr(image, "text", None)
        if isinstance(chunks, Mapping) and TEXT_CHUNK in chunks:
            return decode_embedding_json(base64.b64decode(chunks[TEXT_CHUNK]))
        return extract_hidden_data(image)
