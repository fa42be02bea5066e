"""The `Storage` interface that both backends implement, what it answers (`StoredObject`), and the checks that
both backends make the same way (a given sha256, a download URL's lifetime)."""

from __future__ import annotations

import hashlib
import hmac
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

from shared.errors import InputError, NotFound

STORAGE_SETTING = "RENDERFARM_STORAGE_URL"  # the setting that names the store; errors point at it
MAX_DOWNLOAD_URL_EXPIRES_S = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer than 7 days


@dataclass(frozen=True)
class StoredObject:
    """What the store knows about one object. `size` is in bytes; `sha256` is lowercase hex of the data."""

    key: str
    sha256: str
    size: int
    content_type: str


class Storage(ABC):
    """An object store: bytes under keys, each with its sha256, size and content type."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str, sha256: str | None = None) -> StoredObject:
        """Store `data` under `key`, replacing what was there; readers see the old or the new object, never half.

        `sha256` (hex), when given, must match the data (InputError otherwise); when omitted it is computed.
        Raises ValueError for an invalid key, StorageUnavailable when the store is briefly unreachable.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's data. Raises NotFound when there is no object under `key`."""

    @abstractmethod
    def head(self, key: str) -> StoredObject:
        """The object's sha256, size and content type, without reading its data. Raises NotFound."""

    def exists(self, key: str) -> bool:
        """True when an object is stored under `key`."""
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error (deletes are retried)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with `prefix` (a plain string prefix, as S3's), in ascending order, all pages."""

    @abstractmethod
    def download_url(self, key: str, expires_s: int) -> str:
        """A URL that lets anyone holding it GET the object for `expires_s` seconds (1 to 7 days' worth).

        Raises ValueError for an invalid key or lifetime. Does not check that the object exists.
        """

    @abstractmethod
    def check(self) -> None:
        """Raise unless the store is reachable and usable (for readiness probes): StorageUnavailable when it is
        unreachable, ConfigError when it refuses us."""

    def close(self) -> None:  # noqa: B027 - a default no-op, not an abstract method
        """Release connections. The object must not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_expires_s(expires_s: int) -> int:
    """`expires_s` as an int when it is a lifetime every backend can give a download URL; ValueError otherwise."""
    if not 1 <= expires_s <= MAX_DOWNLOAD_URL_EXPIRES_S:
        raise ValueError(f"expires_s must be 1..{MAX_DOWNLOAD_URL_EXPIRES_S} seconds, not {expires_s}")
    return int(expires_s)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked_sha256(data: bytes, sha256: str | None) -> str:
    """The sha256 of `data`; if the caller gave one, it must match (InputError otherwise: the data is not what
    the caller claims, and storing it under that claim would poison content-addressed keys)."""
    actual = sha256_hex(data)
    if sha256 is not None and not hmac.compare_digest(sha256.lower(), actual):
        raise InputError(
            f"the data's sha256 is {actual}, not the given {sha256}", code="sha256_mismatch", field="sha256"
        )
    return actual
