"""How many CLIP BPE tokens a text is, in pure Python (no torch, no transformers): what the scheduler counts to
limit a prompt's length before a job is accepted (docs/reliability.md, "Limits at the edge").

The count is the length of what the worker's tokenizer (transformers' `CLIPTokenizer`, built from the same merge
list, called without BOS/EOS and without truncation) returns for the text:

1. `<|startoftext|>` and `<|endoftext|>` written exactly so are one token each; the text between them is counted
   piece by piece.
2. Each piece is normalised: Unicode NFC, every run of white space made one space, lower case (character by
   character, as the tokenizer's normaliser does; a final capital sigma becomes σ, not ς).
3. It is split into words: a contraction `'s 't 're 've 'm 'll 'd`, a run of letters (Unicode category L*), one
   digit or other number (N*), or a run of anything else but white space; white space separates words and is dropped.
4. Each word becomes its UTF-8 bytes, one symbol per byte, the last marked as the end of the word, and byte-pair
   merges are applied lowest rank first; the word's count is the number of symbols left.

One difference, on purpose: a word longer than `MAX_EXACT_WORD_BYTES` counts one token per byte (merging it would
cost tens of milliseconds per kilobyte in Python, and such a word is a poison input, not language).

The merge list is `clip_vocab/bpe_simple_vocab_16e6.txt.gz` (its README says where it comes from). Counts of words
are cached, so a long prompt of repeated words costs little, and the best merge is found with a heap.
"""

from __future__ import annotations

import functools
import gzip
import heapq
import unicodedata
from pathlib import Path
from typing import Final

__all__ = ["MAX_EXACT_WORD_BYTES", "MERGES_FILE", "count_tokens", "word_count", "words"]

MERGES_FILE: Final = Path(__file__).parent / "clip_vocab" / "bpe_simple_vocab_16e6.txt.gz"
# The vocabulary has 49,408 ids: 256 byte symbols, the same 256 ending a word, the merges, and 2 special tokens; so
# the first 49,408 - 512 - 2 merges of the file are the ones in use (the file holds more).
MERGES_IN_USE: Final = 49_408 - 512 - 2
SPECIAL_TOKENS: Final = ("<|startoftext|>", "<|endoftext|>")
END_OF_WORD: Final = "</w>"

# The Unicode White_Space characters: what the tokenizer's `\s` matches (Python's str.isspace() also takes
# U+001C..U+001F, which the tokenizer reads as symbols).
_WHITE_SPACE: Final = frozenset(
    [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)
_CONTRACTIONS: Final = ("s", "t", "re", "ve", "m", "ll", "d")  # after an apostrophe, tried in this order
# A word of more bytes counts one token per byte, the most it can be (merges only lower it) and no real word's
# length: a long run of letters (a CJK sentence without punctuation) is exact up to here, and a pathological one
# (32,768 letters in a row) costs no merging.
MAX_EXACT_WORD_BYTES: Final = 1024
_SHORT_WORD: Final = 64  # characters; words up to this long share the big cache

# Character classes of the word split.
_SPACE, _LETTER, _NUMBER, _OTHER = "s", "L", "N", "o"


def _byte_symbols() -> tuple[str, ...]:
    """The printable character that stands for each byte in the merge list: printable Latin-1 bytes stand for
    themselves, the others (controls, space, soft hyphen...) for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {byte: chr(byte) for byte in printable}
    stand_in = 0x100
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(stand_in)
            stand_in += 1
    return tuple(symbols[byte] for byte in range(256))


_BYTE_SYMBOLS: Final = _byte_symbols()


_PAIR: Final = 1 << 16  # symbol ids are below 49,408: a pair (left, right) is the key left * _PAIR + right
_POSITION_BITS: Final = 32  # positions of a word's bytes (far more than a prompt's limit in characters × 4)
_POSITION_MASK: Final = (1 << _POSITION_BITS) - 1


@functools.cache
def _merge_ranks() -> dict[int, int]:
    """Pair key → rank of the merge (lower merges first), read once from the merge list. Symbol ids: byte b is b,
    byte b ending a word 256 + b, the result of the merge of rank r is 512 + r."""
    ids = {symbol: byte for byte, symbol in enumerate(_BYTE_SYMBOLS)}
    ids.update({symbol + END_OF_WORD: 256 + byte for byte, symbol in enumerate(_BYTE_SYMBOLS)})
    ranks: dict[int, int] = {}
    with gzip.open(MERGES_FILE, "rt", encoding="utf-8") as lines:
        next(lines)  # the version header
        for rank, line in enumerate(lines):
            if rank == MERGES_IN_USE:
                break
            left, right = line.split()
            ranks[ids[left] * _PAIR + ids[right]] = rank
            ids[left + right] = 512 + rank
    return ranks


@functools.cache
def _class_of(char: str) -> str:
    if ord(char) in _WHITE_SPACE:
        return _SPACE
    category = unicodedata.category(char)[0]
    if category == "L":
        return _LETTER
    if category == "N":
        return _NUMBER
    return _OTHER


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if ord(char) in _WHITE_SPACE else char for char in text)
    return "".join(char.lower() for char in text)


def words(text: str) -> list[str]:
    """The words of one normalised piece of text (step 3 of the module's docstring)."""
    found: list[str] = []
    end = len(text)
    i = 0
    while i < end:
        char = text[i]
        kind = _class_of(char)
        if kind == _SPACE:
            i += 1
            continue
        if char == "'":
            contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i + 1)), None)
            if contraction is not None:
                found.append("'" + contraction)
                i += 1 + len(contraction)
                continue
        start = i
        i += 1
        if kind == _NUMBER:  # one digit, one word
            found.append(char)
            continue
        while i < end and _class_of(text[i]) == kind:
            i += 1
        found.append(text[start:i])
    return found


