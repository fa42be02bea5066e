"""Checkpoints and their identity (docs/engine.md "Model files"; reference prompts-and-models.md §8.2).

A checkpoint is a `.safetensors`/`.ckpt` file (not `*.vae.*`) under `<models>/Stable-diffusion/` at any depth, or
directly in the models folder (the farm's flat layout); a diffusers model folder in either place (a farm extension:
the reference lists single files only); or one of the built-in tiny models.

Identity, as the reference's: `name` = path relative to the checkpoints folder with its extension
(`sub/x.safetensors`; a folder's name; a tiny model's name), `model_name` = `name` without the extension with `/`
and `\\` → `_`, `stem` = the file name without extension (the infotext's `Model`), `sha256` of the file (of a
folder's UNet weights, read in order; of a description for the tiny models), `shorthash` = its first 10 hex
digits, `title` = `name [shorthash]`, `config` = `<stem>.yaml` beside the file or None. Hashes are computed when
the folder is scanned (so listings never show a null hash, P18) and kept in the hash cache.

`name` is also the canonical model name a job stores once an alias is resolved (`resolve`, P19).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from shared.models.hashes import HashCache, file_sha256, legacy_hash, short_hash
from shared.models.layout import (
    CHECKPOINT_FOLDER,
    CHECKPOINT_SUFFIXES,
    WEBUI_FOLDERS,
    natural_key,
    walk_files,
)
from shared.models.tiny import TINY_NAMES, tiny_sha256

__all__ = ["Checkpoint", "CheckpointIndex", "checkpoint_names", "scan_checkpoints", "split_title"]

CheckpointKind = Literal["file", "folder", "tiny"]
_TITLE_RE: Final = re.compile(r"^(?P<name>.*?)\s*\[(?P<hash>[0-9A-Fa-f]{8,64})\]$")


@dataclass(frozen=True)
class Checkpoint:
    name: str
    model_name: str
    stem: str
    kind: CheckpointKind
    path: Path | None  # None for the tiny models (built by the worker)
    sha256: str
    legacy: str | None  # files only
    config: Path | None

    @property
    def shorthash(self) -> str:
        return short_hash(self.sha256)

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]"

    @property
    def filename(self) -> str:
        """The listing's `filename`: the absolute path (the name for a tiny model, which has no file)."""
        return str(self.path.absolute()) if self.path is not None else self.name

    def listing(self) -> dict[str, object]:
        """The reference's `/sdapi/v1/sd-models` item."""
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.shorthash,
            "sha256": self.sha256,
            "filename": self.filename,
            "config": str(self.config.absolute()) if self.config is not None else None,
        }

    def aliases(self) -> list[str]:
        """Every form of prompts-and-models.md §8.2 that names this checkpoint."""
        forms = [
            self.title,
            self.name,
            self.model_name,
            self.stem,
            self.shorthash,
            self.sha256,
            f"{self.stem} [{self.shorthash}]",
        ]
        if self.legacy is not None:
            forms += [self.legacy, f"{self.name} [{self.legacy}]"]
        return forms


def split_title(text: str) -> tuple[str, str | None]:
    """`"x.safetensors [0123abcd45]"` → `("x.safetensors", "0123abcd45")`; other text → `(text, None)`."""
    match = _TITLE_RE.match(text.strip())
    return (match.group("name"), match.group("hash").lower()) if match else (text.strip(), None)


def _folder_weights(folder: Path) -> tuple[Path, ...]:
    """The UNet weights a folder's hash covers, in the order the worker reads them (its `_weights_in`)."""
    unet = folder / "unet"
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(p for p in unet.glob(pattern) if ".fp16." not in p.name)
        if files:
            return tuple(files)
    return tuple(sorted(unet.glob("*.fp16.safetensors")))


