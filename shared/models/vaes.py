"""VAE files and the `sd_vae` rule (docs/engine.md "Model files"; reference prompts-and-models.md §6).

Candidates: `<models>/VAE/**/*.{ckpt,pt,safetensors}`, then `*.vae.{ckpt,pt,safetensors}` among the checkpoints
(`<models>/Stable-diffusion/**` and the flat layout's top level), naturally sorted by file name; the name is the file
name with its extension; a later path of the same name wins.

`resolve_sd_vae` is the reference's resolution without its fallbacks that hide mistakes: an unknown name is not
"the checkpoint's own VAE" but an error the caller turns into a 422 (proposal P15).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shared.models.layout import CHECKPOINT_FOLDER, VAE_FOLDER, VAE_SUFFIXES, natural_key, walk_files

__all__ = ["AUTOMATIC", "NONE", "UnknownVae", "Vae", "resolve_sd_vae", "scan_vaes"]

AUTOMATIC: Final = "Automatic"
NONE: Final = "None"


class UnknownVae(LookupError):
    """`sd_vae` (or the checkpoint's `<stem>.json` `vae`) names no VAE file."""


@dataclass(frozen=True)
class Vae:
    name: str  # the file name with its extension
    path: Path

    def listing(self) -> dict[str, str]:
        """The reference's `/sdapi/v1/sd-vae` item."""
        return {"model_name": self.name, "filename": str(self.path.absolute())}


def _is_vae_beside_checkpoints(path: Path) -> bool:
    return path.suffix.lower() in VAE_SUFFIXES and Path(path.stem).suffix.lower() == ".vae"


def scan_vaes(models_dir: Path | None) -> list[Vae]:
    if models_dir is None:
        return []
    paths = [p for p in walk_files(models_dir / VAE_FOLDER) if p.suffix.lower() in VAE_SUFFIXES]
    paths += [p for p in walk_files(models_dir / CHECKPOINT_FOLDER) if _is_vae_beside_checkpoints(p)]
    if models_dir.is_dir():
        paths += [p for p in models_dir.iterdir() if p.is_file() and _is_vae_beside_checkpoints(p)]
    paths.sort(key=lambda p: natural_key(p.name))
    by_name: dict[str, Vae] = {}
    for path in paths:
        by_name[path.name] = Vae(path.name, path)
    return list(by_name.values())


def _user_metadata_vae(checkpoint: Path) -> str | None:
    """The `vae` key of the checkpoint's `<stem>.json` user metadata, when there is one."""
    try:
        data = json.loads(checkpoint.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("vae") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def resolve_sd_vae(value: str, checkpoint: Path | None, vaes: Sequence[Vae]) -> Path | None:
    """The VAE file a job with option `sd_vae = value` uses on `checkpoint` (None for a model without a file), or
    None for the checkpoint's own VAE. Raises UnknownVae for a name that is no candidate.

    The reference's order (with `sd_vae_overrides_per_model_preferences` on, its default): a name other than
    Automatic → that file ("None" → the own VAE); Automatic → the checkpoint's `<stem>.json` `vae` when set, else
    the first candidate whose file name starts with the checkpoint's file name minus its last extension (a prefix
    match: `model.safetensors` also picks `model2.vae.pt`), else the own VAE.
    """
    by_name: Mapping[str, Vae] = {vae.name: vae for vae in vaes}
    if value != AUTOMATIC:
        if value == NONE:
            return None
        if value not in by_name:
            raise UnknownVae(value)
        return by_name[value].path
    if checkpoint is None or checkpoint.is_dir():
        return None
    chosen = _user_metadata_vae(checkpoint)
    if chosen is not None:
        if chosen == NONE:
            return None
        if chosen not in by_name:
            raise UnknownVae(chosen)
        return by_name[chosen].path
    prefix = checkpoint.stem  # the file name minus its last extension
    for vae in vaes:
        if vae.name.startswith(prefix):
            return vae.path
    return None
