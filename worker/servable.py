"""Which models a worker can serve, and so which queues it consumes (docs/architecture.md "Routing").

    servable_model_names(settings)        # the tiny built-ins, then the entries of RENDERFARM_MODELS_DIR
    queues_for_models(names, settings)    # their interactive queues first, then their batch queues

`servable_model_names` lists the models folder by the catalogue's rules (`shared.models`) without hashing: a
directory walk, so the announcer can call it on every heartbeat and a new 7 GB file does not hold it up.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.config import Settings
from shared.models.checkpoints import checkpoint_names
from shared.queueing import queue_name

__all__ = ["queues_for_models", "servable_model_names"]


def servable_model_names(settings: Settings) -> list[str]:
    """The models this worker can load: the farm's default, then every checkpoint of its catalogue (the tiny
    built-ins, then what RENDERFARM_MODELS_DIR holds, by canonical name), each once, in that order.

    A folder that cannot be read counts as empty (the loader will say why when a job names one of its models).
    """
    return list(dict.fromkeys([settings.model, *checkpoint_names(settings.models_dir)]))


def queues_for_models(names: Iterable[str], settings: Settings) -> list[str]:
    """The queues of `names`: every interactive queue, then every batch queue (a worker takes interactive work
    first where Celery can choose). The farm's default model also serves jobs that name no model (`rf.default.*`),
    so its queues lead when it is among `names`. Models whose names share a queue family appear once."""
    models: list[str | None] = list(names)
    if settings.model in models:
        models.insert(0, None)
    queues = [queue_name(model, batch=False) for model in models] + [queue_name(model, batch=True) for model in models]
    return list(dict.fromkeys(queues))
