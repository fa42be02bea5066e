"""The functions the worker and the queue routing call by name (one place for the integrator to glue to).

Each takes the models folder and the data dir (for the hash cache; None keeps hashes in memory) and uses the
process's shared catalogue, so repeated calls cost a dictionary lookup.
"""

from __future__ import annotations

from pathlib import Path

from shared.models.catalogue import model_files
from shared.models.checkpoints import Checkpoint

__all__ = ["checkpoint_location", "find_lora_file", "find_vae_file", "servable_checkpoint_names"]


def checkpoint_location(name: str, models_dir: Path | None, data_dir: Path | None = None) -> Checkpoint | None:
    """The checkpoint any prompts-and-models.md §8.2 alias names (a canonical job model name included), or None:
    its `path` is the file or diffusers folder to load (None for a tiny model), `stem` the infotext's `Model`,
    `shorthash` its `Model hash`."""
    return model_files(models_dir, data_dir).resolve_checkpoint(name)


def find_lora_file(name: str, models_dir: Path | None, data_dir: Path | None = None) -> Path | None:
    """The file of the LoRA a `<lora:NAME…>` tag names (name or alias, case-sensitive; rescans once), or None."""
    found = model_files(models_dir, data_dir).find_lora(name)
    return found.path if found is not None else None


def find_vae_file(name: str, models_dir: Path | None, data_dir: Path | None = None) -> Path | None:
    """The file of the VAE named `name` (a file name with extension, as `/sd-vae` lists it), or None. "Automatic"
    and "None" are no files: use `ModelFiles.vae_for` for the whole `sd_vae` rule."""
    found = model_files(models_dir, data_dir).find_vae(name)
    return found.path if found is not None else None


def servable_checkpoint_names(models_dir: Path | None, data_dir: Path | None = None) -> list[str]:
    """The canonical names of every model a worker with this models folder can load (the tiny models included), in
    listing order: what a job's `model` holds after submission."""
    return [entry.name for entry in model_files(models_dir, data_dir).checkpoints().entries]
