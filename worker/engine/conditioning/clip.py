"""The loaded model's CLIP text encoder as a :class:`~worker.engine.conditioning.encoder.TextBackend`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from worker.engine.conditioning.encoder import TokenVectors
from worker.engine.models import LoadedModel

__all__ = ["ClipBackend"]

_COMMA = ",</w>"


@dataclass(frozen=True, eq=False)
class ClipBackend:
    """`model`'s tokenizer and text encoder, with CLIP skip `clip_skip` (ignored by OpenCLIP encoders, as in the
    reference: `LoadedModel.encode_tokens`)."""

    model: LoadedModel
    clip_skip: int = 1

    @property
    def id_start(self) -> int:
        return int(cast(int, self.model.tokenizer.bos_token_id))

    @property
    def id_end(self) -> int:
        return int(cast(int, self.model.tokenizer.eos_token_id))

    @property
    def id_pad(self) -> int:
        # OpenCLIP pads with id 0 after the first EOS; OpenAI CLIP with EOS (docs/engine.md, "Prompt encoding").
        return 0 if self.model.uses_open_clip else self.id_end

    @property
    def comma_token(self) -> int | None:
        found = self.model.tokenizer.get_vocab().get(_COMMA)
        return int(found) if found is not None else None

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        encoded = self.model.tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def encode_chunk(self, tokens: torch.Tensor, vectors: TokenVectors) -> torch.Tensor:
        return self.model.encode_tokens(tokens, clip_skip=self.clip_skip, token_vectors=vectors)
