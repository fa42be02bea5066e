"""The reference's file hashes (docs/engine.md "Model files"; prompts-and-models.md §8.2 and §3.7) and a cache
that keeps them.

- `sha256` of the whole file: a checkpoint's identity; its first 10 hex digits are the short hash (`Model hash`,
  the `[…]` of a title), also the `VAE hash`;
- the legacy hash: 8 hex digits of sha256 over 64 KiB at offset 1 MiB (an old alias of a checkpoint);
- the LoRA "addnet" hash: sha256 over a safetensors file after its header (the tensors only, so editing the
  metadata keeps it), the whole file for `.pt`/`.ckpt`; 12 hex digits in `Lora hashes`. A `sshs_model_hash` in the
  metadata is used instead when present (the reference trusts it).

`HashCache` remembers hashes by absolute path, valid while the file's size and mtime_ns are unchanged, in one JSON
file under the data dir: a 7 GB checkpoint is read once, not at every start. Writes go to a temporary file renamed
over the cache (atomic), under a lock file, merging what another process wrote meanwhile, so two processes sharing
the data dir (scheduler and embedded worker, or two workers) never lose or corrupt each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

__all__ = [
    "HASH_CACHE_FILE",
    "LEGACY_HASH_HEX",
    "LORA_HASH_HEX",
    "SHORT_HASH_HEX",
    "HashCache",
    "addnet_hash",
    "file_sha256",
    "legacy_hash",
    "short_hash",
]

log = logging.getLogger(__name__)

HASH_CACHE_FILE: Final = "model-hashes.json"  # under the data dir
SHORT_HASH_HEX: Final = 10  # `Model hash`, `VAE hash`, a title's [shorthash]
LORA_HASH_HEX: Final = 12  # `Lora hashes`, `TI hashes`
LEGACY_HASH_HEX: Final = 8
LEGACY_OFFSET: Final = 0x100000  # 1 MiB
LEGACY_LENGTH: Final = 0x10000  # 64 KiB
_CHUNK: Final = 1024 * 1024
_CACHE_FORMAT: Final = 1


def _digest(path: Path, start: int = 0, length: int | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(start)
        left = length
        while left is None or left > 0:
            chunk = handle.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of the whole file."""
    return _digest(path)


def short_hash(sha256: str) -> str:
    """The first 10 hex digits: the reference's `shorthash`."""
    return sha256[:SHORT_HASH_HEX]


def legacy_hash(path: Path) -> str:
    """8 hex digits of sha256 over the 64 KiB at offset 1 MiB (less, or nothing, for a smaller file)."""
    return _digest(path, LEGACY_OFFSET, LEGACY_LENGTH)[:LEGACY_HASH_HEX]


def _safetensors_data_offset(path: Path) -> int | None:
    """Where a safetensors file's tensor data begins (8 + header length), or None when it is not one."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
    if len(prefix) != 8:
        return None
    (size,) = struct.unpack("<Q", prefix)
    return 8 + size if 8 + size <= path.stat().st_size else None


def addnet_hash(path: Path) -> str:
    """The full (64 hex) addnet hash of a LoRA file; see the module docstring. `sshs_model_hash` is the caller's
    business (it is metadata, read with the header)."""
    if path.suffix.lower() == ".safetensors" and (offset := _safetensors_data_offset(path)) is not None:
        return _digest(path, offset)
    return _digest(path)


# --------------------------------------------------------------------------------------------------------------
# The cache

_Entry = dict[str, object]  # {"size", "mtime_ns", "<kind>": hex, ...}


class HashCache:
    """Hashes by (absolute path, kind), valid while size and mtime_ns hold. `path=None`: kept in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, _Entry] = {}
        self._loaded_stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    # -- public -------------------------------------------------------------------------------------------------

    def get(self, file: Path, kind: str, compute: Callable[[Path], str]) -> str:
        """The `kind` hash of `file` ("sha256", "legacy", "addnet"), computed by `compute` only when unknown."""
        key = str(file.absolute())
        info = file.stat()
        stamp = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        with self._lock:
            self._reload_if_changed()
            entry = self._entries.get(key)
            if entry is not None and all(entry.get(k) == v for k, v in stamp.items()):
                value = entry.get(kind)
                if isinstance(value, str):
                    return value
        value = compute(file)  # outside the lock: hashing a large file takes seconds
        with self._lock:
            self._store(key, stamp, kind, value)
        return value

    # -- persistence --------------------------------------------------------------------------------------------

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            info = self.path.stat()
        except OSError:
            return None
        return info.st_size, info.st_mtime_ns

    def _read_file(self) -> dict[str, _Entry]:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # a damaged cache is rebuilt, never fatal
            log.warning("ignoring the hash cache %s: %s", self.path, exc)
            return {}
        entries = data.get("files") if isinstance(data, dict) and data.get("format") == _CACHE_FORMAT else None
        return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}

    def _reload_if_changed(self) -> None:
        """Take in what another process wrote since we last read the file (a stat when nothing changed)."""
        if self.path is None:
            return
        stamp = self._file_stamp()
        if stamp != self._loaded_stamp:
            self._entries.update(self._read_file())
            self._loaded_stamp = stamp

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        assert self.path is not None
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _store(self, key: str, stamp: dict[str, int], kind: str, value: str) -> None:
        entry = self._entries.get(key)
        if entry is None or any(entry.get(k) != v for k, v in stamp.items()):
            entry = dict(stamp)  # the file changed: its other hashes are stale too
        entry[kind] = value
        self._entries[key] = entry
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._file_lock():
                merged = self._read_file()  # another process may have added entries since
                merged.update(self._entries)
                merged[key] = entry
                text = json.dumps({"format": _CACHE_FORMAT, "files": merged}, indent=0, sort_keys=True)
                fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as handle:
                        handle.write(text)
                    os.replace(tmp, self.path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
                self._entries = merged
                self._loaded_stamp = self._file_stamp()
        except OSError as exc:  # a read-only data dir: hashes stay in memory
            log.warning("cannot write the hash cache %s: %s", self.path, exc)
