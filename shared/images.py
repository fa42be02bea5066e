"""Reading input images safely, and writing PNGs with A1111's infotext.

Input images come from clients (uploads, base64), so they are untrusted: `decode_image` checks the byte size,
then reads the width and height from the file's header with its own small parsers and refuses an image over
the pixel limit before Pillow allocates anything (a 100 000 × 100 000 PNG can be a few hundred bytes). Only then
does Pillow decode it. The result matches what the reference's `images.read` gives the img2img code: EXIF
orientation applied, and a palette image whose transparency is a per-entry alpha table turned into RGBA
(img2img-semantics.md §2.4b); every other mode is kept as it is.

Accepted formats: PNG, JPEG, WebP, GIF and BMP (the first frame of an animation).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from shared.errors import InputError, PayloadTooLarge

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = [
    "INFOTEXT_KEY",
    "SUPPORTED_FORMATS",
    "ImageInfo",
    "ImageLimits",
    "decode_base64_image",
    "decode_image",
    "encode_png",
    "image_info",
    "read_png_infotext",
]

# zlib level of the PNGs the farm writes. Level 1 instead of Pillow's 6: a 512×512 render encodes in 25 ms instead
# of 42 ms (256×256: 7 vs 10 ms) for a file about 12 % larger, time the worker spends between renders while its
# GPU waits. The pixels are the same at every level.
PNG_COMPRESS_LEVEL = 1
INFOTEXT_KEY = "parameters"  # the PNG text chunk where A1111 keeps the generation parameters
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_TEXT_CHUNK_BYTES = 16 * 1024 * 1024  # a decompressed zTXt/iTXt chunk larger than this is refused
_DATA_URI_RE = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ImageLimits:
    """Limits on one input image: `max_pixels` (width × height) and `max_bytes` (encoded size, in bytes)."""

    max_pixels: int
    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_pixels <= 0 or self.max_bytes <= 0:
            raise ValueError(f"image limits must be positive, not {self.max_pixels} pixels, {self.max_bytes} bytes")

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        """RENDERFARM_MAX_IMAGE_PIXELS and RENDERFARM_MAX_INLINE_IMAGE_BYTES."""
        return cls(max_pixels=settings.max_image_pixels, max_bytes=settings.max_inline_image_bytes)


class ImageInfo(NamedTuple):
    """An image's size in pixels and its MIME type, read from its header alone."""

    width: int
    height: int
    mime: str


# --------------------------------------------------------------------------------------------------------------
# Header parsers: width and height without decoding. Each returns None when the data is not of its format, and
# raises ValueError when it is but the header is broken.


def _png_size(data: bytes) -> tuple[int, int] | None:
    if not data.startswith(_PNG_SIGNATURE):
        return None
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("PNG without an IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _gif_size(data: bytes) -> tuple[int, int] | None:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    if len(data) < 10:
        raise ValueError("GIF header is truncated")
    width, height = struct.unpack("<HH", data[6:10])
    return width, height


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if not data.startswith(b"BM"):
        return None
    if len(data) < 26:
        raise ValueError("BMP header is truncated")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means top-down rows


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return None
    if len(data) < 30:
        raise ValueError("WebP header is truncated")
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: the canvas size, minus one, in 24-bit fields
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("WebP VP8 frame without a start code")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: a signature byte, then two 14-bit sizes minus one
        if data[20] != 0x2F:
            raise ValueError("WebP VP8L stream without its signature")
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ValueError(f"WebP with an unknown first chunk {chunk!r}")


_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    if not data.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos < len(data):
        if data[pos] != 0xFF:
            raise ValueError("JPEG marker expected")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            break
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):  # end of image, or entropy-coded data before any frame header
            raise ValueError("JPEG without a frame header")
        if pos + 2 > len(data):
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if marker in _JPEG_SOF_MARKERS:
            if pos + 7 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return width, height
        if length < 2:
            raise ValueError("JPEG segment with a bad length")
        pos += length
    raise ValueError("JPEG header is truncated")


