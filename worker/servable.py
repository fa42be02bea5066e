"""Which models a worker can serve, and so which queues it consumes (docs/architecture.md "Routing").

    servable_model_names(settings)        # the tiny built-ins, then the entries of RENDERFARM_MODELS_DIR
    queues_for_models(names, settings)    # their interactive queues first, then their batch queues

PLACEHOLDER for the integrator: `servable_model_names` lists RENDERFARM_MODELS_DIR the way the A1111 model listing
does today (`scheduler/a1111/routes.py:_model_names`: folders and `.safetensors`/`.ckpt` files, without hidden
entries and the embeddings folder). The farm's real model listing (shared/models/, issue 14's `modelfiles` part)
replaces its body; everything else here only needs it to stay cheap (a directory listing: the announcer calls it on
every heartbeat).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from shared.config import Settings
from shared.embeddings.folder import EMBEDDINGS_FOLDER
from shared.queueing import queue_name

__all__ = ["MODEL_FILE_SUFFIXES", "queues_for_models", "servable_model_names"]

MODEL_FILE_SUFFIXES: Final = (".safetensors", ".ckpt")  # single-file checkpoints the loader reads


def _tiny_model_names() -> list[str]:
    # Imported here: the engine's package imports torch and diffusers, which the listing itself does not need.
    from worker.engine.models import TINY_MODEL_NAMES

    return list(TINY_MODEL_NAMES)


def servable_model_names(settings: Settings) -> list[str]:
    """The models this worker can load: the farm's default, the tiny built-ins, then what RENDERFARM_MODELS_DIR
    holds (a folder per diffusers model, or a checkpoint file named after its model), each once, in that order.

    A folder that cannot be read counts as empty (the loader will say why when a job names one of its models).
    """
    names = [settings.model, *_tiny_model_names()]
    folder = settings.models_dir
    if folder is not None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            entries = []
        for entry in entries:
            if entry.name.startswith(".") or entry.name == EMBEDDINGS_FOLDER:
                continue
            if entry.is_dir():
                names.append(entry.name)
            elif entry.suffix in MODEL_FILE_SUFFIXES:
                names.append(entry.stem)
    return list(dict.fromkeys(names))


def queues_for_models(names: Iterable[str], settings: Settings) -> list[str]:
    """The queues of `names`: every interactive queue, then every batch queue (a worker takes interactive work
    first where Celery can choose). The farm's default model also serves jobs that name no model (`rf.default.*`),
    so its queues lead when it is among `names`. Models whose names share a queue family appear once."""
    models: list[str | None] = list(names)
    if settings.model in models:
        models.insert(0, None)
    queues = [queue_name(model, batch=False) for model in models] + [queue_name(model, batch=True) for model in models]
    return list(dict.fromkeys(queues))
