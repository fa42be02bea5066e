"""Chunks of 75 tokens: emphasis multipliers, BREAK, comma backtracking and textual-inversion embeddings
(docs/engine.md, "Prompt language", "Chunks of 75").

The multipliers are the emphasis weights, one per token (1.0 for BOS, EOS and padding): the emphasis modes scale
each token's output vector by its multiplier ("Original" then restores the mean, "No norm" does not, "Ignore" and
"None" do not scale). Encoding is the engine's; this module only decides which token goes where.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shared.prompts.attention import parse_prompt_attention
from shared.prompts.tokens import BOS, CHUNK_LENGTH, COMMA_PADDING_BACKTRACK, EOS, PLACEHOLDER

__all__ = [
    "EmbeddingLike",
    "EmbeddingLookup",
    "EmbeddingTooLong",
    "PromptChunk",
    "PromptChunkFix",
    "empty_chunk",
    "tokenize_line",
]


class EmbeddingLike(Protocol):
    """A textual-inversion embedding as the chunker sees it: its name and how many vectors it inserts."""

    @property
    def name(self) -> str: ...

    @property
    def vectors(self) -> int: ...


class EmbeddingLookup(Protocol):
    """Finds an embedding whose name's tokens start at `tokens[offset]` (the longest match); returns it and how many
    prompt tokens its name takes, or `(None, None)`."""

    def find_embedding_at_position(
        self, tokens: Sequence[int], offset: int
    ) -> tuple[EmbeddingLike | None, int | None]: ...


@dataclass
class PromptChunkFix:
    """Embedding vectors to write over the placeholder tokens of a chunk, from `offset` (counted without the BOS)."""

    offset: int
    embedding: EmbeddingLike


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[PromptChunkFix] = field(default_factory=list)


class EmbeddingTooLong(ValueError):
    """An embedding with more vectors than a chunk holds (P5): the reference builds a chunk that never closes and
    fails while encoding; the farm refuses it with this message."""

    def __init__(self, name: str, vectors: int, chunk_length: int) -> None:
        super().__init__(
            f"the embedding {name!r} has {vectors} vectors; at most {chunk_length} fit in a chunk of the prompt"
        )
        self.name = name
        self.vectors = vectors


def empty_chunk(*, chunk_length: int = CHUNK_LENGTH, id_end: int = EOS, id_pad: int = EOS) -> PromptChunk:
    """The chunk of an empty text: BOS, EOS, then padding (what texts with fewer chunks are padded with)."""
    tokens = [BOS, id_end] + [id_pad] * chunk_length
    return PromptChunk(tokens, [1.0] * (chunk_length + 2), [])


def tokenize_line(
    line: str,
    tokenize: Callable[[list[str]], list[list[int]]],
    *,
    comma_token: int,
    chunk_length: int = CHUNK_LENGTH,
    comma_padding_backtrack: int = COMMA_PADDING_BACKTRACK,
    embeddings: EmbeddingLookup | None = None,
    id_end: int = EOS,
    id_pad: int = EOS,
    emphasis: bool = True,
) -> tuple[list[PromptChunk], int]:
    """The chunks of `line` (each `chunk_length + 2` tokens with BOS and EOS) and its token count as the reference
    reports it (each chunk but the last counts `chunk_length`, the last its own tokens).

    `tokenize` turns texts into token ids (no BOS/EOS, no truncation), each text on its own. `emphasis=False` is the
    emphasis mode "None": the line is one segment at 1.0 (no brackets, escapes or BREAK). `id_pad` replaces every
    token after a chunk's first EOS (0 for OpenCLIP encoders). Raises EmbeddingTooLong (P5).
    """
    parsed: list[list[str | float]] = parse_prompt_attention(line) if emphasis else [[line, 1.0]]
    tokenized = tokenize([str(text) for text, _ in parsed])

    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    token_count = 0
    last_comma = -1

    def close(is_last: bool = False) -> None:
        nonlocal chunk, token_count, last_comma
        token_count += len(chunk.tokens) if is_last else chunk_length
        padding = chunk_length - len(chunk.tokens)
        tokens = [BOS, *chunk.tokens, *([id_end] * padding), id_end]
        if id_pad != id_end:
            first_end = tokens.index(id_end)
            tokens[first_end + 1 :] = [id_pad] * (len(tokens) - first_end - 1)
        chunk.tokens = tokens
        chunk.multipliers = [1.0, *chunk.multipliers, *([1.0] * padding), 1.0]
        chunks.append(chunk)
        chunk = PromptChunk()
        last_comma = -1

    for tokens, (text, weight) in zip(tokenized, parsed, strict=True):
        if text == "BREAK" and weight == -1:
            close()
            continue
        multiplier = float(weight)
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma_token:
                last_comma = len(chunk.tokens)
            elif (
                comma_padding_backtrack != 0
                and len(chunk.tokens) == chunk_length
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= comma_padding_backtrack
            ):
                # Full, with a comma near the end: what follows the comma moves to the next chunk. The fixes of
                # embeddings among the moved tokens move with them (P4; the reference leaves them behind).
                cut = last_comma + 1
                moved = PromptChunk(
                    chunk.tokens[cut:],
                    chunk.multipliers[cut:],
                    [PromptChunkFix(fix.offset - cut, fix.embedding) for fix in chunk.fixes if fix.offset >= cut],
                )
                chunk.tokens = chunk.tokens[:cut]
                chunk.multipliers = chunk.multipliers[:cut]
                chunk.fixes = [fix for fix in chunk.fixes if fix.offset < cut]
                close()
                chunk = moved
            if len(chunk.tokens) == chunk_length:
                close()

            embedding, name_length = (
                (None, None) if embeddings is None else embeddings.find_embedding_at_position(tokens, position)
            )
            if embedding is None or name_length is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(multiplier)
                position += 1
                continue

            vectors = int(embedding.vectors)
            if vectors > chunk_length:
                raise EmbeddingTooLong(embedding.name, vectors, chunk_length)
            if len(chunk.tokens) + vectors > chunk_length:
                close()
            chunk.fixes.append(PromptChunkFix(len(chunk.tokens), embedding))
            chunk.tokens.extend([PLACEHOLDER] * vectors)
            chunk.multipliers.extend([multiplier] * vectors)
            position += name_length

    if chunk.tokens or not chunks:
        close(is_last=True)
    return chunks, token_count
