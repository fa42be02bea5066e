"""Object keys: the one rule every key obeys (`validate_key`), and the keys the farm builds for its artifacts and
assets (`artifact_key`, `asset_key`)."""

from __future__ import annotations

import re

from shared.job.artifacts import ARTIFACT_KINDS
from shared.job.ids import is_valid_task_id, task_id_problem

MAX_KEY_BYTES = 1024  # S3's limit on a key (UTF-8 bytes); the local folder keeps the same rule

_TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # as shared.config accepts tenants
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A segment that no tenant or task id can be ('~' is outside both alphabets), so that a task named "assets" can
# never share a prefix with the assets, and deleting a task's keys by prefix can never reach an asset.
_ASSETS_SEGMENT = "~assets"


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


def validate_prefix(prefix: str) -> str:
    """A list prefix is any start of a valid key: "" (everything) or a key that may end with `/`."""
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def artifact_key(tenant: str, task_id: str, attempt: int, kind: str, index: int, extension: str = "png") -> str:
    """`{tenant}/{task_id}/{attempt}/{kind}-{index}.{extension}`, the deterministic key of one output of one attempt.

    `extension` is the stored format's (png, jpg or webp: results follow the job's `samples_format`).

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
    if extension not in ("png", "jpg", "webp"):
        raise ValueError(f"artifact extension must be png, jpg or webp, not {extension!r}")
    return validate_key(f"{tenant}/{task_id}/{attempt}/{kind}-{index}.{extension}")


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
