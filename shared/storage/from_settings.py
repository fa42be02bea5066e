"""The storage the settings name (`open_storage`), and the local folder's signing key kept in the data folder."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from shared.errors import ConfigError
from shared.storage.interface import STORAGE_SETTING, Storage
from shared.storage.local_folder import LocalFolderStorage
from shared.storage.s3 import S3Storage

if TYPE_CHECKING:
    from shared.config import Settings

SIGNING_KEY_FILE = "signing.key"  # in DATA_DIR, when RENDERFARM_SIGNING_KEY is unset
SIGNING_KEY_BYTES = 32


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
