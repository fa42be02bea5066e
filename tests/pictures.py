"""Small test pictures shared by the worker and SDK tests: 64×64 gradients that differ per seed, a centre mask."""

from __future__ import annotations

import io

from PIL import Image

SIZE = 64  # pixels: the smallest side the spec allows


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(seed: int = 0) -> Image.Image:
    """A deterministic 64×64 gradient that differs per seed (so renders, and uploads as assets, differ)."""
    image = Image.new("RGB", (SIZE, SIZE))
    image.putdata(
        [((x * 4 + seed) % 256, (y * 4) % 256, (x * y + seed * 7) % 256) for y in range(SIZE) for x in range(SIZE)]
    )
    return image


def centre_mask() -> Image.Image:
    """Black with a white 32×32 square in the middle (255 = regenerate)."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask
