"""shared.images: safe decoding of untrusted input images, and PNG infotext."""

from __future__ import annotations

import base64
import io
import struct
import tracemalloc
import zlib

import pytest
from PIL import Image, PngImagePlugin, features

from shared.config import Settings
from shared.errors import InputError, PayloadTooLarge
from shared.images import (
    ImageInfo,
    ImageLimits,
    decode_base64_image,
    decode_image,
    encode_png,
    image_info,
    read_png_infotext,
)

LIMITS = ImageLimits(max_pixels=4096 * 4096, max_bytes=4 * 1024 * 1024)
FIELD = "init_images[0]"


def png_bytes(image: Image.Image, **save_args: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims width × height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------------------
# Limits


def test_limits_from_settings(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, max_image_pixels=1000, max_inline_image_bytes=2000, _env_file=None)
    assert ImageLimits.from_settings(settings) == ImageLimits(max_pixels=1000, max_bytes=2000)


def test_decompression_bomb_header_is_413_without_allocating() -> None:
    data = bomb_png(100_000, 100_000)
    assert len(data) < 200
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as caught:
            decode_image(data, field=FIELD, limits=LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.http_status == 413
    assert caught.value.field == FIELD
    assert "10000000000 pixels" in caught.value.message
    assert peak < 1_000_000  # bytes: nothing near the 30 GB the header asks for


def test_pixel_limit_is_ours_not_pillows() -> None:
    # Above Pillow's own warning threshold (~89 Mpx) but under its error threshold: Pillow would only warn
    # (an error under our test settings); decode_image refuses it with its own clear 413 first.
    data = bomb_png(10_000, 10_000)
    with pytest.raises(PayloadTooLarge):
        decode_image(data, field=FIELD, limits=ImageLimits(max_pixels=10**12, max_bytes=10**6))


def test_image_just_over_a_small_pixel_limit_is_413() -> None:
    data = png_bytes(Image.new("RGB", (10, 10)))
    with pytest.raises(PayloadTooLarge):
        decode_image(data, field=FIELD, limits=ImageLimits(max_pixels=99, max_bytes=10**6))
    assert decode_image(data, field=FIELD, limits=ImageLimits(max_pixels=100, max_bytes=10**6)).size == (10, 10)


def test_over_max_bytes_is_413_naming_the_field() -> None:
    data = png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(data, field=FIELD, limits=ImageLimits(max_pixels=10**6, max_bytes=len(data) - 1))
    assert caught.value.field == FIELD
    assert caught.value.http_status == 413
    assert FIELD in caught.value.message


# ---------------------------------------------------------------------------------------------------------------
# Broken input


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is not an image",
        b"\x89PNG\r\n\x1a\n",  # a signature and nothing else
        b"GIF89a",
        b"%PDF-1.4 something",
    ],
)
def test_garbage_is_422_naming_the_field(data: bytes) -> None:
    with pytest.raises(InputError) as caught:
        decode_image(data, field=FIELD, limits=LIMITS)
    assert not isinstance(caught.value, PayloadTooLarge)
    assert caught.value.http_status == 422
    assert caught.value.field == FIELD
    assert FIELD in caught.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_422(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((128, 128), 80).convert("RGB").save(buffer, format=fmt)
    data = buffer.getvalue()
    with pytest.raises(InputError) as caught:
        decode_image(data[: len(data) // 2], field=FIELD, limits=LIMITS)
    assert caught.value.http_status == 422
    assert caught.value.field == FIELD


def test_zero_sized_header_is_422() -> None:
    with pytest.raises(InputError) as caught:
        decode_image(bomb_png(0, 10), field=FIELD, limits=LIMITS)
    assert caught.value.http_status == 422


# ---------------------------------------------------------------------------------------------------------------
# What the reference's images.read gives


def test_exif_orientation_is_applied() -> None:
    # 4×2: left half red, right half blue. Orientation 6 means "rotate 90° clockwise to display": the result is
    # 2×4 with the red half on top.
    image = Image.new("RGB", (4, 2), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 2, 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(png_bytes(image, exif=exif), field=FIELD, limits=LIMITS)
    assert decoded.size == (2, 4)
    assert decoded.getpixel((0, 0)) == (255, 0, 0)
    assert decoded.getpixel((1, 1)) == (255, 0, 0)
    assert decoded.getpixel((0, 3)) == (0, 0, 255)
    assert decoded.getexif().get(0x0112, 1) == 1


def test_broken_exif_is_ignored_like_the_reference() -> None:
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    decoded = decode_image(png_bytes(image, exif=b"Exif\x00\x00garbage"), field=FIELD, limits=LIMITS)
    assert decoded.size == (3, 2)


def _palette_image() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    return image


def test_palette_with_alpha_table_becomes_rgba() -> None:
    data = png_bytes(_palette_image(), transparency=bytes([0, 128]))
    decoded = decode_image(data, field=FIELD, limits=LIMITS)
    assert decoded.mode == "RGBA"
    assert decoded.getpixel((0, 0)) == (255, 0, 0, 0)
    assert decoded.getpixel((1, 0)) == (0, 255, 0, 128)


def test_palette_with_one_transparent_index_stays_p_like_the_reference() -> None:
    # Pillow reads a tRNS with one fully transparent entry as an int, and the reference's fix_png_transparency
    # only converts a bytes transparency; the later RGB conversion then ignores it.
    data = png_bytes(_palette_image(), transparency=0)
    decoded = decode_image(data, field=FIELD, limits=LIMITS)
    assert decoded.mode == "P"
    assert decoded.info["transparency"] == 0


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16"])
def test_modes_are_kept(mode: str) -> None:
    decoded = decode_image(png_bytes(Image.new(mode, (5, 3))), field=FIELD, limits=LIMITS)
    assert decoded.mode == mode
    assert decoded.size == (5, 3)


def test_result_is_loaded_and_detached() -> None:
    decoded = decode_image(png_bytes(Image.new("RGB", (5, 3), (1, 2, 3))), field=FIELD, limits=LIMITS)
    # A detached image: a plain Image (not a file plugin object holding a file), its pixels in memory.
    assert type(decoded) is Image.Image
    assert decoded.getpixel((4, 2)) == (1, 2, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP", "WEBP"])
def test_other_formats_decode(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.fail("Pillow was built without WebP support")
    buffer = io.BytesIO()
    Image.new("RGB", (7, 5), (200, 10, 10)).save(buffer, format=fmt)
    decoded = decode_image(buffer.getvalue(), field=FIELD, limits=LIMITS)
    assert decoded.size == (7, 5)


# ---------------------------------------------------------------------------------------------------------------
# Base64


def test_raw_base64_and_data_uri_decode_the_same() -> None:
    data = png_bytes(Image.new("RGB", (6, 4), (9, 8, 7)))
    raw = base64.b64encode(data).decode("ascii")
    for text in (raw, f"data:image/png;base64,{raw}", "\n".join(raw[i : i + 76] for i in range(0, len(raw), 76))):
        decoded = decode_base64_image(text, field=FIELD, limits=LIMITS)
        assert decoded.size == (6, 4)
        assert decoded.getpixel((0, 0)) == (9, 8, 7)


@pytest.mark.parametrize(
    "text",
    ["not base64 at all!", "QUJD=", "data:text/plain;base64,QUJD", "data:image/png,QUJD", "@@@@"],
)
def test_invalid_base64_is_422_naming_the_field(text: str) -> None:
    with pytest.raises(InputError) as caught:
        decode_base64_image(text, field=FIELD, limits=LIMITS)
    assert caught.value.http_status == 422
    assert caught.value.field == FIELD


def test_base64_that_is_valid_but_not_an_image_is_422() -> None:
    with pytest.raises(InputError) as caught:
        decode_base64_image(base64.b64encode(b"plain text").decode(), field=FIELD, limits=LIMITS)
    assert caught.value.code == "invalid_image"


def test_oversized_base64_is_413_before_decoding() -> None:
    text = "A" * 4000
    with pytest.raises(PayloadTooLarge) as caught:
        decode_base64_image(text, field=FIELD, limits=ImageLimits(max_pixels=100, max_bytes=1000))
    assert caught.value.field == FIELD


# ---------------------------------------------------------------------------------------------------------------
# PNG output


@pytest.mark.parametrize(
    "infotext",
    [
        "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512",
        "ein Hündchen, 猫\nNegative prompt: ugly\nSteps: 4",  # not Latin-1: written as iTXt
    ],
)
def test_infotext_round_trip(infotext: str) -> None:
    data = encode_png(Image.new("RGB", (3, 3)), infotext)
    assert read_png_infotext(data) == infotext
    with Image.open(io.BytesIO(data)) as image:  # and any PNG reader sees it where A1111 puts it
        assert image.info["parameters"] == infotext


def test_png_without_infotext() -> None:
    data = encode_png(Image.new("L", (3, 3)))
    assert read_png_infotext(data) is None
    assert decode_image(data, field=FIELD, limits=LIMITS).mode == "L"


def test_compressed_infotext_chunks_are_read() -> None:
    for text in ("zipped latin-1 " * 20, "zipped ütf-8 猫 " * 20):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text, zip=True)
        assert read_png_infotext(png_bytes(Image.new("RGB", (2, 2)), pnginfo=info)) == text


def test_read_png_infotext_refuses_non_png() -> None:
    with pytest.raises(InputError):
        read_png_infotext(b"GIF89a....")


# ---------------------------------------------------------------------------------------------------------------
# Header-only info


@pytest.mark.parametrize(
    ("fmt", "mode", "save_args", "mime"),
    [
        ("PNG", "RGB", {}, "image/png"),
        ("JPEG", "RGB", {}, "image/jpeg"),
        ("JPEG", "RGB", {"progressive": True}, "image/jpeg"),
        ("GIF", "P", {}, "image/gif"),
        ("BMP", "RGB", {}, "image/bmp"),
        ("WEBP", "RGB", {"lossless": False}, "image/webp"),
        ("WEBP", "RGB", {"lossless": True}, "image/webp"),
        ("WEBP", "RGBA", {"lossless": False}, "image/webp"),
    ],
)
def test_image_info_reads_the_header(fmt: str, mode: str, save_args: dict[str, object], mime: str) -> None:
    buffer = io.BytesIO()
    Image.new(mode, (37, 23)).save(buffer, format=fmt, **save_args)
    assert image_info(buffer.getvalue()) == ImageInfo(37, 23, mime)


def test_image_info_does_not_decode() -> None:
    assert image_info(bomb_png(100_000, 100_000)) == (100_000, 100_000, "image/png")


def test_image_info_refuses_garbage() -> None:
    with pytest.raises(InputError) as caught:
        image_info(b"nope", field="file")
    assert caught.value.field == "file"
