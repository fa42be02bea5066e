"""TEMPORARY: finding a LoRA / LyCORIS file by the name in a `<lora:NAME>` tag, on the worker.

The farm's model-file registry (shared/models) will answer this; until the integrator switches processing's
`lora_files` over to it, this small lookup does what prompts-and-models.md §3.3 describes: `<models>/Lora` then
`<models>/LyCORIS`, recursively, files `.safetensors .pt .ckpt`; the name is the file stem (a later file with the same
stem replaces an earlier one), else the safetensors metadata `ss_output_name` (an alias that collides with a name
or another alias, and `none`, do not count). Case-sensitive. Scanned at every lookup, so new files work at once.
"""

from __future__ import annotations

from pathlib import Path

from worker.engine.networks import NETWORK_SUFFIXES
from worker.engine.networks.files import safetensors_metadata

__all__ = ["LORA_FOLDERS", "find_lora_file"]

LORA_FOLDERS = ("Lora", "LyCORIS")


def _files(models_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in LORA_FOLDERS:
        root = models_dir / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in NETWORK_SUFFIXES and path.is_file():
                found[path.stem] = path
    return found


def find_lora_file(models_dir: Path | None, name: str) -> Path | None:
    """The file a tag's NAME means, or None."""
    if models_dir is None:
        return None
    files = _files(Path(models_dir))
    if name in files:
        return files[name]
    aliases: dict[str, Path | None] = {}
    for path in files.values():
        alias = safetensors_metadata(path).get("ss_output_name") if path.suffix.lower() == ".safetensors" else None
        if not alias or alias == path.stem:
            continue
        forbidden = alias.lower() == "none" or alias in files or alias in aliases
        aliases[alias] = None if forbidden else path
    return aliases.get(name)
