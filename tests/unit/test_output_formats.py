"""Results in each `samples_format`: the bytes decode in that format and the infotext reads back where the webui
keeps it (PNG text chunk; EXIF UserComment with the UNICODE character code for JPEG and WebP)."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from shared.output_formats import OUTPUT_FORMATS, encode_result, read_infotext
from shared.storage import artifact_key

INFOTEXT = 'a cät, "quoted"\nNegative prompt: blur\nSteps: 2, Sampler: Euler a, Seed: 7, Size: 64x64'


@pytest.mark.parametrize(
    ("name", "pillow", "mime", "extension"),
    [
        ("png", "PNG", "image/png", "png"),
        ("jpg", "JPEG", "image/jpeg", "jpg"),
        ("jpeg", "JPEG", "image/jpeg", "jpg"),
        ("webp", "WEBP", "image/webp", "webp"),
    ],
)
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_each_format_decodes_and_keeps_its_infotext(
    name: str, pillow: str, mime: str, extension: str, mode: str
) -> None:
    fmt = OUTPUT_FORMATS[name]
    assert (fmt.pillow, fmt.mime, fmt.extension) == (pillow, mime, extension)
    image = Image.new(mode, (64, 48), (30, 160, 220, 255)[: len(mode)])
    data = encode_result(image, fmt, INFOTEXT)
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == pillow
        assert picture.size == (64, 48)
        picture.load()
        # JPEG and WebP have no alpha in the webui's files either; PNG keeps the mode.
        assert picture.mode == (mode if pillow == "PNG" else "RGB")
        red, green, blue = picture.convert("RGB").getpixel((5, 5))  # type: ignore[misc]
        assert abs(red - 30) <= 6
        assert abs(green - 160) <= 6
        assert abs(blue - 220) <= 6
    assert read_infotext(data) == INFOTEXT
    assert read_infotext(encode_result(image, fmt, None)) is None


@pytest.mark.parametrize("name", ["jpg", "webp"])
def test_user_comment_is_the_webui_encoding(name: str) -> None:
    # piexif's UserComment.dump(text, encoding="unicode"): b"UNICODE\0" then UTF-16 big-endian, in the Exif IFD
    # under tag 0x9286 with type UNDEFINED (7). Read from the raw EXIF block, not through Pillow's reader.
    data = encode_result(Image.new("RGB", (64, 64)), OUTPUT_FORMATS[name], INFOTEXT)
    with Image.open(io.BytesIO(data)) as picture:
        raw = picture.info["exif"]
    tiff = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    endian = "<" if tiff[:2] == b"II" else ">"
    comment = b"UNICODE\x00" + INFOTEXT.encode("utf-16-be")
    entry = struct.pack(endian + "HHI", 0x9286, 7, len(comment))
    assert entry in tiff
    assert comment in tiff


def test_storage_keys_carry_the_format() -> None:
    assert artifact_key("acme", "job", 1, "result", 0, "jpg") == "acme/job/1/result-0.jpg"
    assert artifact_key("acme", "job", 1, "result", 0) == "acme/job/1/result-0.png"
    with pytest.raises(ValueError, match="extension"):
        artifact_key("acme", "job", 1, "result", 0, "gif")
