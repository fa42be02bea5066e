"""Textual-inversion embeddings for the engine: loading files with torch (`loading.py`) and the per-model database
the prompt encoder matches names with (`database.py`). Formats, rules and differences: docs/engine.md
"Textual-inversion embeddings"; the torch-free side (formats, folder, registry) is `shared/embeddings/`."""

from worker.engine.embeddings.database import (
    EmbeddingDatabase,
    Tokenize,
    embedding_incompatible_warning,
    for_model,
    model_tokenize,
    model_width,
    ti_hashes,
)
from worker.engine.embeddings.loading import Embedding, load_embedding_file

__all__ = [
    "Embedding",
    "EmbeddingDatabase",
    "Tokenize",
    "embedding_incompatible_warning",
    "for_model",
    "load_embedding_file",
    "model_tokenize",
    "model_width",
    "ti_hashes",
]
