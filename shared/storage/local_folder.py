"""The local folder backend, the embedded default: objects as files, served by the API through signed URLs."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

from shared.errors import ConfigError, NotFound, StorageUnavailable
from shared.storage.interface import Storage, StoredObject, check_expires_s, checked_sha256, sha256_hex
from shared.storage.keys import validate_key, validate_prefix

DOWNLOAD_ROUTE = "/v1/files/"  # where the API serves the local folder; `download_path` builds the rest


def download_path(key: str) -> str:
    """The URL path under which the API serves `key` from the local folder: `/v1/files/` + the quoted key.

    Every character outside `A-Z a-z 0-9 _ . - ~ /` is percent-encoded (so `(`, `)` and `:` are too): a quoted
    path means the same to every proxy, router and HTTP client.
    """
    return DOWNLOAD_ROUTE + quote(validate_key(key), safe="/")


class LocalFolderStorage(Storage):
    """Objects as files under `root`, served by the API at `{public_url}/v1/files/{key}?expires=&sig=`.

    Layout: `root/objects/{key}` holds the data, `root/meta/{key}.json` its sha256, size and content type, and
    `root/tmp/` the files being written (on the same file system, so `os.replace` is atomic and a reader never
    sees half a file). Data is written before its sidecar; a sidecar that does not describe the file now in
    place (a writer that died between the two, or two writers of one key) is ignored and the answer is computed
    from the data.

    Download URLs carry an expiry (unix seconds) and an HMAC-SHA256 of key and expiry under `signing_key`;
    the API route checks them with `verify_download`. `clock` (unix seconds) dates them: `time.time`, or a
    clock a test can advance.
    """

    def __init__(
        self, root: Path, public_url: str, signing_key: bytes, *, clock: Callable[[], float] = time.time
    ) -> None:
        if len(signing_key) < 16:
            raise ConfigError(
                "the signing key of local download URLs must be at least 16 bytes", field="RENDERFARM_SIGNING_KEY"
            )
        self.root = Path(root)
        self.public_url = public_url.rstrip("/")
        self._signing_key = signing_key
        self._clock = clock
        self._objects = self.root / "objects"
        self._meta = self.root / "meta"
        self._tmp = self.root / "tmp"
        for folder in (self._objects, self._meta, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalFolderStorage({str(self.root)!r})"

    def _data_path(self, key: str) -> Path:
        return self._objects / validate_key(key)

    def _meta_path(self, key: str) -> Path:
        return self._meta / (validate_key(key) + ".json")

    def local_path(self, key: str) -> Path:
        """The file that holds `key`'s data, for the API to stream. Raises NotFound when it is missing."""
        path = self._data_path(key)
        if not path.is_file():
            raise NotFound(f"no stored object {key!r}")
        return path

    def _write_atomically(self, path: Path, data: bytes) -> os.stat_result:
        """Write `data` to `path` through a temporary file; returns the stat of the file now at `path`."""
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                # Without fsync a power cut after os.replace can leave an empty file under the final name.
                os.fsync(handle.fileno())
                written = os.fstat(handle.fileno())
            os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; the data is not secret from the farm's other users
            for _ in range(3):
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(tmp_name, path)
                    return written
                except FileNotFoundError:
                    # A concurrent delete() removed the (empty) parent folder between mkdir and replace.
                    continue
            raise StorageUnavailable(f"cannot create the folder of {path} (concurrent deletes)")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    def put(self, key: str, data: bytes, content_type: str, sha256: str | None = None) -> StoredObject:
        data_path = self._data_path(key)
        digest = checked_sha256(data, sha256)
        stored = StoredObject(key=key, sha256=digest, size=len(data), content_type=content_type)
        try:
            written = self._write_atomically(data_path, data)
            # The sidecar names the exact file it describes (inode, mtime), so that when two writers of one key
            # interleave (data A, data B, meta B, meta A), head() notices that the sidecar is not the data's.
            meta = {
                "sha256": digest,
                "size": len(data),
                "content_type": content_type,
                "ino": written.st_ino,
                "mtime_ns": written.st_mtime_ns,
            }
            self._write_atomically(self._meta_path(key), json.dumps(meta).encode("utf-8"))
        except (IsADirectoryError, NotADirectoryError) as exc:
            # The folder layout cannot hold both "a" and "a/b"; S3 can, but the farm's keys never need it.
            raise ValueError(f"storage key {key!r} collides with another key's folder: {exc}") from exc
        except OSError as exc:  # a full or failing disk: a later attempt may succeed
            raise StorageUnavailable(f"cannot write {key!r} to the storage folder {self.root}: {exc}") from exc
        return stored

    def get(self, key: str) -> bytes:
        try:
            return self._data_path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no stored object {key!r}") from None

    def head(self, key: str) -> StoredObject:
        data_path = self._data_path(key)
        try:
            data_stat = data_path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no stored object {key!r}") from None
        if not data_path.is_file():
            raise NotFound(f"no stored object {key!r}")
        try:
            meta = json.loads(self._meta_path(key).read_bytes())
            if (meta["size"], meta["ino"], meta["mtime_ns"]) == (
                data_stat.st_size,
                data_stat.st_ino,
                data_stat.st_mtime_ns,
            ):
                return StoredObject(
                    key=key, sha256=meta["sha256"], size=data_stat.st_size, content_type=meta["content_type"]
                )
        except (OSError, ValueError, KeyError, TypeError):
            pass
        # No sidecar, or a stale one: answer from the data itself (slow, but right).
        data = self.get(key)
        return StoredObject(key=key, sha256=sha256_hex(data), size=len(data), content_type="application/octet-stream")

    def exists(self, key: str) -> bool:
        return self._data_path(key).is_file()

    def delete(self, key: str) -> None:
        for path, top in ((self._data_path(key), self._objects), (self._meta_path(key), self._meta)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            # Retention deletes whole tasks: drop the folders they leave empty, up to (not including) the top.
            parent = path.parent
            while parent != top:
                try:
                    parent.rmdir()
                except OSError:  # not empty, or already gone
                    break
                parent = parent.parent

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        # Walk only the deepest folder the prefix names; filter the rest as a string prefix, as S3 does.
        folder = prefix.rpartition("/")[0]
        start = self._objects / folder if folder else self._objects
        keys: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            relative = Path(dirpath).relative_to(self._objects).as_posix()
            for name in filenames:
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        # S3 lists in ascending UTF-8 byte order; sort the same way so callers see one order on both backends.
        keys.sort(key=lambda k: k.encode("utf-8"))
        yield from keys

    def _signature(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    def download_url(self, key: str, expires_s: int) -> str:
        expires = int(self._clock()) + check_expires_s(expires_s)
        return f"{self.public_url}{download_path(key)}?expires={expires}&sig={self._signature(key, expires)}"

    def verify_download(self, key: str, expires: int | str, sig: str) -> None:
        """Check a download URL's `expires` (unix seconds) and `sig` for `key` (the unquoted key).

        Raises NotFound — never a 403, which would tell a prober that the object exists — when the key is
        invalid, the signature does not match (compared in constant time) or the URL has expired.
        """
        try:
            validate_key(key)
            expires_at = int(expires)
        except (TypeError, ValueError):
            raise NotFound("no such file") from None
        # compare_digest refuses non-ASCII str; such a signature is wrong anyway.
        valid = isinstance(sig, str) and sig.isascii() and hmac.compare_digest(self._signature(key, expires_at), sig)
        if not valid or self._clock() > expires_at:
            raise NotFound("no such file")

    def check(self) -> None:
        """Raise StorageUnavailable unless the folder is writable."""
        try:
            with tempfile.TemporaryFile(dir=self._tmp):
                pass
        except OSError as exc:
            raise StorageUnavailable(f"the storage folder {self.root} is not writable: {exc}") from exc