def _word_length(word: str) -> int:
    """Symbols left after merging the word's bytes (step 4). The pair of lowest rank merges first, the leftmost of
    equal ones first; a merge never makes a pair of lower rank than its own (a merge's parts are older tokens), so
    this is the classic merge-all-of-the-best-pair loop, in O(n log n). Symbols are ids (see `_merge_ranks`); a
    merged-away symbol is -1."""
    symbols = list(word.encode("utf-8"))
    symbols[-1] += 256  # the end of the word
    count = len(symbols)
    if count == 1:
        return 1
    ranks = _merge_ranks()
    following = [*range(1, count), -1]
    preceding = list(range(-1, count - 1))
    # Heap entries are rank << _POSITION_BITS | position: one int, ordered by rank, then leftmost first.
    heap = [
        rank << _POSITION_BITS | i
        for i in range(count - 1)
        if (rank := ranks.get(symbols[i] * _PAIR + symbols[i + 1])) is not None
    ]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        entry = pop(heap)
        rank, left = entry >> _POSITION_BITS, entry & _POSITION_MASK
        right = following[left]
        if right == -1 or symbols[left] == -1 or ranks.get(symbols[left] * _PAIR + symbols[right]) != rank:
            continue  # a stale entry: one side has merged with something else since
        merged = 512 + rank
        symbols[left] = merged
        symbols[right] = -1
        count -= 1
        after = following[right]
        following[left] = after
        if after != -1:
            preceding[after] = left
            new_rank = ranks.get(merged * _PAIR + symbols[after])
            if new_rank is not None:
                push(heap, new_rank << _POSITION_BITS | left)
        before = preceding[left]
        if before != -1:
            new_rank = ranks.get(symbols[before] * _PAIR + merged)
            if new_rank is not None:
                push(heap, new_rank << _POSITION_BITS | before)
    return count


_short_word_length = functools.lru_cache(maxsize=200_000)(_word_length)  # real words: many, short
_long_word_length = functools.lru_cache(maxsize=1024)(_word_length)  # up to MAX_EXACT_WORD_BYTES each


def word_count(word: str) -> int:
    """Tokens of one word (exact up to MAX_EXACT_WORD_BYTES bytes, one per byte beyond)."""
    if len(word) <= _SHORT_WORD:
        return _short_word_length(word)
    size = len(word.encode("utf-8"))
    return _long_word_length(word) if size <= MAX_EXACT_WORD_BYTES else size


def count_tokens(text: str, *, stop_above: int | None = None) -> int:
    """CLIP BPE tokens of `text`, without BOS and EOS (see the module's docstring). With `stop_above`, counting
    stops as soon as the count is past it: the result is then more than `stop_above` (and may be less than the
    whole count)."""
    pieces = [text]
    total = 0
    for special in SPECIAL_TOKENS:
        split: list[str] = []
        for piece in pieces:
            parts = piece.split(special)
            total += len(parts) - 1
            split.extend(parts)
        pieces = split
    limit = stop_above if stop_above is not None else -1
    for piece in pieces:
        for word in words(_normalise(piece)):
            total += word_count(word)
            if total > limit >= 0:
                return total
    return total
