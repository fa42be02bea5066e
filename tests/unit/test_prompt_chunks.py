"""Chunks of 75 (docs/engine.md, "Prompt language", "Chunks of 75"), with a fake tokenizer: each word `tN` is the
token 1000+N, a comma is the comma token, an embedding's name `embK` is the token 5000+K, other words 9000."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from shared.prompts import (
    BOS,
    COMMA,
    EOS,
    EmbeddingLike,
    EmbeddingTooLong,
    PromptChunk,
    empty_chunk,
    tokenize_line,
)

PAD = [EOS]


def token(word: str) -> int:
    if word == ",":
        return COMMA
    if word.startswith("emb"):
        return 5000 + int(word[3:])
    if re.fullmatch(r"t\d+", word):
        return 1000 + int(word[1:])
    return 9000  # any other word (the text of a BREAK pair is tokenised too, and then skipped)


def tokenize(texts: list[str]) -> list[list[int]]:
    return [[token(word) for word in re.findall(r",|[^\s,]+", text)] for text in texts]


def words(first: int, count: int) -> str:
    return " ".join(f"t{n}" for n in range(first, first + count))


def ids(first: int, count: int) -> list[int]:
    return [1000 + n for n in range(first, first + count)]


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: int


class Lookup:
    """Embeddings by their one-token names (the embeddings helper's registry plays this part in the farm)."""

    def __init__(self, *embeddings: Embedding) -> None:
        self.by_token = {token(e.name): e for e in embeddings}

    def find_embedding_at_position(self, tokens: Sequence[int], offset: int) -> tuple[EmbeddingLike | None, int | None]:
        found = self.by_token.get(tokens[offset])
        return (found, 1) if found else (None, None)


def chunks_of(line: str, **options: object) -> tuple[list[PromptChunk], int]:
    return tokenize_line(line, tokenize, comma_token=COMMA, **options)  # type: ignore[arg-type]


def framed(inner: list[int]) -> list[int]:
    return [BOS, *inner, *([EOS] * (75 - len(inner))), EOS]


def test_75_tokens_are_one_chunk_76_are_two() -> None:
    chunks, count = chunks_of(words(0, 75))
    assert [c.tokens for c in chunks] == [framed(ids(0, 75))]
    assert count == 75
    chunks, count = chunks_of(words(0, 76))
    assert [c.tokens for c in chunks] == [framed(ids(0, 75)), framed(ids(75, 1))]
    assert count == 76
    assert all(len(c.tokens) == len(c.multipliers) == 77 for c in chunks)


def test_an_empty_prompt_is_one_empty_chunk() -> None:
    chunks, count = chunks_of("")
    assert [c.tokens for c in chunks] == [framed([])] == [empty_chunk().tokens]
    assert count == 0


def test_multipliers_carry_the_emphasis_and_frame_tokens_are_1() -> None:
    (chunk,), _ = chunks_of("(t1) t2 [t3]")
    assert chunk.multipliers[:5] == [1.0, 1.1, 1.0, 1 / 1.1, 1.0]
    assert chunk.multipliers[5:] == [1.0] * 72


def test_emphasis_mode_none_reads_the_line_as_one_segment() -> None:
    (chunk,), _ = tokenize_line(
        "t1 BREAK t2", lambda texts: [[len(texts), len(texts[0])]], comma_token=COMMA, emphasis=False
    )
    assert chunk.tokens[1:3] == [1, len("t1 BREAK t2")]  # one text, BREAK included


def test_break_closes_the_chunk_and_counts_a_whole_chunk() -> None:
    chunks, count = chunks_of("t1 BREAK t2")
    assert [c.tokens for c in chunks] == [framed(ids(1, 1)), framed(ids(2, 1))]
    assert count == 75 + 1


def test_break_quirks() -> None:
    leading, _ = chunks_of("BREAK t1")
    assert [c.tokens for c in leading] == [framed([]), framed(ids(1, 1))]
    double, _ = chunks_of("t1 BREAK BREAK t2")
    assert [c.tokens for c in double] == [framed(ids(1, 1)), framed([]), framed(ids(2, 1))]
    trailing, count = chunks_of("t1 BREAK")
    assert [c.tokens for c in trailing] == [framed(ids(1, 1))]
    assert count == 75  # the chunk closed by BREAK counts 75, nothing follows


def test_comma_backtracking_at_the_edge_of_the_window() -> None:
    # A comma at index 55 of a full chunk: 75 - 55 = 20 ≤ 20, so the 19 tokens after it move on.
    line = f"{words(0, 55)} , {words(100, 19)} t200"
    chunks, count = chunks_of(line)
    assert [c.tokens for c in chunks] == [framed([*ids(0, 55), COMMA]), framed([*ids(100, 19), 1200])]
    assert count == 75 + 20
    # At index 54: 21 > 20, a plain cut at 75.
    line = f"{words(0, 54)} , {words(100, 20)} t200"
    chunks, _ = chunks_of(line)
    assert [c.tokens for c in chunks] == [framed([*ids(0, 54), COMMA, *ids(100, 20)]), framed([1200])]
    # The option moves the edge; 0 turns it off.
    chunks, _ = chunks_of(f"{words(0, 55)} , {words(100, 19)} t200", comma_padding_backtrack=19)
    assert chunks[1].tokens[1:3] == [1200, EOS]
    chunks, _ = chunks_of(f"{words(0, 70)} , {words(100, 4)} t200", comma_padding_backtrack=0)
    assert chunks[1].tokens[1:3] == [1200, EOS]


def test_a_comma_arriving_at_a_full_chunk_starts_the_next() -> None:
    chunks, _ = chunks_of(f"{words(0, 75)} , t200")
    assert [c.tokens for c in chunks] == [framed(ids(0, 75)), framed([COMMA, 1200])]


def test_an_embedding_becomes_placeholders_and_a_fix() -> None:
    emb = Embedding("emb1", 3)
    (chunk,), count = chunks_of("t1 (emb1) t2", embeddings=Lookup(emb))
    assert chunk.tokens[:7] == [BOS, 1001, 0, 0, 0, 1002, EOS]
    assert chunk.multipliers[1:6] == [1.0, 1.1, 1.1, 1.1, 1.0]
    assert [(fix.offset, fix.embedding) for fix in chunk.fixes] == [(1, emb)]
    assert count == 5


def test_an_embedding_that_would_span_the_boundary_starts_the_next_chunk() -> None:
    emb = Embedding("emb1", 5)
    chunks, count = chunks_of(f"{words(0, 73)} emb1", embeddings=Lookup(emb))
    assert [c.tokens for c in chunks] == [framed(ids(0, 73)), framed([0] * 5)]
    assert [[(f.offset, f.embedding) for f in c.fixes] for c in chunks] == [[], [(0, emb)]]
    assert count == 75 + 5


def test_an_embedding_of_75_vectors_fills_a_chunk() -> None:
    emb = Embedding("emb1", 75)
    chunks, _ = chunks_of("t1 emb1", embeddings=Lookup(emb))
    assert [c.tokens for c in chunks] == [framed(ids(1, 1)), framed([0] * 75)]


def test_p4_embedding_moved_by_comma_backtracking_keeps_its_vectors() -> None:
    # The reference leaves the fix in the old chunk (pointing into its padding) and encodes the moved
    # placeholders as the token 0 ("!"): the embedding is lost. The farm moves the fix with its tokens.
    emb = Embedding("emb1", 3)
    line = f"{words(0, 55)} , emb1 {words(100, 16)} t200"
    chunks, _ = chunks_of(line, embeddings=Lookup(emb))
    assert [c.tokens for c in chunks] == [framed([*ids(0, 55), COMMA]), framed([0, 0, 0, *ids(100, 16), 1200])]
    assert chunks[0].fixes == []
    assert [(f.offset, f.embedding) for f in chunks[1].fixes] == [(0, emb)]


def test_p5_an_embedding_longer_than_a_chunk_is_refused() -> None:
    with pytest.raises(EmbeddingTooLong, match="'emb1' has 76 vectors; at most 75"):
        chunks_of("t1 emb1", embeddings=Lookup(Embedding("emb1", 76)))


def test_open_clip_pads_with_0_after_the_first_eos() -> None:
    (chunk,), _ = chunks_of("t1", id_pad=0)
    assert chunk.tokens == [BOS, 1001, EOS, *([0] * 74)]
    assert empty_chunk(id_pad=0).tokens == [BOS, EOS, *([0] * 75)]