def _folder_sha256(weights: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in weights:
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    return digest.hexdigest()


def _is_checkpoint_file(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in CHECKPOINT_SUFFIXES and Path(path.stem).suffix.lower() != ".vae"


def _model_name(name: str) -> str:
    base = name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name
    return base.replace("/", "_").replace("\\", "_")


def _candidates(models_dir: Path) -> list[tuple[str, Path]]:
    """(name, path) of every checkpoint file and diffusers folder: `Stable-diffusion/` first, then the flat layout's
    top level (a name found twice keeps the first)."""
    found: list[tuple[str, Path]] = []
    root = models_dir / CHECKPOINT_FOLDER
    for path in walk_files(root, stop_at_diffusers=True):
        if path.is_dir() or _is_checkpoint_file(path):
            found.append((path.relative_to(root).as_posix(), path))
    if models_dir.is_dir():
        top = sorted(os.scandir(models_dir), key=lambda entry: natural_key(entry.name))
        for entry in top:
            path = Path(entry.path)
            if entry.name.startswith(".") or entry.name in WEBUI_FOLDERS:
                continue
            try:
                if entry.is_dir(follow_symlinks=True) or (entry.is_file() and _is_checkpoint_file(path)):
                    found.append((entry.name, path))
            except OSError:
                continue
    return found


def _entry(name: str, path: Path, cache: HashCache) -> Checkpoint:
    if path.is_dir():
        weights = _folder_weights(path)
        if weights:  # cached under the first weight file, whose size and mtime stand for the set
            sha = cache.get(weights[0], f"folder:{len(weights)}", lambda _first: _folder_sha256(weights))
        else:  # no UNet weights (configs only): the worker cannot load it; identified by its name
            sha = hashlib.sha256(f"renderfarm-folder:{name}".encode()).hexdigest()
        return Checkpoint(name, _model_name(name), path.name, "folder", path, sha, None, None)
    sha = cache.get(path, "sha256", file_sha256)
    legacy = cache.get(path, "legacy", legacy_hash)
    config = path.with_suffix(".yaml")
    return Checkpoint(
        name, _model_name(name), path.stem, "file", path, sha, legacy, config if config.is_file() else None
    )


def _tiny_entry(name: str) -> Checkpoint:
    return Checkpoint(name, name, name, "tiny", None, tiny_sha256(name), None, None)


def scan_checkpoints(models_dir: Path | None, cache: HashCache) -> list[Checkpoint]:
    """The tiny models, then the checkpoints of `models_dir`, hashed (through `cache`)."""
    entries = [_tiny_entry(n) for n in TINY_NAMES]
    seen = set(TINY_NAMES)
    if models_dir is not None:
        for name, path in _candidates(models_dir):
            if name in seen:
                continue
            try:
                entry = _entry(name, path, cache)
            except OSError:
                continue  # removed or unreadable meanwhile: not a model
            seen.add(name)
            entries.append(entry)
    return entries


def checkpoint_named(name: str, models_dir: Path | None, cache: HashCache) -> Checkpoint | None:
    """The checkpoint whose canonical name is `name`, hashing that file alone; None when no checkpoint has that
    name (it may still be another alias). The entry is the one `scan_checkpoints` lists under that name.

    A worker's jobs name their model canonically (the scheduler resolved the alias at submission), so a worker
    starting with an empty hash cache reads only the checkpoints it renders with, not the whole folder."""
    if name in TINY_NAMES:
        return _tiny_entry(name)
    if models_dir is None:
        return None
    for candidate, path in _candidates(models_dir):
        if candidate == name:  # the first of a name, as scan_checkpoints keeps it
            try:
                return _entry(candidate, path, cache)
            except OSError:
                return None
    return None


def checkpoint_names(models_dir: Path | None) -> list[str]:
    """The canonical names `scan_checkpoints` would list, in its order, without hashing anything: a directory walk
    (what a worker announces on every heartbeat must not wait for a new 7 GB file to be hashed)."""
    names = list(TINY_NAMES)
    if models_dir is not None:
        names += [name for name, _path in _candidates(models_dir)]
    return list(dict.fromkeys(names))


class CheckpointIndex:
    """Checkpoints by every alias (prompts-and-models.md §8.2). The first checkpoint claiming an alias keeps it (a
    stem shared by two files names the first in listing order, as the reference's lookup does)."""

    def __init__(self, entries: Sequence[Checkpoint]) -> None:
        self.entries = tuple(entries)
        self._by_alias: dict[str, Checkpoint] = {}
        for entry in self.entries:  # exact names first, so no alias of one shadows another's name
            self._by_alias.setdefault(entry.name, entry)
        for entry in self.entries:
            for alias in entry.aliases():
                self._by_alias.setdefault(alias, entry)
                self._by_alias.setdefault(alias.lower(), entry) if _is_hex(alias) else None

    def resolve(self, text: str) -> Checkpoint | None:
        """The checkpoint `text` names, or None."""
        text = text.strip()
        found = self._by_alias.get(text) or (self._by_alias.get(text.lower()) if _is_hex(text) else None)
        if found is not None:
            return found
        name, hash_ = split_title(text)
        if hash_ is not None:
            entry = self._by_alias.get(name)
            if entry is not None and hash_ in (entry.shorthash, entry.sha256, entry.legacy):
                return entry
        return None


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)
