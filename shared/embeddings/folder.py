"""The embeddings folder: which files are candidates, in which order, what they are named, and noticing changes.

`RENDERFARM_MODELS_DIR/embeddings/`, walked at any depth, symbolic links followed (a link back up is walked once).
Order: a folder's files by name, then its sub-folders by name (the reference walks in the file system's order, which
is unspecified; a later file of the same name replaces an earlier one, so the order must be fixed). Empty files and
`*.preview.{png,webp,jxl,avif}` are skipped; other extensions are ignored. The name of a file's embedding is its
name without the last extension (`my.emb.pt` → `my.emb`); an image's JSON document may name it instead.

`FolderScanner` keeps what each file gave (any reader: the worker's torch loader, the scheduler's header reader) and
reads again only the files whose size, modification time or inode changed, so a rescan before every job costs one
`stat` per file (proposal P12: changes are seen at any depth, unlike the reference, which looks only at the top
folder's modification time).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar

__all__ = [
    "EMBEDDINGS_FOLDER",
    "IMAGE_SUFFIXES",
    "SAFETENSORS_SUFFIX",
    "TORCH_SUFFIXES",
    "FolderScanner",
    "Scan",
    "ScannedFile",
    "embedding_files",
    "embedding_name",
    "file_sha256",
]

log = logging.getLogger(__name__)

EMBEDDINGS_FOLDER: Final = "embeddings"  # under RENDERFARM_MODELS_DIR
TORCH_SUFFIXES: Final = frozenset({".pt", ".bin"})
SAFETENSORS_SUFFIX: Final = ".safetensors"
IMAGE_SUFFIXES: Final = frozenset({".png", ".webp", ".jxl", ".avif"})
_HASH_CHUNK: Final = 1024 * 1024

T = TypeVar("T")


def _is_candidate(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return Path(path.stem).suffix.lower() != ".preview"
    return suffix in TORCH_SUFFIXES or suffix == SAFETENSORS_SUFFIX


def _walk(folder: Path, seen: set[tuple[int, int]]) -> Iterator[Path]:
    try:
        info = folder.stat()
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        log.warning("cannot list %s: %s", folder, exc)
        return
    if (info.st_dev, info.st_ino) in seen:  # a symbolic link back to a folder already walked
        return
    seen.add((info.st_dev, info.st_ino))
    folders: list[Path] = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=True):
                folders.append(Path(entry.path))
            elif (
                entry.is_file(follow_symlinks=True)
                and _is_candidate(Path(entry.name))
                and entry.stat(follow_symlinks=True).st_size > 0
            ):
                yield Path(entry.path)
        except OSError as exc:  # a dangling link, a file removed meanwhile
            log.warning("skipping %s: %s", entry.path, exc)
    for sub in folders:
        yield from _walk(sub, seen)


def embedding_files(folder: Path) -> list[Path]:
    """The candidate files under `folder` in walk order (none when it does not exist)."""
    return list(_walk(folder, set())) if folder.is_dir() else []


def embedding_name(path: Path) -> str:
    """The name of a file's embedding: the file name without its last extension."""
    return os.path.splitext(path.name)[0]


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of the whole file: the reference's embedding hash; `TI hashes` shows its first 12 digits."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ScannedFile(Generic[T]):
    """One candidate file: what the reader made of it (None for a preview image), or why it failed."""

    path: Path
    value: T | None
    error: str | None = None


@dataclass(frozen=True)
class Scan(Generic[T]):
    files: tuple[ScannedFile[T], ...]
    changed: bool  # whether anything differs from the previous scan


_Stamp = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def _stamp(path: Path) -> _Stamp:
    info = path.stat()
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino


class FolderScanner(Generic[T]):
    """The files of one embeddings folder, each read by `read` (returning None for a file that holds no
    embedding); errors are kept per file with their message, never raised."""

    def __init__(self, folder: Path | None, read: Callable[[Path], T | None]) -> None:
        self.folder = folder
        self._read = read
        self._cache: dict[Path, tuple[_Stamp, ScannedFile[T]]] = {}
        self._order: tuple[Path, ...] | None = None
        self._lock = threading.Lock()

    def scan(self, *, force: bool = False) -> Scan[T]:
        """Read what changed since the last scan (everything with `force`)."""
        with self._lock:
            paths = embedding_files(self.folder) if self.folder is not None else []
            changed = force or self._order != tuple(paths)
            cache: dict[Path, tuple[_Stamp, ScannedFile[T]]] = {}
            for path in paths:
                try:
                    stamp = _stamp(path)
                except OSError as exc:
                    cache[path] = ((-1, -1, -1, -1), ScannedFile(path, None, f"cannot read the file: {exc}"))
                    changed = True
                    continue
                known = self._cache.get(path)
                if known is not None and known[0] == stamp and not force:
                    cache[path] = known
                    continue
                cache[path] = (stamp, self._read_one(path))
                changed = True
            self._cache = cache
            self._order = tuple(paths)
            return Scan(tuple(entry for _, entry in cache.values()), changed)

    def _read_one(self, path: Path) -> ScannedFile[T]:
        try:
            return ScannedFile(path, self._read(path))
        except Exception as exc:  # any malformed file is reported and skipped, as the reference does
            log.warning("embedding %s cannot be loaded: %s", path, exc)
            return ScannedFile(path, None, f"{type(exc).__name__}: {exc}")
