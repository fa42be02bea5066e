"""The formats the farm writes its results in (`samples_format`: png, jpg/jpeg, webp), as the webui saves them.

- PNG: the infotext in the `parameters` text chunk (`shared.images.encode_png`).
- JPEG and WebP: RGB (an RGBA render loses its alpha, as in the webui), quality 80 (the webui's `jpeg_quality`
  default; WebP lossy, its `webp_lossless` default), and the infotext in the EXIF UserComment tag with EXIF's
  "UNICODE" character code: the 8 bytes `UNICODE\\0` then the text as UTF-16 big-endian, which is what the webui's
  piexif call writes, with the tag's EXIF type UNDEFINED (7). Pillow's `Image.Exif` would write the same bytes
  but typed BYTE (1), which piexif (the webui's reader) hands back as a tuple of numbers that its UserComment
  reader cannot decode; so the farm writes the small EXIF block itself (`exif_with_user_comment`), laid out as
  piexif's dump lays it out (big-endian TIFF header, IFD0 holding only the Exif IFD pointer).

One home for the names: `OUTPUT_FORMATS` maps each accepted spelling to its Pillow format, MIME type and file
extension; `read_infotext` reads the infotext back from any of them (the A1111 answers, `png-info`, tests).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Final

from PIL import Image

from shared.images import INFOTEXT_KEY, encode_png

__all__ = [
    "JPEG_QUALITY",
    "OUTPUT_FORMATS",
    "OutputFormat",
    "encode_result",
    "exif_with_user_comment",
    "infotext_of",
    "read_infotext",
]

JPEG_QUALITY: Final = 80  # the webui's `jpeg_quality` default, for JPEG and (lossy) WebP
EXIF_IFD: Final = 0x8769  # the Exif sub-IFD of a picture's EXIF data
USER_COMMENT: Final = 0x9286  # its UserComment tag, where the webui keeps the infotext of JPEG and WebP files
UNICODE_PREFIX: Final = b"UNICODE\x00"  # EXIF's character code for a UTF-16 (big-endian) UserComment


@dataclass(frozen=True)
class OutputFormat:
    """How one `samples_format` is written: Pillow's format name, the stored object's MIME type and extension."""

    pillow: str
    mime: str
    extension: str  # without the dot; also the storage key's and the download's file name suffix


_PNG = OutputFormat("PNG", "image/png", "png")
_JPEG = OutputFormat("JPEG", "image/jpeg", "jpg")
_WEBP = OutputFormat("WEBP", "image/webp", "webp")
OUTPUT_FORMATS: Final[dict[str, OutputFormat]] = {"png": _PNG, "jpg": _JPEG, "jpeg": _JPEG, "webp": _WEBP}


def output_format(samples_format: str | None) -> OutputFormat:
    """The format for a `samples_format` value (None: PNG). Raises KeyError for one the farm does not write (the
    job spec's Literal refuses those at admission with a 422, so a worker never sees one)."""
    return OUTPUT_FORMATS[(samples_format or "png").lower()]


_LONG, _UNDEFINED = 4, 7  # EXIF field types


def exif_with_user_comment(infotext: str) -> bytes:
    """An APP1-style EXIF block (`Exif\\0\\0` + TIFF) whose only content is the UserComment `infotext`."""
    comment = UNICODE_PREFIX + infotext.encode("utf-16-be")
    header = b"MM\x00\x2a" + struct.pack(">I", 8)  # big-endian TIFF, IFD0 right after the header
    ifd_size = 2 + 12 + 4  # one entry and the next-IFD offset
    exif_ifd_at = 8 + ifd_size
    comment_at = exif_ifd_at + ifd_size
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHII", EXIF_IFD, _LONG, 1, exif_ifd_at) + struct.pack(">I", 0)
    exif_ifd = struct.pack(">H", 1) + struct.pack(">HHII", USER_COMMENT, _UNDEFINED, len(comment), comment_at)
    exif_ifd += struct.pack(">I", 0)
    return b"Exif\x00\x00" + header + ifd0 + exif_ifd + comment


def encode_result(image: Image.Image, fmt: OutputFormat, infotext: str | None) -> bytes:
    """`image` encoded in `fmt` with its infotext where the webui puts it for that format."""
    if fmt.pillow == "PNG":
        return encode_png(image, infotext)
    picture = image if image.mode in ("RGB", "L") else image.convert("RGB")
    buffer = io.BytesIO()
    exif = exif_with_user_comment(infotext) if infotext is not None else b""
    picture.save(buffer, format=fmt.pillow, quality=JPEG_QUALITY, exif=exif)
    return buffer.getvalue()


def infotext_of(picture: Image.Image) -> str | None:
    """The infotext of an opened image: its PNG `parameters` text, else its EXIF UserComment (UNICODE or ASCII
    character code, as piexif's helper reads them), else None."""
    text = picture.info.get(INFOTEXT_KEY)
    if isinstance(text, str):
        return text
    comment = picture.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if isinstance(comment, bytes):
        code, body = comment[:8], comment[8:]
        if code == UNICODE_PREFIX:
            return body.decode("utf-16-be", errors="replace")
        if code.startswith(b"ASCII"):
            return body.decode("ascii", errors="replace")
    if isinstance(comment, str):  # Pillow hands back text when the tag was written as ASCII without a code
        return comment
    return None


def read_infotext(data: bytes) -> str | None:
    """The infotext of encoded image bytes in any format the farm writes."""
    with Image.open(io.BytesIO(data)) as picture:
        return infotext_of(picture)
