"""The farm's models: where the tiny ones are built, and the memory-bounded cache that keeps models loaded
across jobs."""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from shared.config import ENV_PREFIX, default_data_dir
from worker.engine.models import LoadedModel, load_model

__all__ = ["ModelCache", "default_models_dir"]

logger = logging.getLogger(__name__)


def default_models_dir() -> Path:
    """Where the tiny models are built: `$RENDERFARM_DATA_DIR/models`, else the default data folder's `models`."""
    data_dir = os.environ.get(f"{ENV_PREFIX}DATA_DIR")
    return (Path(data_dir).expanduser() if data_dir else default_data_dir()) / "models"


def _load_with_defaults(name: str) -> LoadedModel:
    return load_model(name, tiny_dir=default_models_dir())


class ModelCache:
    """Loaded models kept across jobs, at most `max_bytes` of weights in all, least recently used evicted first.

    `get(name)` returns the cached model or loads it with `loader` (default: `load_model` with its defaults, the
    tiny models built in `default_models_dir()`). Room is made before the load, with the size the model had when
    last loaded or else the largest size seen (a farm's models mostly share one architecture), so the old and the
    new weights do not meet on the GPU; and after it, with the real size. A model larger than `max_bytes` on its own
    is still loaded and kept, alone. Thread-safe: one lock serialises lookups and loads, so two jobs asking for the
    same model load it once.
    """

    def __init__(self, max_bytes: int, loader: Callable[[str], LoadedModel] | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.max_bytes = max_bytes
        self._loader: Callable[[str], LoadedModel] = loader or _load_with_defaults
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._known_sizes: dict[str, int] = {}  # bytes of every model loaded so far, cached or not
        self._lock = threading.RLock()
        # `names()` without the lock: a heartbeat must not wait for a load (minutes for a large model on a slow disk).
        self._names: tuple[str, ...] = ()

    def get(self, name: str) -> LoadedModel:
        """The model called `name`, loaded on a miss. Raises what the loader raises (the models evicted to make
        room for it stay evicted)."""
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                self._models.move_to_end(name)
                self._names = tuple(self._models)
                return model
            expected = self._known_sizes.get(name, max(self._known_sizes.values(), default=0))
            self._evict_until_fits(expected)
            model = self._loader(name)
            size = model.memory_bytes
            self._known_sizes[name] = size
            self._evict_until_fits(size)
            self._models[name] = model
            self._sizes[name] = size
            self._names = tuple(self._models)
            return model

    def _evict_until_fits(self, incoming: int) -> None:
        evicted = False
        while self._models and self.total_bytes + incoming > self.max_bytes:
            old_name, _ = self._models.popitem(last=False)
            self._sizes.pop(old_name, None)
            logger.info("model cache: evicted %s to make room", old_name)
            self._names = tuple(self._models)
            evicted = True
        if evicted:
            # The evicted modules are unreachable once the caller drops them; collect now so their GPU memory is
            # really free before the new model grows into it.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def names(self) -> list[str]:
        """Cached model names, least recently used first. Never waits for a load in progress (the models evicted for
        it are already gone; it is listed once loaded)."""
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)
