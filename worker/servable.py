"""Which models a worker can serve, and so which queues it consumes (docs/architecture.md "Routing").

    servable_model_names(settings)        # the tiny built-ins, then the entries of RENDERFARM_MODELS_DIR
    queues_for_models(names, settings)    # their interactive queues first, then their batch queues
    queues_for_models(names, settings, tier="interactive")   # one tier's only (a worker pool per tier)

`servable_model_names` lists the models folder by the catalogue's rules (`shared.models`) without hashing: a
directory walk, so the announcer can call it on every heartbeat and a new 7 GB file does not hold it up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from shared.config import Settings
from shared.models.checkpoints import checkpoint_names
from shared.queueing import BATCH_TIER, queue_name

Tier = Literal["interactive", "batch"]  # shared.queueing's INTERACTIVE_TIER and BATCH_TIER
TIERS: tuple[Tier, ...] = ("interactive", "batch")

__all__ = ["TIERS", "Tier", "queues_for_models", "servable_model_names"]


def servable_model_names(settings: Settings) -> list[str]:
    """The models this worker can load: the farm's default, then every checkpoint of its catalogue (the tiny
    built-ins, then what RENDERFARM_MODELS_DIR holds, by canonical name), each once, in that order.

    A folder that cannot be read counts as empty (the loader will say why when a job names one of its models).
    """
    return list(dict.fromkeys([settings.model, *checkpoint_names(settings.models_dir)]))


def queues_for_models(names: Iterable[str], settings: Settings, tier: Tier | None = None) -> list[str]:
    """The queues of `names`: every interactive queue, then every batch queue (a worker takes interactive work
    first where Celery can choose); with `tier`, that tier's only (a pool of workers per tier, each scaled on its
    own backlog: deploy/k8s). The farm's default model also serves jobs that name no model (`rf.default.*`), so its
    queues lead when it is among `names`. Models whose names share a queue family appear once."""
    models: list[str | None] = list(names)
    if settings.model in models:
        models.insert(0, None)
    batches = [False, True] if tier is None else [tier == BATCH_TIER]
    queues = [queue_name(model, batch=batch) for batch in batches for model in models]
    return list(dict.fromkeys(queues))
