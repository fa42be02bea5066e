"""What the farm answers to the webui's start-up probes of features it does not have, and to `png-info`.

- `scripts`, `script-info`, `extensions`, `upscalers`, `latent-upscale-modes`, `face-restorers`,
  `realesrgan-models`, `prompt-styles`: the reference's shapes, empty. The farm runs no webui scripts or
  extensions, no upscaler or face-restoration models (img2img resizes with its own Lanczos/latent code,
  docs/engine.md) and keeps no prompt styles; an empty list is the truth, where a 404 made one client hand the
  error back as the data.
- `memory`: the reference's keys. `ram` is the scheduler's own process (`used`, its resident size) on its machine
  (`total`, `free` = total - used, as the reference counts them); the GPUs are the workers', which the scheduler
  cannot see, so `cuda` is `{"error": "unavailable"}`, what the webui answers on a machine without CUDA.
- `png-info`: the infotext of an uploaded image (PNG `parameters` chunk, or the EXIF UserComment of a JPEG/WebP)
  as `info`, the image's other text items as `items`, and `parameters` parsed as the webui's infotext paste does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from scheduler.a1111.pasted_parameters import pasted_parameters
from shared.images import INFOTEXT_KEY
from shared.output_formats import infotext_of

# What the reference leaves out of `items`: format internals, not text a user wrote (and not all JSON).
_NOT_ITEMS = frozenset(
    {
        INFOTEXT_KEY,
        "jfif",
        "jfif_version",
        "jfif_unit",
        "jfif_density",
        "dpi",
        "exif",
        "loop",
        "background",
        "timestamp",
        "duration",
        "progressive",
        "progression",
        "icc_profile",
        "chromaticity",
        "photoshop",
    }
)


def ram_usage() -> dict[str, Any]:
    """The scheduler process's memory as the reference reports it, in bytes, or `{"error": ...}`."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError) as exc:  # not Linux, or /proc unreadable
        return {"error": str(exc) or type(exc).__name__}
    used = resident_pages * page
    return {"free": total - used, "used": used, "total": total}


def memory() -> dict[str, Any]:
    return {"ram": ram_usage(), "cuda": {"error": "unavailable"}}


def png_info(picture: Image.Image) -> dict[str, Any]:
    """`{info, items, parameters}` of a decoded image."""
    info = infotext_of(picture) or ""
    items = {key: value for key, value in picture.info.items() if key not in _NOT_ITEMS and isinstance(value, str)}
    return {"info": info, "items": items, "parameters": pasted_parameters(info)}
