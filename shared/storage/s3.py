"""Where inputs, results, overlays and masks live: one `Storage` interface, two backends.

    Storage (ABC)
    ├── LocalFolderStorage   the embedded default: a folder, served by the API under /v1/files/{key}
    └── S3Storage            any S3-compatible store through boto3 (AWS, MinIO, R2, moto)

Keys are `/`-separated relative paths (`validate_key`); the farm builds them with `artifact_key` and `asset_key`.
Every stored object keeps its sha256 beside it, so `head()` answers without reading the data.

Errors: a missing object is `NotFound`; a store that is briefly unreachable, throttling or failing (5xx) is
`StorageUnavailable` (transient: the job is retried); a store that refuses us (bad credentials, no such bucket) is
`ConfigError` naming RENDERFARM_STORAGE_URL (permanent: retrying cannot help).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote, unquote, urlparse, urlsplit

from shared.errors import ConfigError, InputError, NotFound, PermanentError, StorageUnavailable
from shared.job.artifacts import ARTIFACT_KINDS
from shared.job.ids import is_valid_task_id, task_id_problem

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from shared.config import Settings

__all__ = [
    "MAX_DOWNLOAD_URL_EXPIRES_S",
    "MAX_KEY_BYTES",
    "LocalFolderStorage",
    "S3Storage",
    "Storage",
    "StoredObject",
    "artifact_key",
    "asset_key",
    "download_path",
    "load_or_create_signing_key",
    "open_storage",
    "validate_key",
]

STORAGE_SETTING = "RENDERFARM_STORAGE_URL"
MAX_KEY_BYTES = 1024  # S3's limit on a key (UTF-8 bytes); the local folder keeps the same rule
MAX_DOWNLOAD_URL_EXPIRES_S = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer than 7 days
DOWNLOAD_ROUTE = "/v1/files/"  # where the API serves the local folder; `download_path` builds the rest
SIGNING_KEY_FILE = "signing.key"  # in DATA_DIR, when RENDERFARM_SIGNING_KEY is unset
SIGNING_KEY_BYTES = 32

S3_MAX_ATTEMPTS = 5  # boto3 "standard" retry mode: attempts, including the first
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 60.0
S3_LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's maximum)

_TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # as shared.config accepts tenants
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A segment that no tenant or task id can be ('~' is outside both alphabets), so that a task named "assets" can
# never share a prefix with the assets, and deleting a task's keys by prefix can never reach an asset.
_ASSETS_SEGMENT = "~assets"


@dataclass(frozen=True)
class StoredObject:
    """What the store knows about one object. `size` is in bytes; `sha256` is lowercase hex of the data."""

    key: str
    sha256: str
    size: int
    content_type: str


# --------------------------------------------------------------------------------------------------------------
# Keys


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a valid object key.

    A key is a relative `/`-separated path: not empty, no leading `/`, no empty, `.` or `..` segment, no
    backslash, no control character, at most MAX_KEY_BYTES bytes of UTF-8. The same rule holds for both
    backends, so a key that works in the embedded default works on S3 and cannot escape the local folder.

    Raises ValueError naming the problem: keys are built by the farm's code, so a bad one is a bug, not input.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"storage key must be a non-empty string, not {key!r}")
    if "\\" in key:
        raise ValueError(f"storage key {key!r} contains a backslash")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise ValueError(f"storage key {key!r} contains a control character")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"storage key is longer than {MAX_KEY_BYTES} bytes: {key[:80]!r}...")
    if key.startswith("/"):
        raise ValueError(f"storage key {key!r} must be relative (no leading '/')")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"storage key {key!r} has an empty, '.' or '..' segment")
    return key


def _validate_prefix(prefix: str) -> str:
    """A list prefix is any start of a valid key: "" (everything) or a key that may end with `/`."""
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def artifact_key(tenant: str, task_id: str, attempt: int, kind: str, index: int) -> str:
    """`{tenant}/{task_id}/{attempt}/{kind}-{index}.png`, the deterministic key of one output of one attempt.

    `kind` is "result", "overlay" or "mask"; `attempt` and `index` are counted from 0 or 1 as the caller does,
    but never negative. Task ids may contain `( ) :` (A1111's `task(img2img-XXXX)`); the key keeps them as they
    are (both backends accept them) and `download_path` / presigned URLs percent-encode them.

    Raises ValueError for a tenant or task id outside their alphabets, an unknown kind or a negative number.
    """
    _check_tenant(tenant)
    if not is_valid_task_id(task_id):
        raise ValueError(f"task id {task_id!r} {task_id_problem()}")
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"artifact kind must be one of {sorted(ARTIFACT_KINDS)}, not {kind!r}")
    if attempt < 0 or index < 0:
        raise ValueError(f"attempt and index must not be negative (got {attempt}, {index})")
    return validate_key(f"{tenant}/{task_id}/{attempt}/{kind}-{index}.png")


def asset_key(tenant: str, sha256: str) -> str:
    """`{tenant}/~assets/{sha256}`: an uploaded input image, content-addressed within its tenant.

    Raises ValueError for a bad tenant or a sha256 that is not 64 lowercase hex digits.
    """
    _check_tenant(tenant)
    if not _SHA256_RE.match(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, not {sha256!r}")
    return f"{tenant}/{_ASSETS_SEGMENT}/{sha256}"


def _check_tenant(tenant: str) -> None:
    if not _TENANT_RE.match(tenant) or tenant in (".", ".."):
        raise ValueError(f"tenant {tenant!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")


def download_path(key: str) -> str:
    """The URL path under which the API serves `key` from the local folder: `/v1/files/` + the quoted key.

    Every character outside `A-Z a-z 0-9 _ . - ~ /` is percent-encoded (so `(`, `)` and `:` are too): a quoted
    path means the same to every proxy, router and HTTP client.
    """
    return DOWNLOAD_ROUTE + quote(validate_key(key), safe="/")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checked_sha256(data: bytes, sha256: str | None) -> str:
    """The sha256 of `data`; if the caller gave one, it must match (InputError otherwise: the data is not what
    the caller claims, and storing it under that claim would poison content-addressed keys)."""
    actual = _sha256_hex(data)
    if sha256 is not None and not hmac.compare_digest(sha256.lower(), actual):
        raise InputError(
            f"the data's sha256 is {actual}, not the given {sha256}", code="sha256_mismatch", field="sha256"
        )
    return actual


# --------------------------------------------------------------------------------------------------------------
# The interface


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


def _check_expires_s(expires_s: int) -> int:
    if not 1 <= expires_s <= MAX_DOWNLOAD_URL_EXPIRES_S:
        raise ValueError(f"expires_s must be 1..{MAX_DOWNLOAD_URL_EXPIRES_S} seconds, not {expires_s}")
    return int(expires_s)


# --------------------------------------------------------------------------------------------------------------
# The local folder


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
        digest = _checked_sha256(data, sha256)
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
        return StoredObject(key=key, sha256=_sha256_hex(data), size=len(data), content_type="application/octet-stream")

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
        _validate_prefix(prefix)
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
        expires = int(self._clock()) + _check_expires_s(expires_s)
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


# --------------------------------------------------------------------------------------------------------------
# S3


_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalError",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_REFUSED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
        "NoSuchBucket",
        "PermanentRedirect",
        "InvalidBucketName",
    }
)


@dataclass(frozen=True)
class _Clients:
    pid: int
    api: S3Client  # talks to the store (endpoint_url)
    public: S3Client  # only signs URLs (public_endpoint_url); never sends a request


class S3Storage(Storage):
    """Objects in an S3-compatible bucket under `prefix`, through boto3.

    Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an
    instance role). The sha256 is stored as the object's `x-amz-meta-sha256`. Clients are made lazily, one pair
    per process (keyed by pid), so a Celery prefork child never reuses the parent's sockets.

    `max_attempts`, `connect_timeout_s` and `read_timeout_s` tune boto3's retries and timeouts (the defaults are
    reliability.md's); `list_page_size` is the ListObjectsV2 page size in keys.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        *,
        max_attempts: int = S3_MAX_ATTEMPTS,
        connect_timeout_s: float = S3_CONNECT_TIMEOUT_S,
        read_timeout_s: float = S3_READ_TIMEOUT_S,
        list_page_size: int = S3_LIST_PAGE_SIZE,
    ) -> None:
        if not bucket:
            raise ConfigError(f"{STORAGE_SETTING} s3:// needs a bucket name", field=STORAGE_SETTING)
        if not 1 <= list_page_size <= 1000:
            raise ValueError(f"list_page_size must be 1..1000 keys, not {list_page_size}")
        self.bucket = bucket
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url or None
        self.public_endpoint_url = public_endpoint_url or self.endpoint_url
        self.region = region
        self.max_attempts = max_attempts
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.list_page_size = list_page_size
        self._clients_state: _Clients | None = None
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint_url!r})"

    # -- clients -----------------------------------------------------------------------------------------------

    def _make_client(self, endpoint_url: str | None) -> S3Client:
        import boto3
        from botocore.config import Config

        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            # boto3 1.36+ adds CRC checksums that several S3-compatible stores reject (aws-cli 9214); we keep our
            # own sha256 and send Content-MD5, which every store checks.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        )
        # A Session per client: boto3's default session is not thread-safe to create clients from.
        session = boto3.session.Session()
        try:
            return session.client("s3", endpoint_url=endpoint_url, config=config)
        except ValueError as exc:  # botocore's word for a malformed endpoint URL
            raise ConfigError(
                f"RENDERFARM_S3_ENDPOINT_URL / RENDERFARM_S3_PUBLIC_ENDPOINT_URL {endpoint_url!r}: {exc}",
                field="RENDERFARM_S3_ENDPOINT_URL",
            ) from exc

    def _clients(self) -> _Clients:
        pid = os.getpid()
        state = self._clients_state
        if state is not None and state.pid == pid:
            return state
        if self._lock_pid != pid:
            # Forked: the parent's lock may have been held at fork time; start over with a fresh one.
            self._lock = threading.Lock()
            self._lock_pid = pid
        with self._lock:
            state = self._clients_state
            if state is None or state.pid != pid:
                api = self._make_client(self.endpoint_url)
                public = (
                    api
                    if self.public_endpoint_url == self.endpoint_url
                    else self._make_client(self.public_endpoint_url)
                )
                # The parent's clients are dropped, not closed: closing would shut sockets the parent still uses.
                state = self._clients_state = _Clients(pid, api, public)
        return state

    def close(self) -> None:
        state, self._clients_state = self._clients_state, None
        if state is not None and state.pid == os.getpid():
            state.api.close()
            if state.public is not state.api:
                state.public.close()

    # -- errors ------------------------------------------------------------------------------------------------

    def _translate(self, exc: Exception, key: str | None) -> Exception:
        """Map a boto3/botocore error to the farm's: NotFound, StorageUnavailable, ConfigError or PermanentError."""
        from botocore import exceptions as bex

        where = f"s3://{self.bucket}/{self.prefix}{key or ''}"
        if isinstance(exc, bex.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
                return NotFound(f"no stored object {key!r}")
            if code in _THROTTLING_CODES or status == 429 or status >= 500:
                return StorageUnavailable(f"S3 is unavailable ({code or status}) for {where}")
            if code in _REFUSED_CODES or status in (301, 401, 403):
                return ConfigError(
                    f"S3 refused {where} ({code or status}: {error.get('Message', '')}); check {STORAGE_SETTING}, "
                    "RENDERFARM_S3_ENDPOINT_URL and the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
                    code="storage_refused",
                    field=STORAGE_SETTING,
                )
            return PermanentError(f"S3 rejected a request for {where}: {code or status}", code="storage_rejected")
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError | bex.CredentialRetrievalError):
            return ConfigError(
                f"no usable S3 credentials for {STORAGE_SETTING} ({exc}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or give the machine a role",
                code="storage_credentials",
                field=STORAGE_SETTING,
            )
        if isinstance(exc, bex.ConnectionError | bex.HTTPClientError | bex.IncompleteReadError):
            return StorageUnavailable(f"S3 endpoint {self.endpoint_url or 'AWS'} unreachable for {where}: {exc}")
        return exc

    def _call(self, key: str | None, operation: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._clients().api
        try:
            return getattr(client, operation)(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, key) from exc

    # -- the interface -----------------------------------------------------------------------------------------

    def _full_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put(self, key: str, data: bytes, content_type: str, sha256: str | None = None) -> StoredObject:
        full_key = self._full_key(key)
        digest = _checked_sha256(data, sha256)
        self._call(
            key,
            "put_object",
            Key=full_key,
            Body=data,
            ContentType=content_type,
            ContentLength=len(data),
            # The store checks the body against this and refuses a corrupted upload.
            ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode("ascii"),  # noqa: S324 - integrity, not security
            Metadata={"sha256": digest},
        )
        return StoredObject(key=key, sha256=digest, size=len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError

        response = self._call(key, "get_object", Key=self._full_key(key))
        body = response["Body"]
        try:
            data: bytes = body.read()
        except BotoCoreError as exc:  # the connection dropped mid-body
            raise self._translate(exc, key) from exc
        finally:
            body.close()
        return data

    def head(self, key: str) -> StoredObject:
        response = self._call(key, "head_object", Key=self._full_key(key))
        size = int(response["ContentLength"])
        content_type = str(response.get("ContentType") or "application/octet-stream")
        sha256 = (response.get("Metadata") or {}).get("sha256")
        if not sha256:
            # Written by something other than the farm: compute it once from the data (slow, but right).
            sha256 = _sha256_hex(self.get(key))
        return StoredObject(key=key, sha256=sha256, size=size, content_type=content_type)

    def exists(self, key: str) -> bool:
        try:
            self._call(key, "head_object", Key=self._full_key(key))
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(key, "delete_object", Key=self._full_key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        _validate_prefix(prefix)
        paginator = self._clients().api.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": self.list_page_size},
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix) :]
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, prefix) from exc

    def download_url(self, key: str, expires_s: int) -> str:
        # Signed locally by the client of the public endpoint: no request is sent, and the host in the
        # signature is the one clients outside the cluster will use.
        url: str = self._clients().public.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._full_key(key)},
            ExpiresIn=_check_expires_s(expires_s),
        )
        return url

    def check(self) -> None:
        """Raise unless the bucket exists and answers to our credentials (HEAD bucket)."""
        try:
            self._call(None, "head_bucket")
        except NotFound:
            # HEAD has no body, so a missing bucket is a bare 404.
            raise ConfigError(
                f"the bucket {self.bucket!r} of {STORAGE_SETTING} does not exist", field=STORAGE_SETTING
            ) from None


