"""The worker's lookup of an `override_settings.sd_vae` name: a TEMPORARY stand-in that the integrator replaces with
the model-file resolution of `shared.models` (prompts-and-models §6: `<models_dir>/VAE/**` by file name, natural
order, the later duplicate winning, `*.vae.*` beside checkpoints, ...).

Here only the plain case: the name is the file name (with its extension) of a file in `<models_dir>/VAE/` or one of
its subfolders. "Automatic", "None" and no value mean the checkpoint's own VAE (the reference's per-checkpoint
Automatic choice of a `<stem>.vae.*` file is not done here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from shared.errors import InputError
from worker.engine.vae_files import VAE_FILE_SUFFIXES, VaeFile

__all__ = ["OWN_VAE_VALUES", "VAE_FOLDER", "find_vae_file_by_name", "vae_file_for_job"]

VAE_FOLDER: Final = "VAE"
OWN_VAE_VALUES: Final = frozenset({"Automatic", "None", ""})


def find_vae_file_by_name(models_dir: Path | None, name: str) -> Path | None:
    """The file called `name` under `<models_dir>/VAE/` (the last in sorted path order when several are), or None."""
    if models_dir is None or Path(name).name != name:
        return None
    folder = models_dir / VAE_FOLDER
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.rglob(name) if p.is_file() and p.suffix.lower() in VAE_FILE_SUFFIXES)
    return found[-1] if found else None


def vae_file_for_job(override_settings: dict[str, Any], models_dir: Path | None) -> VaeFile | None:
    """The external VAE a job's `sd_vae` names, or None for the checkpoint's own. Raises InputError (field
    `override_settings.sd_vae`) for a name no file answers to (proposal P15: the reference silently falls back)."""
    value = override_settings.get("sd_vae")
    if value is None or str(value) in OWN_VAE_VALUES:
        return None
    path = find_vae_file_by_name(models_dir, str(value))
    if path is None:
        raise InputError(
            f"no VAE file called {value!r} in the models folder's {VAE_FOLDER}/",
            code="vae_not_found",
            field="override_settings.sd_vae",
        )
    return VaeFile.open(path)
