"""Image references: how a job names a picture without carrying its pixels.

A reference is `asset:<sha256>`, a URL of the farm's storage, or inline base64 (a bare string or a
`data:image/...;base64,` URI). `parse_image_ref` classifies one and checks its form; the pixels are decoded
elsewhere (`shared.images`), and whether a URL is the farm's own is decided by the scheduler.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from shared.errors import FieldProblem, InputError, PayloadTooLarge

__all__ = [
    "CONTROL_RE",
    "MAX_URL_LENGTH",
    "ImageRef",
    "ImageRefKind",
    "ImageRefProblem",
    "check_url",
    "classify_image_ref",
    "parse_image_ref",
]

MAX_URL_LENGTH = 4096  # characters of an image URL or webhook URL

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE_RE = re.compile(r"[ \t\r\n]+")
_DATA_URI_RE = re.compile(r"data:(image/[A-Za-z0-9.+-]+)((?:;[A-Za-z0-9._+=-]+)*?);base64,(.*)", re.DOTALL)

ImageRefKind = Literal["asset", "url", "inline"]


@dataclass(frozen=True)
class ImageRef:
    """Where one input image comes from. Parsing it checks the form only; the pixels are decoded elsewhere.

    kind "asset": `value` is the 64-hex-digit sha256 of an uploaded asset (`asset:<sha256>`).
    kind "url": `value` is the URL as sent (s3://, http://, https://); the scheduler checks that it is the farm's.
    kind "inline": `value` is the base64 text (whitespace removed, data-URI prefix removed); `media_type` is the
    data URI's declared type (e.g. "image/png"), or None for bare base64.
    """

    kind: ImageRefKind
    value: str
    media_type: str | None = None

    def __repr__(self) -> str:
        # An inline value can be megabytes; never put all of it into logs.
        shown = self.value if len(self.value) <= 80 else f"{self.value[:40]}...({len(self.value)} chars)"
        return f"ImageRef(kind={self.kind!r}, value={shown!r}, media_type={self.media_type!r})"

    @property
    def inline_size(self) -> int:
        """Bytes of the decoded inline data, computed from the base64 length. Raises ValueError for other kinds."""
        if self.kind != "inline":
            raise ValueError(f"an {self.kind} reference has no inline data")
        return _base64_decoded_size(self.value)

    def inline_bytes(self) -> bytes:
        """The decoded inline data (the image file's bytes). Raises ValueError for other kinds."""
        if self.kind != "inline":
            raise ValueError(f"an {self.kind} reference has no inline data")
        return base64.b64decode(self.value, validate=True)


class ImageRefProblem(Exception):
    """What is wrong with a reference or URL: a stable `code` ("too_large" for inline data over the limit) and a
    message naming what is allowed. Callers turn it into their own error type."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _base64_decoded_size(text: str) -> int:
    return len(text) // 4 * 3 - (len(text) - len(text.rstrip("=")))


def classify_image_ref(text: str, max_inline_bytes: int | None) -> ImageRef:
    """The reference `text` classified; ImageRefProblem when it is malformed or its inline data is over
    `max_inline_bytes` (decoded bytes; None checks no size)."""
    if not text:
        raise ImageRefProblem("invalid_image_ref", "is empty; send asset:<sha256>, a storage URL, or base64 image data")
    head = text[:16].lower()
    if head.startswith("asset:"):
        digest = text[len("asset:") :]
        if not _SHA256_RE.fullmatch(digest):
            raise ImageRefProblem(
                "invalid_image_ref", "an asset reference is asset: followed by 64 lower-case hex digits (sha256)"
            )
        return ImageRef("asset", digest)
    if head.startswith(("s3://", "http://", "https://")):
        return ImageRef("url", check_url(text, ("s3", "http", "https")))
    media_type: str | None = None
    payload = text
    if head.startswith("data:"):
        match = _DATA_URI_RE.fullmatch(text)
        if match is None:
            raise ImageRefProblem(
                "invalid_image_ref", "a data URI must look like data:image/png;base64,<data> (an image, base64)"
            )
        media_type, payload = match.group(1).lower(), match.group(3)
    elif ":" in head:
        # Base64 has no colon, so this is a URL of a scheme we do not fetch (file:, ftp:, ...).
        raise ImageRefProblem(
            "invalid_image_ref",
            "unsupported reference; send asset:<sha256>, an s3:// or http(s):// URL of the farm's storage, "
            "or base64 image data",
        )
    # Clients that wrap base64 at 76 columns (MIME style) are common; line breaks carry no data.
    payload = _WHITESPACE_RE.sub("", payload)
    if not payload:
        raise ImageRefProblem("invalid_base64", "the inline image data is empty")
    if len(payload) % 4 or not _BASE64_RE.fullmatch(payload):
        raise ImageRefProblem(
            "invalid_base64",
            "is not valid base64 (standard alphabet A-Z a-z 0-9 + /, padded with = to a multiple of 4 characters)",
        )
    size = _base64_decoded_size(payload)
    if max_inline_bytes is not None and size > max_inline_bytes:
        raise ImageRefProblem(
            "too_large",
            f"the inline image is {size} bytes, over the limit of {max_inline_bytes} bytes; "
            "upload it with POST /v1/assets and send asset:<sha256> instead",
        )
    return ImageRef("inline", payload, media_type)


def check_url(text: str, schemes: Sequence[str]) -> str:
    """`text` if it is a URL with a host and one of `schemes` (an s3:// one with a key); else ImageRefProblem."""
    if len(text) > MAX_URL_LENGTH:
        raise ImageRefProblem("invalid_url", f"is longer than {MAX_URL_LENGTH} characters")
    if CONTROL_RE.search(text) or " " in text:
        raise ImageRefProblem("invalid_url", "contains spaces or control characters")
    parts = urlsplit(text)
    if parts.scheme.lower() not in schemes or not parts.netloc:
        raise ImageRefProblem("invalid_url", f"must be a URL with a host and one of the schemes {', '.join(schemes)}")
    if parts.scheme.lower() == "s3" and parts.path.strip("/") == "":
        raise ImageRefProblem("invalid_url", "an s3:// URL needs a key after the bucket (s3://BUCKET/KEY)")
    return text


def parse_image_ref(text: str, *, field: str = "image", max_inline_bytes: int | None = None) -> ImageRef:
    """Classify one image reference string.

    `field` is the dotted path named in errors (e.g. "init_images.0"). `max_inline_bytes` bounds the decoded size
    of inline data in bytes; None checks no size.
    Raises PayloadTooLarge (413) for inline data over the limit, InputError (422) for anything malformed.
    """
    try:
        return classify_image_ref(text, max_inline_bytes)
    except ImageRefProblem as problem:
        error_type = PayloadTooLarge if problem.code == "too_large" else InputError
        raise error_type.from_problems([FieldProblem(field, problem.message, problem.code)]) from None
