"""Prompt text → CLIP conditioning `(B, 77·K, C)`: chunks of 75 tokens, emphasis, textual-inversion vectors
(docs/engine.md, "Prompt encoding").

The chunking itself (emphasis parse, BREAK, comma backtracking, embedding placeholders) is `shared.prompts`'
`tokenize_line`; this module turns chunks into tensors. The text encoder is reached through :class:`TextBackend` so
that tests can use a fake one whose outputs are known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch

from shared.prompts import EmbeddingLookup, PromptChunk, tokenize_line
from worker.engine.conditioning.emphasis import EmphasisMode, apply_emphasis, parses_emphasis

__all__ = ["ConditioningEncoder", "PooledTextBackend", "PromptEncoder", "TextBackend", "TokenVectors"]

CHUNK_TOKENS = 75  # prompt tokens per chunk; BOS and EOS make 77

#: Per row of a chunk batch: `(position in the 77 tokens, vectors (n, C))` to put in place of the token embeddings.
TokenVectors = Sequence[Sequence[tuple[int, torch.Tensor]]]


class TextBackend(Protocol):
    """A text encoder and its tokenizer, as the prompt encoder uses them."""

    @property
    def id_start(self) -> int:
        """BOS."""
        ...

    @property
    def id_end(self) -> int:
        """EOS (also the padding of OpenAI CLIP)."""
        ...

    @property
    def id_pad(self) -> int:
        """The id every position after the first EOS gets (EOS for OpenAI CLIP, 0 for OpenCLIP)."""
        ...

    @property
    def comma_token(self) -> int | None:
        """The id of `,</w>`, or None when the vocabulary has none (no comma backtracking then)."""
        ...

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text: no BOS/EOS, no truncation."""
        ...

    def encode_chunk(self, tokens: torch.Tensor, vectors: TokenVectors) -> torch.Tensor:
        """The text encoder's output `(B, 77, C)` for token ids `(B, 77)`, with `vectors` in place of their tokens'
        embeddings."""
        ...


