"""Embedding files of every format the reference reads, written the way each producer writes them, for the tests.

The pixel-hidden image format is encoded here independently of the decoder under test
(`shared/embeddings/images.py`), from the description in docs/engine.md "Textual-inversion embeddings".
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file


def vectors(count: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, width, generator=generator)


def webui_dict(vec: torch.Tensor, name: str = "emb", step: int = 500) -> dict[str, Any]:
    """What the webui's training writes: `string_to_param` with one parameter, and its metadata."""
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vec.clone())},
        "name": name,
        "step": step,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "v1-5-pruned",
    }


def write_torch(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def json_document(vec: torch.Tensor, name: str, step: int = 7) -> dict[str, Any]:
    """The JSON form of a webui embedding: tensors as `{"TORCHTENSOR": nested lists}`."""
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": {"TORCHTENSOR": vec.tolist()}},
        "name": name,
        "step": step,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }


def picture(width: int = 24, height: int = 16) -> Image.Image:
    pixels = np.full((height, width, 3), 180, dtype=np.uint8)
    pixels[:, : width // 2] = (30, 120, 210)
    return Image.fromarray(pixels, "RGB")


def write_text_chunk_png(path: Path, document: Mapping[str, Any]) -> Path:
    info = PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(document).encode()).decode("ascii"))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture().save(path, pnginfo=info)
    return path


def lcg_nibbles(count: int) -> np.ndarray:
    """x ← (1664525·x + 1013904223) mod 2³² from 0; each value mod 255, low four bits."""
    out = np.empty(count, dtype=np.uint8)
    x = 0
    for i in range(count):
        x = (1664525 * x + 1013904223) % 2**32
        out[i] = (x % 255) & 0x0F
    return out


def hide_in_pixels(document: Mapping[str, Any], image: Image.Image, border: int = 3) -> Image.Image:
    """The document zlib-compressed, its bytes' low nibbles in a block left of `image` and high nibbles in one right
    of it (row by row, pixel by pixel, R G B; the data repeated as filler), both XOR-ed with the generator's
    nibbles; a black column on each side of the image, a decoration in the blocks' high bits, a black frame."""
    data = zlib.compress(json.dumps(document).encode(), 9)
    height = image.height
    columns = -(-len(data) // (height * 3))
    total = columns * height * 3
    filled = np.frombuffer((data * (total // len(data) + 1))[:total], dtype=np.uint8).reshape(height, columns, 3)
    mask = lcg_nibbles(total).reshape(height, columns, 3)
    rng = np.random.default_rng(1)
    decoration = (rng.integers(1, 16, size=filled.shape, dtype=np.uint8) << 4).astype(np.uint8)
    low = ((filled & 0x0F) ^ mask) | decoration
    high = ((filled >> 4) ^ mask) | decoration
    inner = np.concatenate(
        [low, np.zeros((height, 1, 3), np.uint8), np.asarray(image), np.zeros((height, 1, 3), np.uint8), high],
        axis=1,
    )
    framed = np.zeros((height + 2 * border, inner.shape[1] + 2 * border, 3), dtype=np.uint8)
    framed[border : border + height, border : border + inner.shape[1]] = inner
    return Image.fromarray(framed, "RGB")


def write_hidden_png(path: Path, document: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    hide_in_pixels(document, picture()).save(path)
    return path


class FakeTokenizer:
    """Lower-cased words and single punctuation marks, each a stable id in order of first sight (like BPE, case
    does not matter and `my-emb` is three tokens)."""

    def __init__(self) -> None:
        self.vocabulary: dict[str, int] = {}

    def words(self, text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())

    def __call__(self, text: str) -> list[int]:
        return [self.vocabulary.setdefault(word, len(self.vocabulary) + 1) for word in self.words(text)]

    def ids(self, text: str) -> Sequence[int]:
        return self(text)