_PARSERS = (("PNG", _png_size), ("JPEG", _jpeg_size), ("WEBP", _webp_size), ("GIF", _gif_size), ("BMP", _bmp_size))


def _sniff(data: bytes, field: str) -> tuple[str, int, int]:
    """(format, width, height) from the header. Raises InputError naming `field` when it is no supported image."""
    for fmt, parser in _PARSERS:
        try:
            size = parser(data)
        except (ValueError, struct.error, IndexError) as exc:
            raise InputError(f"{field}: not a valid {fmt} image ({exc})", code="invalid_image", field=field) from exc
        if size is not None:
            width, height = size
            if width <= 0 or height <= 0:
                raise InputError(f"{field}: the {fmt} image is {width}×{height}", code="invalid_image", field=field)
            return fmt, width, height
    raise InputError(
        f"{field}: not an image, or a format other than {', '.join(SUPPORTED_FORMATS)}",
        code="invalid_image",
        field=field,
    )


def image_info(data: bytes, *, field: str = "image") -> ImageInfo:
    """Width, height (pixels) and MIME type of an encoded image, from its header alone (nothing is decoded).

    Raises InputError naming `field` when the data is not a PNG, JPEG, WebP, GIF or BMP image.
    """
    fmt, width, height = _sniff(data, field)
    return ImageInfo(width, height, _MIME[fmt])


# --------------------------------------------------------------------------------------------------------------
# Decoding


def _effective_max_pixels(limits: ImageLimits) -> int:
    # Pillow warns above its own MAX_IMAGE_PIXELS (and fails at twice that); a limit above it would turn every
    # such image into a DecompressionBombWarning, an error under our tests. Pillow's limit wins.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return limits.max_pixels if pillow_limit is None else min(limits.max_pixels, int(pillow_limit))


def decode_image(data: bytes, *, field: str, limits: ImageLimits) -> Image.Image:
    """Decode an untrusted encoded image into a fully loaded PIL image, as the reference reads it.

    - More than `limits.max_bytes` bytes: PayloadTooLarge (413) naming `field`.
    - width × height over `limits.max_pixels`, as the header says: PayloadTooLarge, before any pixel is decoded.
    - Not a PNG/JPEG/WebP/GIF/BMP image, or a broken or truncated one: InputError (422) naming `field`.

    EXIF orientation is applied (a broken EXIF block is ignored, as the reference does). A "P" image whose
    transparency is an alpha table (bytes) becomes "RGBA", like the reference's `images.read`; every other mode
    (L, LA, RGB, RGBA, P with one transparent index, CMYK, I;16, ...) is returned as it is, `info` included.
    """
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"{field}: the image is {len(data)} bytes; the limit is {limits.max_bytes} bytes",
            code="image_too_large",
            field=field,
        )
    fmt, width, height = _sniff(data, field)
    max_pixels = _effective_max_pixels(limits)
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{field}: the image is {width}×{height} = {width * height} pixels; the limit is {max_pixels} pixels",
            code="image_too_many_pixels",
            field=field,
        )
    try:
        # `formats` pins Pillow to the format whose header was checked above: no other parser sees the data.
        with Image.open(io.BytesIO(data), formats=[fmt]) as source:
            if source.width * source.height > max_pixels:  # our parser and Pillow's disagree: trust neither
                raise PayloadTooLarge(
                    f"{field}: the image is {source.width}×{source.height} pixels; the limit is {max_pixels}",
                    code="image_too_many_pixels",
                    field=field,
                )
            source.load()
            image = _apply_exif_orientation(source)  # always a new, detached image
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow reports broken data with OSError, SyntaxError, ValueError, struct.error, EOFError, ... :
        # all of them mean the client's bytes are not a readable image.
        raise InputError(
            f"{field}: the {fmt} image cannot be decoded ({exc})", code="invalid_image", field=field
        ) from exc
    return _fix_transparency(image)


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception:
        # The reference swallows a broken EXIF block and keeps the image unrotated; so do we.
        return image.copy()
    return transposed