# --------------------------------------------------------------------------------------------------------------
# From the settings


def load_or_create_signing_key(data_dir: Path) -> bytes:
    """The signing key kept in `data_dir/signing.key` (hex, mode 0600), created at random on first use.

    Processes that start together agree on one key: the new key is written to a temporary file and linked into
    place, which fails if another process got there first, and then that process's key is read instead.
    Raises ConfigError when the file cannot be read or written, or holds something else than a key.
    """
    path = Path(data_dir) / SIGNING_KEY_FILE
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".signing-")  # created with mode 0600
            try:
                with os.fdopen(fd, "w", encoding="ascii") as handle:
                    handle.write(secrets.token_hex(SIGNING_KEY_BYTES) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp_name, path)
            finally:
                os.unlink(tmp_name)
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot use the signing key file {path}: {exc}; delete it to make a new one, or set "
            "RENDERFARM_SIGNING_KEY",
            field="RENDERFARM_SIGNING_KEY",
        ) from exc
    if len(key) < 16:
        raise ConfigError(f"the signing key in {path} is too short; delete it", field="RENDERFARM_SIGNING_KEY")
    return key


def open_storage(settings: Settings, *, clock: Callable[[], float] = time.time) -> Storage:
    """The storage the settings name: `file:///PATH` (a local folder) or `s3://BUCKET[/PREFIX]`.

    The local folder signs its download URLs with RENDERFARM_SIGNING_KEY, or with the key kept in
    `DATA_DIR/signing.key` so that URLs survive restarts, and dates them by `clock`. Raises ConfigError for any
    other URL.
    """
    url = urlparse(settings.resolved_storage_url)
    if url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise ConfigError(f"{STORAGE_SETTING} file:// must name a local path", field=STORAGE_SETTING)
        signing_key = (
            settings.signing_key.encode("utf-8")
            if settings.signing_key
            else load_or_create_signing_key(settings.data_dir)
        )
        return LocalFolderStorage(Path(unquote(url.path)), settings.public_url, signing_key, clock=clock)
    if url.scheme == "s3":
        return S3Storage(
            bucket=url.netloc,
            prefix=unquote(url.path),
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
        )
    raise ConfigError(f"{STORAGE_SETTING} must be file:///PATH or s3://BUCKET[/PREFIX]", field=STORAGE_SETTING)


