"""Each loaded model's textual-inversion embeddings (docs/engine.md, "Textual-inversion embeddings"), kept across
jobs: one `EmbeddingDatabase` per loaded model, rescanned before every job so that files added, changed or removed
under `RENDERFARM_MODELS_DIR/embeddings` take effect at the next job without a restart (only changed files are
reread)."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

from worker.engine.embeddings import EmbeddingDatabase, for_model
from worker.engine.models import LoadedModel

__all__ = ["EmbeddingCatalogs"]


class EmbeddingCatalogs:
    """`for_job(model, models_dir)`: the refreshed embedding database of `model`. Thread-safe.

    Keyed by the loaded model object (weakly), so a model evicted from the model cache takes its database with it and
    a reloaded model gets a fresh one (its tokenizer or width may differ)."""

    def __init__(self) -> None:
        self._databases: weakref.WeakKeyDictionary[LoadedModel, EmbeddingDatabase] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def for_job(self, model: LoadedModel, models_dir: Path | None) -> EmbeddingDatabase:
        with self._lock:
            database = self._databases.get(model)
            if database is None:
                database = for_model(model, models_dir)
                self._databases[model] = database
        database.refresh()
        return database
