"""The embeddings one model can use, and how a prompt's tokens find them (docs/engine.md "Textual-inversion
embeddings").

Matching, as the reference does it: each registered embedding's name is tokenised with the model's tokenizer (no
BOS/EOS) and indexed by its first token id; at a position of a segment's tokens, the candidates under that token are
tried longest first (equal lengths: in registration order) and the first whose whole id sequence is there matches.
So matching follows BPE and is case-insensitive, and never spans segments (the caller passes one segment's tokens).

Built per loaded model (its tokenizer and text-encoder width); `refresh()` before each job rereads what changed in
the folder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.embeddings.folder import FolderScanner
from shared.embeddings.layout import MAX_VECTORS
from shared.embeddings.registry import Registry
from shared.models.layout import embeddings_folder
from shared.prompts import EmbeddingTooLong, parse_prompt_attention
from worker.engine.embeddings.loading import Embedding, load_embedding_file
from worker.engine.pixel_stage import PixelWarning

if TYPE_CHECKING:
    from worker.engine.models.loaded import LoadedModel

__all__ = [
    "EmbeddingDatabase",
    "Tokenize",
    "embedding_incompatible_warning",
    "for_model",
    "model_tokenize",
    "model_width",
    "ti_hashes",
]

Tokenize = Callable[[str], Sequence[int]]  # text → token ids, no BOS/EOS, no truncation

_Candidates = tuple[tuple[tuple[int, ...], Embedding], ...]


def _index(embeddings: Iterable[Embedding], tokenize: Tokenize, errors: dict[str, str]) -> dict[int, _Candidates]:
    """First token id → (name's ids, embedding), longest first; a stable sort keeps registration order on ties."""
    lists: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
    for embedding in embeddings:
        ids = tuple(int(i) for i in tokenize(embedding.name))
        if not ids:
            errors[embedding.name] = f"embedding name {embedding.name!r} tokenises to nothing; it can never match"
            continue
        lists.setdefault(ids[0], []).append((ids, embedding))
    return {first: tuple(sorted(c, key=lambda item: len(item[0]), reverse=True)) for first, c in lists.items()}


def _match(index: Mapping[int, _Candidates], tokens: Sequence[int], offset: int) -> tuple[Embedding, int] | None:
    for ids, embedding in index.get(int(tokens[offset]), ()):
        if tuple(int(t) for t in tokens[offset : offset + len(ids)]) == ids:
            return embedding, len(ids)
    return None


@dataclass(frozen=True)
class _State:
    registry: Registry[Embedding]
    registered: Mapping[int, _Candidates]  # usable and too-long ones (these match, to be refused)
    skipped: Mapping[int, _Candidates]  # wrong width: plain text, but worth a warning (P12)
    errors: Mapping[str, str] = field(default_factory=dict)


class EmbeddingDatabase:
    """The embeddings under `folder` for a text encoder of `width`, matched with `tokenize`. Satisfies the prompt
    chunker's `EmbeddingLookup` protocol (`find_embedding_at_position`). Thread-safe: lookups read an immutable
    snapshot that `refresh()` replaces."""

    def __init__(self, folder: Path | None, *, tokenize: Tokenize, width: int) -> None:
        self.folder = folder
        self.width = width
        self._tokenize = tokenize
        self._scanner: FolderScanner[Embedding] = FolderScanner(folder, load_embedding_file)
        self._lock = threading.Lock()
        self._state = _State(Registry(width, {}, {}), {}, {})
        self.refresh()

    # -- the folder --------------------------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> bool:
        """Reread the files that changed (all of them with `force`); True when anything did."""
        with self._lock:
            scan = self._scanner.scan(force=force)
            if not scan.changed and not force:
                return False
            registry = Registry.build(scan.files, self.width, self.folder)
            errors = dict(registry.errors)
            registered = _index(registry.registered.values(), self._tokenize, errors)
            skipped = _index(registry.skipped.values(), self._tokenize, {})
            self._state = _State(registry, registered, skipped, errors)
            return True

    @property
    def loaded(self) -> dict[str, Embedding]:
        """The usable embeddings (right width, at most 75 vectors), in registration order."""
        return self._state.registry.usable

    @property
    def skipped(self) -> Mapping[str, Embedding]:
        """Embeddings of another width: their names stay ordinary prompt text."""
        return self._state.registry.skipped

    @property
    def errors(self) -> Mapping[str, str]:
        """Files that failed to load (relative path → reason) and unusable embeddings (name → reason)."""
        return self._state.errors

    def listing(self) -> dict[str, Any]:
        """What `/sdapi/v1/embeddings` answers for this model (the scheduler builds the same without torch)."""
        return {**self._state.registry.listing(), "errors": dict(self.errors)}

    # -- prompts -----------------------------------------------------------------------------------------------

    def find_embedding_at_position(self, tokens: Sequence[int], offset: int) -> tuple[Embedding | None, int | None]:
        """The embedding whose name's tokens start at `tokens[offset]` and how many prompt tokens it replaces, or
        (None, None). Raises the chunker's EmbeddingTooLong for a match of more than 75 vectors (proposal P5); the
        engine answers it with a 422 naming the prompt field it came from."""
        found = _match(self._state.registered, tokens, offset)
        if found is None:
            return None, None
        embedding, length = found
        if embedding.vectors > MAX_VECTORS:
            raise EmbeddingTooLong(embedding.name, embedding.vectors, MAX_VECTORS)
        return embedding, length

    def incompatible_embeddings(self, tokens: Sequence[int]) -> list[Embedding]:
        """The width-skipped embeddings whose names occur in one segment's `tokens`, walking it as the chunker
        does: where a usable embedding matches, its tokens are consumed; elsewhere the walk advances one token, so
        a usable embedding starting inside a skipped name still matches as it does in the chunker."""
        state = self._state
        found: list[Embedding] = []
        offset = 0
        while offset < len(tokens):
            hit = _match(state.registered, tokens, offset)
            if hit is not None:
                offset += hit[1]
                continue
            skipped = _match(state.skipped, tokens, offset)
            if skipped is not None and skipped[0] not in found:
                found.append(skipped[0])
            offset += 1
        return found

    def incompatible_warnings(self, segments: Iterable[Sequence[int]], field: str = "prompt") -> list[PixelWarning]:
        """Warnings `embedding_incompatible` (proposal P12) for the width-skipped embeddings named in any of a
        prompt's segments (each segment's tokens separately, as matching never spans segments)."""
        seen: list[Embedding] = []
        for tokens in segments:
            seen += [e for e in self.incompatible_embeddings(tokens) if e not in seen]
        return [embedding_incompatible_warning(e, self.width, field) for e in seen]

    def incompatible_warnings_in_texts(self, texts: Iterable[str], field: str = "prompt") -> list[PixelWarning]:
        """`incompatible_warnings` for whole prompt texts: each text split into its emphasis segments (BREAK
        included) as the chunker splits it, each segment tokenized."""
        segments = [
            self._tokenize(str(text))
            for whole in texts
            for text, weight in parse_prompt_attention(whole)
            if weight != -1  # BREAK
        ]
        return self.incompatible_warnings(segments, field)


def embedding_incompatible_warning(embedding: Embedding, model_width: int, field: str = "prompt") -> PixelWarning:
    return PixelWarning(
        "embedding_incompatible",
        f"{field}: embedding {embedding.name!r} ({embedding.filename.name}) has vectors of width {embedding.width} "
        f"and this model's text encoder takes {model_width}; its name was encoded as ordinary text",
    )


def ti_hashes(used: Iterable[Embedding]) -> str | None:
    """The infotext's `TI hashes` value: `name: 12 hex digits` for each embedding used, in the order given, each
    name once (the reference repeats names used by several encodes; proposal P12), `:` and `,` removed from names.
    None when nothing was used."""
    entries: dict[str, str] = {}
    for embedding in used:
        name = embedding.name.replace(":", "").replace(",", "")
        entries.setdefault(f"{name}: {embedding.shorthash}", name)
    return ", ".join(entries) or None


def model_tokenize(model: LoadedModel) -> Tokenize:
    """The model's tokenizer as the matcher needs it: ids without BOS/EOS, never truncated."""
    tokenizer = model.tokenizer

    def tokenize(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])

    return tokenize


def model_width(model: LoadedModel) -> int:
    """The width of the text encoder's token embeddings (768 for SD 1.x): CLIP's hidden size; for SDXL both
    encoders' side by side (768 + 1280), as its embeddings' `clip_l ‖ clip_g`."""
    width = int(model.text_encoder.config.hidden_size)
    if model.text_encoder_2 is not None:
        width += int(model.text_encoder_2.config.hidden_size)
    return width


def for_model(model: LoadedModel, models_dir: Path | None) -> EmbeddingDatabase:
    """The database of `RENDERFARM_MODELS_DIR/embeddings` for `model` (empty when `models_dir` is None)."""
    folder = embeddings_folder(models_dir) if models_dir is not None else None
    return EmbeddingDatabase(folder, tokenize=model_tokenize(model), width=model_width(model))
