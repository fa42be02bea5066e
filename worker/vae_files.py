"""The worker's side of `override_settings.sd_vae`: the VAE file a job uses, chosen by the model files' rule
(`shared.models.vaes.resolve_sd_vae`, prompts-and-models.md §6): a file name from `/sdapi/v1/sd-vae`, "None"
for the checkpoint's own VAE, "Automatic" (also when the job sets nothing, the reference's default) for the
checkpoint's `<stem>.json` choice or a VAE file named after the checkpoint, else its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import InputError
from shared.models import model_files
from shared.models.vaes import AUTOMATIC, UnknownVae
from worker.engine.vae_files import VaeFile

__all__ = ["vae_file_for_job"]


def vae_file_for_job(
    override_settings: Mapping[str, Any], model_name: str, models_dir: Path | None, data_dir: Path | None = None
) -> VaeFile | None:
    """The external VAE a job on model `model_name` uses, or None for the checkpoint's own. Raises InputError (field
    `override_settings.sd_vae`) for a name no file answers to (P15: the reference silently falls back); the
    scheduler refuses such names at submission, so this is a file removed since."""
    catalogue = model_files(models_dir, data_dir)
    value = override_settings.get("sd_vae") or AUTOMATIC
    checkpoint = catalogue.resolve_checkpoint(model_name)
    try:
        path = catalogue.vae_for(str(value), checkpoint)
    except UnknownVae as exc:
        raise InputError(
            f"no VAE file called {exc.args[0]!r} in the models folder (GET /sdapi/v1/sd-vae lists them)",
            code="vae_not_found",
            field="override_settings.sd_vae",
        ) from None
    return VaeFile.open(path) if path is not None else None
