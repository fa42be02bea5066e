"""The CLIP tokenizer built offline from the BPE merge list in `shared/prompts/clip_vocab` (its README says where it
comes from): what a single-file checkpoint needs, since it holds no tokenizer files.

The vocabulary (49,408 ids) is the 256 byte symbols of the byte-level encoding, the same with the end-of-word mark
`</w>`, the first 48,894 merges joined, then `<|startoftext|>` (49406) and `<|endoftext|>` (49407). SD 1.x's CLIP
pads with `<|endoftext|>`; the OpenCLIP encoders of SD 2.x and SDXL pad with `!` (id 0).
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import shared.prompts

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

__all__ = ["CLIP_VOCAB_SIZE", "MERGE_LIST", "build_clip_tokenizer", "clip_vocab_and_merges"]

MERGE_LIST: Final = Path(shared.prompts.__file__).parent / "clip_vocab" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE: Final = 49408
_BYTE_SYMBOLS: Final = 256
_SPECIAL: Final = ("<|startoftext|>", "<|endoftext|>")
_MERGES_USED: Final = CLIP_VOCAB_SIZE - 2 * _BYTE_SYMBOLS - len(_SPECIAL)  # 48,894


def _byte_symbols() -> list[str]:
    """The printable stand-in of each byte value 0..255, in byte order, as byte-level BPE writes bytes: printable
    Latin-1 bytes stand for themselves, the others for code points from 256 up in their order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    symbols: dict[int, str] = {}
    extra = 0
    for byte in range(_BYTE_SYMBOLS):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(_BYTE_SYMBOLS + extra)
            extra += 1
    # The vocabulary lists the printable ones first (in byte order), then the remapped ones.
    return [symbols[b] for b in sorted(printable)] + [symbols[b] for b in range(_BYTE_SYMBOLS) if b not in printable]


@functools.cache
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    """CLIP's vocabulary (token → id) and its merges (`"a b"` in rank order), read once from the merge list."""
    with gzip.open(MERGE_LIST, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = tuple(lines[1 : 1 + _MERGES_USED])  # line 0 is the version header
    symbols = _byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(m.replace(" ", "") for m in merges), *_SPECIAL]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{MERGE_LIST}: built {len(tokens)} tokens, not {CLIP_VOCAB_SIZE}")
    return {token: index for index, token in enumerate(tokens)}, merges


def build_clip_tokenizer(pad_token: str) -> CLIPTokenizer:
    """A CLIP tokenizer with the real vocabulary, 77 tokens long, padding with `pad_token` (`<|endoftext|>` for
    SD 1.x and SDXL's CLIP-L; `!` for the OpenCLIP encoders)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    pairs: Any = [tuple(merge.split(" ")) for merge in merges]  # the fast tokenizer takes pairs
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, pad_token=pad_token, model_max_length=77)