def _fix_transparency(image: Image.Image) -> Image.Image:
    """The reference's `fix_png_transparency`: P or RGB with transparency given as bytes becomes RGBA.

    Pillow gives bytes only for a palette with an alpha table; a single transparent palette index is an int and
    RGB's is a colour tuple, and those stay as they are (the reference's later RGB conversion ignores them).
    """
    if image.mode in ("P", "RGB") and isinstance(image.info.get("transparency"), bytes):
        return image.convert("RGBA")
    return image


def decode_base64_image(text: str, *, field: str, limits: ImageLimits) -> Image.Image:
    """Decode raw base64 or a `data:image/<type>;base64,` URI, then the image (see `decode_image`).

    Whitespace (line breaks of wrapped base64) is ignored; anything else outside the base64 alphabet, or bad
    padding, is an InputError naming `field`. Text that would decode to more than `limits.max_bytes` is refused
    as PayloadTooLarge before it is decoded.
    """
    if not isinstance(text, str):
        raise InputError(f"{field}: expected a base64 string", code="invalid_base64", field=field)
    if text[:5].lower() == "data:":
        match = _DATA_URI_RE.match(text)
        if match is None:
            raise InputError(
                f"{field}: a data URI must start with data:image/<type>;base64,", code="invalid_base64", field=field
            )
        text = text[match.end() :]
    compact = _WHITESPACE.sub("", text)
    padding = len(compact) - len(compact.rstrip("="))
    decoded_size = len(compact) * 3 // 4 - padding
    if decoded_size > limits.max_bytes:
        raise PayloadTooLarge(
            f"{field}: the image is about {decoded_size} bytes; the limit is {limits.max_bytes} bytes",
            code="image_too_large",
            field=field,
        )
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{field}: invalid base64 ({exc})", code="invalid_base64", field=field) from exc
    if not data:
        raise InputError(f"{field}: the image is empty", code="invalid_image", field=field)
    return decode_image(data, field=field, limits=limits)


# --------------------------------------------------------------------------------------------------------------
# PNG output and its infotext


def encode_png(image: Image.Image, infotext: str | None = None) -> bytes:
    """The image as PNG bytes, with `infotext` in the `parameters` text chunk as A1111 writes it.

    Pillow writes a Latin-1 infotext as tEXt and anything else as UTF-8 iTXt, as A1111's own files are.
    """
    pnginfo: PngInfo | None = None
    if infotext is not None:
        pnginfo = PngInfo()
        pnginfo.add_text(INFOTEXT_KEY, infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, _MAX_TEXT_CHUNK_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"a compressed text chunk is larger than {_MAX_TEXT_CHUNK_BYTES} bytes")
    return out


def read_png_infotext(data: bytes) -> str | None:
    """The `parameters` text of a PNG (tEXt, zTXt or iTXt chunk), or None when it has none.

    Walks the chunks without decoding any pixel, so it is safe on untrusted and huge images.
    Raises InputError when the data is not a PNG or its chunks are broken.
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise InputError("not a PNG image", code="invalid_image")
    pos = len(_PNG_SIGNATURE)
    try:
        while pos + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[pos : pos + 8])
            body = data[pos + 8 : pos + 8 + length]
            if len(body) != length:
                raise ValueError("truncated chunk")
            pos += 12 + length  # length, type, body, CRC
            if kind == b"IEND":
                break
            if kind not in (b"tEXt", b"zTXt", b"iTXt"):
                continue
            keyword, _, rest = body.partition(b"\0")
            if keyword != INFOTEXT_KEY.encode("latin-1"):
                continue
            if kind == b"tEXt":
                return rest.decode("latin-1")
            if kind == b"zTXt":  # compression method byte, then zlib data
                return _inflate(rest[1:]).decode("latin-1")
            # iTXt: compressed flag, method, language tag\0, translated keyword\0, text (UTF-8)
            compressed = rest[0] == 1
            _language, _, rest = rest[2:].partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            return (_inflate(text) if compressed else text).decode("utf-8")
    except (ValueError, struct.error, IndexError, zlib.error) as exc:
        raise InputError(f"broken PNG text chunk: {exc}", code="invalid_image") from exc
    return None
