"""The farm's built-in tiny models: always models, on every worker (built on first use) and in every listing.

The one list of their names (the worker's builder, `worker/engine/models/tiny.py`, maps each to its kind and a test
checks the two agree). Their weights are built, not shipped, so there is no file to hash: their identity hash is the
sha256 of a canonical description `renderfarm-tiny-model:<name>:v<TINY_IDENTITY_VERSION>` (stable across machines
and releases; bump the version only if a name's model changes meaning), so `/sd-models` never lists a null hash
(proposal P18) and titles such as `tiny [3a…]` resolve.
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["TINY_IDENTITY_VERSION", "TINY_NAMES", "tiny_sha256"]

TINY_NAMES: Final[tuple[str, ...]] = ("tiny", "tiny-inpaint", "tiny-edit", "tiny-xl", "tiny-xl-inpaint")
TINY_IDENTITY_VERSION: Final = 1


def tiny_sha256(name: str) -> str:
    """The identity hash of tiny model `name` (see the module docstring)."""
    return hashlib.sha256(f"renderfarm-tiny-model:{name}:v{TINY_IDENTITY_VERSION}".encode()).hexdigest()
