"""The worker's side of the model files (docs/engine.md "Model files"): a job's model name, canonical or any alias
of prompts-and-models.md §8.2, found in RENDERFARM_MODELS_DIR's webui or flat layout through `shared.models`,
and loaded; the infotext's `Model hash` is the catalogue's short hash (the tiny models' documented identity hash
included), so it matches the listing's `hash` and the title a client selected the model by.

Names the catalogue does not know (a hub id, a path) load as `load_model` always did.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shared.models import checkpoint_location, find_lora_file, find_vae_file
from worker.engine.models import LoadedModel, load_model

__all__ = ["find_lora_file", "find_vae_file", "load_named_model"]


def load_named_model(
    name: str,
    *,
    device: str | torch.device | None,
    models_dir: Path | None,
    data_dir: Path | None,
    tiny_dir: Path | None,
) -> LoadedModel:
    """Load the model `name` names (see the module docstring). Raises what `load_model` raises."""
    entry = checkpoint_location(name, models_dir, data_dir)
    if entry is None:
        return load_model(name, device=device, models_dir=models_dir, tiny_dir=tiny_dir)
    target = entry.name if entry.path is None else str(entry.path)
    model = load_model(target, device=device, models_dir=models_dir, tiny_dir=tiny_dir)
    # The catalogue's hash (computed once, kept in the hash cache) is the model's identity: no second read of
    # the file, and the tiny models' identity hash rather than one of their randomly built weights.
    model._hash = entry.shorthash
    return model
