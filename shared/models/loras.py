"""LoRA / LyCORIS files (docs/engine.md "Model files"; prompts-and-models.md §3.3 and §3.7).

`<models>/Lora/` then `<models>/LyCORIS/`, at any depth, `.pt .ckpt .safetensors`. Name = the file stem without
folders (a later file of the same stem replaces an earlier one); alias = the safetensors metadata `ss_output_name`,
else the name. Lookup is case-sensitive, by name or alias; an alias colliding with another entry's name or alias is
forbidden (only the file name finds it then), and `none` is always forbidden. Metadata = the safetensors header's
`__metadata__` with JSON-looking strings decoded (`{}` for other files). The hash is the addnet hash (`hashes.py`),
or `sshs_model_hash` from the metadata.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shared.embeddings.safetensors_header import read_safetensors_header
from shared.models.hashes import LORA_HASH_HEX, HashCache, addnet_hash
from shared.models.layout import LORA_FOLDERS, LORA_SUFFIXES, walk_files

__all__ = ["FORBIDDEN_ALIASES", "Lora", "LoraIndex", "scan_loras"]

log = logging.getLogger(__name__)

FORBIDDEN_ALIASES: Final = frozenset({"none"})


@dataclass(frozen=True)
class Lora:
    name: str
    alias: str
    path: Path
    metadata: Mapping[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # the addnet hash (64 hex), None until asked for

    def listing(self) -> dict[str, Any]:
        """The reference's `/sdapi/v1/loras` item."""
        return {
            "name": self.name,
            "alias": self.alias,
            "path": str(self.path.absolute()),
            "metadata": dict(self.metadata),
        }


def _decoded(value: str) -> Any:
    if value.startswith(("{", "[")):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def read_metadata(path: Path) -> dict[str, Any]:
    """A safetensors file's metadata, JSON strings decoded; `{}` for other files or unreadable headers."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        return {key: _decoded(value) for key, value in read_safetensors_header(path)[1].items()}
    except (OSError, ValueError) as exc:
        log.warning("cannot read the metadata of %s: %s", path, exc)
        return {}


def lora_hash(lora: Lora, cache: HashCache) -> str:
    """The 12-hex hash of `Lora hashes`: `sshs_model_hash` when the metadata has it, else the addnet hash."""
    given = lora.metadata.get("sshs_model_hash")
    if isinstance(given, str) and given:
        return given[:LORA_HASH_HEX]
    return cache.get(lora.path, "addnet", addnet_hash)[:LORA_HASH_HEX]


def scan_loras(models_dir: Path | None) -> list[Lora]:
    """Every LoRA file, a later file of the same name replacing an earlier one (listed at the earlier's place)."""
    if models_dir is None:
        return []
    by_name: dict[str, Lora] = {}
    for folder in LORA_FOLDERS:
        for path in walk_files(models_dir / folder):
            if path.suffix.lower() not in LORA_SUFFIXES:
                continue
            metadata = read_metadata(path)
            output = metadata.get("ss_output_name")
            alias = output if isinstance(output, str) and output else path.stem
            by_name[path.stem] = Lora(path.stem, alias, path, metadata)
    return list(by_name.values())


class LoraIndex:
    """LoRAs by name and by (allowed) alias."""

    def __init__(self, entries: Sequence[Lora]) -> None:
        self.entries = tuple(entries)
        self._by_name = {entry.name: entry for entry in self.entries}
        self._by_alias: dict[str, Lora] = {}
        forbidden = set(FORBIDDEN_ALIASES)
        for entry in self.entries:
            if entry.alias in forbidden:
                continue
            other = self._by_alias.get(entry.alias)
            if (other is not None and other is not entry) or (
                entry.alias in self._by_name and self._by_name[entry.alias] is not entry
            ):
                forbidden.add(entry.alias)  # collides: only file names find these
                self._by_alias.pop(entry.alias, None)
                continue
            self._by_alias[entry.alias] = entry

    def find(self, name: str) -> Lora | None:
        """The LoRA `name` names (case-sensitive; a name first, then an alias), or None."""
        return self._by_name.get(name) or self._by_alias.get(name)
