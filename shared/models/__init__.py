"""The model files of a webui `models/` folder, read without torch by the scheduler and the worker alike
(docs/engine.md "Model files"): checkpoints and their identity and aliases, LoRAs, VAEs, hypernetworks, the
reference's hashes and a cache that keeps them. `lookup.py` holds the few functions the worker and the routing code
call by name.
"""

from shared.models.catalogue import ModelFiles, model_files
from shared.models.checkpoints import Checkpoint
from shared.models.lookup import (
    checkpoint_location,
    find_lora_file,
    find_vae_file,
    servable_checkpoint_names,
)
from shared.models.tiny import TINY_NAMES

__all__ = [
    "TINY_NAMES",
    "Checkpoint",
    "ModelFiles",
    "checkpoint_location",
    "find_lora_file",
    "find_vae_file",
    "model_files",
    "servable_checkpoint_names",
]