class PooledTextBackend(TextBackend, Protocol):
    """A text encoder that also gives a pooled vector per row (SDXL's OpenCLIP bigG)."""

    def encode_chunk_pooled(self, tokens: torch.Tensor, vectors: TokenVectors) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, 77, C)` as `encode_chunk`, and the pooled `(B, P)` of the same rows."""
        ...


class ConditioningEncoder(Protocol):
    """What the scheduled conds need of a prompt encoder: one CLIP (:class:`PromptEncoder`) or SDXL's two
    (`worker.engine.conditioning.sdxl.SdxlPromptEncoder`)."""

    @property
    def used_embeddings(self) -> dict[str, Any]: ...

    @property
    def emphasis_syntax_seen(self) -> bool: ...

    def encode(self, texts: Sequence[str]) -> torch.Tensor: ...

    def encode_pooled(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@dataclass(eq=False)
class PromptEncoder:
    """Encodes texts as the reference's CLIP hijack does (docs/engine.md, "Prompt encoding").

    Attributes:
        backend: the text encoder.
        emphasis: the `emphasis` option.
        comma_padding_backtrack: the option of that name (0 = off).
        embeddings: textual-inversion embeddings to find in the prompt, or None.
        used_embeddings: name → embedding of every embedding found so far (in order of first use; for "TI hashes").
        emphasis_syntax_seen: whether some encoded text contained `(` or `[` (the infotext's "Emphasis" entry is
            written only then).
    """

    backend: TextBackend
    emphasis: EmphasisMode = "Original"
    comma_padding_backtrack: int = 20
    embeddings: EmbeddingLookup | None = None
    used_embeddings: dict[str, Any] = field(default_factory=dict)
    emphasis_syntax_seen: bool = False

    def chunks(self, text: str) -> list[PromptChunk]:
        """The chunks of 77 tokens of one text (at least one)."""
        backend = self.backend
        chunks, _count = tokenize_line(
            text,
            self._tokenize,
            comma_token=backend.comma_token if backend.comma_token is not None else -1,
            chunk_length=CHUNK_TOKENS,
            comma_padding_backtrack=self.comma_padding_backtrack,
            embeddings=self.embeddings,
            id_end=backend.id_end,
            id_pad=backend.id_end,
            emphasis=parses_emphasis(self.emphasis),
        )
        return chunks

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.backend.tokenize(texts)

    def empty_chunk(self) -> PromptChunk:
        """BOS, then EOS to 77 tokens, all multipliers 1: what texts with fewer chunks get."""
        tokens = [self.backend.id_start] + [self.backend.id_end] * (CHUNK_TOKENS + 1)
        return PromptChunk(tokens, [1.0] * len(tokens), [])

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """`(B, 77·K, C)` for B texts encoded together: chunk index by chunk index, texts with fewer chunks padded
        with empty chunks, K the most chunks of any text. The emphasis of "Original" normalises each chunk index over
        the whole batch."""
        return self.encode_pooled(texts)[0]

    def encode_pooled(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`encode`, and the pooled vectors `(B, P)` of each text's FIRST chunk (emphasis does not touch them) when
        the backend gives them (a :class:`PooledTextBackend`), else None."""
        if any("(" in text or "[" in text for text in texts):
            self.emphasis_syntax_seen = True
        per_text = [self.chunks(text) for text in texts]
        count = max(len(chunks) for chunks in per_text)
        outputs = []
        pooled: torch.Tensor | None = None
        for index in range(count):
            batch = [chunks[index] if index < len(chunks) else self.empty_chunk() for chunks in per_text]
            z, chunk_pooled = self._encode_chunks(batch)
            outputs.append(z)
            if index == 0:
                pooled = chunk_pooled
        return torch.cat(outputs, dim=1), pooled

    def _with_start(self, tokens: Sequence[int]) -> list[int]:
        """A chunk's 77 ids with this text encoder's BOS first (the chunker writes CLIP's usual BOS; the farm's tiny
        test models have their own)."""
        if len(tokens) != CHUNK_TOKENS + 2:
            raise ValueError(f"a prompt chunk has {len(tokens)} tokens, not {CHUNK_TOKENS + 2}")
        return [self.backend.id_start, *tokens[1:]]

    def _encode_chunks(self, batch: list[PromptChunk]) -> tuple[torch.Tensor, torch.Tensor | None]:
        backend = self.backend
        tokens = torch.tensor([self._with_start(chunk.tokens) for chunk in batch], dtype=torch.long)
        if backend.id_pad != backend.id_end:
            tokens = _pad_after_first_end(tokens, backend.id_end, backend.id_pad)
        multipliers = torch.tensor([list(chunk.multipliers) for chunk in batch], dtype=torch.float32)
        vectors: list[list[tuple[int, torch.Tensor]]] = []
        for chunk in batch:
            row = []
            for fix in chunk.fixes:
                embedding = fix.embedding
                self.used_embeddings.setdefault(str(embedding.name), embedding)
                row.append((fix.offset + 1, _vectors_of(embedding)))  # + 1: the offset counts after BOS
            vectors.append(row)
        pooled: torch.Tensor | None = None
        if hasattr(backend, "encode_chunk_pooled"):
            z, pooled = cast(PooledTextBackend, backend).encode_chunk_pooled(tokens, vectors)
        else:
            z = backend.encode_chunk(tokens, vectors)
        return apply_emphasis(self.emphasis, z, multipliers), pooled


def _vectors_of(embedding: Any) -> torch.Tensor:
    """The `(n, C)` vectors of an embedding object (`.vec`, the embedding database's attribute)."""
    vec = embedding.vec
    if not isinstance(vec, torch.Tensor):
        raise TypeError(f"embedding {embedding.name!r} has no tensor .vec")
    return vec if vec.dim() == 2 else vec.reshape(-1, vec.shape[-1])


def _pad_after_first_end(tokens: torch.Tensor, id_end: int, id_pad: int) -> torch.Tensor:
    """Every position after the first EOS of each row set to `id_pad` (OpenCLIP's padding)."""
    is_end = tokens == id_end
    after_first = (is_end.long().cumsum(dim=1) - is_end.long()) > 0
    return tokens.masked_fill(after_first, id_pad)
