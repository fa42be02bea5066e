"""Sorting a folder's embeddings for one text encoder: usable, skipped for their width, too long (proposal P5).

Shared by the worker's database (torch tensors) and the scheduler's listing (shapes only), so both say the same.
The rules (docs/engine.md "Textual-inversion embeddings"):

- an embedding whose width differs from the text encoder's is *skipped*: its name stays ordinary prompt text;
- one of the right width is *registered*; a later file with the same name replaces the earlier one, and moves to
  the end of the registration order (which breaks ties between names that tokenise alike);
- a registered embedding of more than 75 vectors can never fit in a prompt chunk: the listing shows it under
  `skipped` with a reason under `errors`, and a prompt that uses it is refused (422 naming the prompt field).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from shared.embeddings.folder import ScannedFile
from shared.embeddings.layout import MAX_VECTORS

__all__ = ["EmbeddingLike", "Registry", "too_long_message"]


class EmbeddingLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def width(self) -> int: ...

    @property
    def vectors(self) -> int: ...

    def listing_entry(self) -> dict[str, Any]: ...


E = TypeVar("E", bound=EmbeddingLike)


def too_long_message(name: str, vectors: int) -> str:
    return (
        f"embedding {name!r} has {vectors} vectors; at most {MAX_VECTORS} fit in a prompt chunk of 75 tokens, so it "
        "cannot be used"
    )


def _label(path: Path, folder: Path | None) -> str:
    if folder is not None:
        try:
            return path.relative_to(folder).as_posix()
        except ValueError:
            pass
    return path.as_posix()


@dataclass(frozen=True)
class Registry(Generic[E]):
    """The folder's embeddings as one text encoder of `width` sees them. `registered` is in registration order and
    holds the too-long ones too (they match in prompts, to be refused); `errors` maps a file (relative to the
    folder) or a too-long embedding's name to why it is unusable."""

    width: int
    registered: Mapping[str, E]
    skipped: Mapping[str, E]
    errors: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, files: Iterable[ScannedFile[E]], width: int, folder: Path | None = None) -> Registry[E]:
        registered: dict[str, E] = {}
        skipped: dict[str, E] = {}
        errors: dict[str, str] = {}
        for scanned in files:
            if scanned.error is not None:
                errors[_label(scanned.path, folder)] = scanned.error
            embedding = scanned.value
            if embedding is None:
                continue
            if embedding.width != width:
                skipped[embedding.name] = embedding
                continue
            registered.pop(embedding.name, None)  # replaced: to the end of the order
            registered[embedding.name] = embedding
        for embedding in registered.values():
            if embedding.vectors > MAX_VECTORS:
                errors[embedding.name] = too_long_message(embedding.name, embedding.vectors)
        return cls(width, registered, skipped, errors)

    @property
    def usable(self) -> dict[str, E]:
        return {name: e for name, e in self.registered.items() if e.vectors <= MAX_VECTORS}

    def listing(self) -> dict[str, Any]:
        """The answer of `GET /sdapi/v1/embeddings`: the reference's `loaded` and `skipped` (name → step,
        sd_checkpoint, sd_checkpoint_name, shape, vectors), the too-long ones under `skipped`, and the farm's
        `errors` (file or name → reason), which the reference only prints to its console."""
        skipped = {name: e.listing_entry() for name, e in self.skipped.items()}
        for name, embedding in self.registered.items():
            if embedding.vectors > MAX_VECTORS:
                skipped[name] = embedding.listing_entry()
        return {
            "loaded": {name: e.listing_entry() for name, e in self.usable.items()},
            "skipped": skipped,
            "errors": dict(self.errors),
        }