def key_of_farm_url(url: str, storage: Storage, public_urls: Sequence[str] = ()) -> str | None:
    """The storage key that a URL of the farm's own storage names, or None when the URL is not the farm's.

    Accepted (the scheduler validates inputs with this and the worker resolves them with it, so both agree):
    `s3://<bucket>/<prefix><key>` of the farm's bucket, `<public url>/v1/files/<key>[?...]` for each of
    `public_urls` (and a local folder's own), and a path-style (presigned) URL of the farm's S3 endpoints
    `<endpoint>/<bucket>/<prefix><key>[?...]`, such as an artifact URL from a status snapshot.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path = unquote(parts.path)
    if scheme == "s3":
        if isinstance(storage, S3Storage) and parts.netloc == storage.bucket:
            full = path.lstrip("/")
            if full.startswith(storage.prefix):
                return full[len(storage.prefix) :] or None
        return None
    if scheme not in ("http", "https"):
        return None
    bases = list(public_urls)
    if isinstance(storage, LocalFolderStorage):
        bases.append(storage.public_url)
    for base in bases:
        route = urlsplit(base.rstrip("/") + DOWNLOAD_ROUTE)
        same_origin = (scheme, parts.netloc.lower()) == (route.scheme.lower(), route.netloc.lower())
        if same_origin and parts.path.startswith(route.path):
            return unquote(parts.path[len(route.path) :]) or None
    if isinstance(storage, S3Storage):
        for endpoint in (storage.endpoint_url, storage.public_endpoint_url):
            if endpoint is None:
                continue
            origin = urlsplit(endpoint)
            bucket_path = f"{origin.path.rstrip('/')}/{storage.bucket}/{storage.prefix}"
            if parts.netloc.lower() == origin.netloc.lower() and path.startswith(bucket_path):
                return path[len(bucket_path) :] or None
    return None
