"""SDXL's two text encoders as prompt conditioning (prompts-and-models.md §5.2; docs/engine.md "SDXL and single-file
checkpoints").

Each encoder (CLIP-L, then OpenCLIP bigG) tokenises, chunks and applies emphasis on its own — two
:class:`~worker.engine.conditioning.encoder.PromptEncoder` over two :class:`SdxlClipBackend` — and the contexts are
concatenated on channels, `(B, 77·K, 768 + 1280)` for the real model. Both take the penultimate layer without the
final norm; CLIP skip does not apply. The pooled vector (the UNet's `text_embeds`) is bigG's projected output of each
text's first chunk. Textual-inversion embeddings carry both widths side by side (`clip_l ‖ clip_g`); each encoder
takes its share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from shared.errors import InputError
from worker.engine.conditioning.encoder import PromptEncoder, TokenVectors
from worker.engine.models import LoadedModel

__all__ = ["SdxlClipBackend", "SdxlPromptEncoder", "sdxl_prompt_encoder", "sdxl_time_ids"]

_COMMA = ",</w>"


@dataclass(frozen=True, eq=False)
class SdxlClipBackend:
    """One of an SDXL model's text encoders (`second`: bigG, else CLIP-L) as a `TextBackend`; bigG is a
    `PooledTextBackend`."""

    model: LoadedModel
    second: bool

    @property
    def _tokenizer(self) -> Any:
        return self.model.tokenizer_2 if self.second else self.model.tokenizer

    @property
    def id_start(self) -> int:
        return int(cast(int, self._tokenizer.bos_token_id))

    @property
    def id_end(self) -> int:
        return int(cast(int, self._tokenizer.eos_token_id))

    @property
    def id_pad(self) -> int:
        # bigG is OpenCLIP: id 0 after the first EOS. CLIP-L pads with EOS (sd_hijack_clip's rule for both).
        return 0 if self.second else self.id_end

    @property
    def comma_token(self) -> int | None:
        found = self._tokenizer.get_vocab().get(_COMMA)
        return int(found) if found is not None else None

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        encoded = self._tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def _own_share(self, vectors: TokenVectors) -> TokenVectors:
        """The embedding vectors' columns of this encoder: the first `width(CLIP-L)` for CLIP-L, the rest for bigG."""
        width_l = int(self.model.text_encoder.config.hidden_size)
        columns = slice(width_l, None) if self.second else slice(0, width_l)
        return [[(position, v[:, columns]) for position, v in row] for row in vectors]

    def encode_chunk(self, tokens: torch.Tensor, vectors: TokenVectors) -> torch.Tensor:
        return self.encode_chunk_pooled(tokens, vectors)[0]

    def encode_chunk_pooled(self, tokens: torch.Tensor, vectors: TokenVectors) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = self.model.encode_tokens_sdxl(
            tokens, second=self.second, token_vectors=self._own_share(vectors)
        )
        if pooled is None:  # CLIP-L: no pooled vector is used; an empty one keeps the shapes simple
            pooled = hidden.new_zeros((hidden.shape[0], 0))
        return hidden, pooled


@dataclass(eq=False)
class SdxlPromptEncoder:
    """A `ConditioningEncoder` over SDXL's two encoders."""

    clip_l: PromptEncoder
    clip_g: PromptEncoder

    @property
    def used_embeddings(self) -> dict[str, Any]:
        return {**self.clip_l.used_embeddings, **self.clip_g.used_embeddings}

    @property
    def emphasis_syntax_seen(self) -> bool:
        return self.clip_l.emphasis_syntax_seen or self.clip_g.emphasis_syntax_seen

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode_pooled(texts)[0]

    def encode_pooled(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(B, 77·K, C_l + C_g)` and bigG's pooled `(B, P)` of the first chunk. Raises InputError when the two
        tokenizers chunk a text differently (the reference fails there too: the concatenation cannot be made)."""
        context_l, _ = self.clip_l.encode_pooled(texts)
        context_g, pooled = self.clip_g.encode_pooled(texts)
        if context_l.shape[1] != context_g.shape[1]:
            raise InputError(
                f"the prompt makes {context_l.shape[1] // 77} chunks of 75 tokens for SDXL's CLIP-L encoder but "
                f"{context_g.shape[1] // 77} for its OpenCLIP encoder; their outputs cannot be joined",
                code="sdxl_chunk_mismatch",
                field="prompt",
            )
        return torch.cat([context_l, context_g], dim=-1), pooled


def sdxl_prompt_encoder(model: LoadedModel, **settings: Any) -> SdxlPromptEncoder:
    """The encoder of an SDXL model; `settings` are PromptEncoder's (emphasis, comma_padding_backtrack,
    embeddings)."""
    return SdxlPromptEncoder(
        PromptEncoder(SdxlClipBackend(model, second=False), **settings),
        PromptEncoder(SdxlClipBackend(model, second=True), **settings),
    )


def sdxl_time_ids(height: int, width: int, crop_top: int = 0, crop_left: int = 0) -> torch.Tensor:
    """The UNet's `time_ids` `(6,)`: original size, crop top-left, target size, each (height, width); the reference
    passes the processing size for both sizes (prompts-and-models.md §5.3)."""
    return torch.tensor([height, width, crop_top, crop_left, height, width], dtype=torch.float32)
