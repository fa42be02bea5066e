"""The upload of a render's outputs under their deterministic keys: results in the job's `samples_format` (PNG,
JPEG or WebP, written as the webui saves them: shared.output_formats), overlays and masks as PNG (the farm's own
outputs, which the webui does not save by default; lossless, since a mask's edges matter)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from PIL import Image

from shared.db import ArtifactRecord
from shared.output_formats import OUTPUT_FORMATS, OutputFormat, encode_result
from shared.storage import Storage, artifact_key
from worker.engine.processing import Processed

logger = logging.getLogger(__name__)

UPLOAD_THREADS: Final = 8  # parallel artifact uploads (boto3 clients are thread-safe)
PNG: Final = OUTPUT_FORMATS["png"]


def upload_artifacts(
    storage: Storage,
    tenant: str,
    task_id: str,
    attempt: int,
    processed: Processed,
    result_format: OutputFormat = PNG,
) -> list[ArtifactRecord]:
    """Encode and upload every output under its deterministic key; returns the artifact records (in order)."""
    items: list[tuple[str, int, Image.Image, str | None, int | None]] = []
    for i, image in enumerate(processed.images):
        seed = processed.seeds[i] if i < len(processed.seeds) else None
        items.append(("result", i, image, processed.infotexts[i] if i < len(processed.infotexts) else None, seed))
        overlay = processed.overlay_images[i] if i < len(processed.overlay_images) else None
        if overlay is not None:
            items.append(("overlay", i, overlay, None, seed))
        mask = processed.masks[i] if i < len(processed.masks) else None
        if mask is not None:
            items.append(("mask", i, mask, None, seed))

    def put(item: tuple[str, int, Image.Image, str | None, int | None]) -> ArtifactRecord:
        kind, index, image, infotext, seed = item
        fmt = result_format if kind == "result" else PNG
        data = encode_result(image, fmt, infotext)
        key = artifact_key(tenant, task_id, attempt, kind, index, fmt.extension)
        stored = storage.put(key, data, fmt.mime)
        return ArtifactRecord(
            kind=kind,
            index=index,
            storage_key=key,
            sha256=stored.sha256,
            bytes=stored.size,
            width=image.width,
            height=image.height,
            seed=seed,
            infotext=infotext,
        )

    if len(items) <= 1:
        return [put(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(items)), thread_name_prefix="rf-upload") as pool:
        return list(pool.map(put, items))


def delete_quietly(storage: Storage, keys: Sequence[str]) -> None:
    """Delete `keys`, logging instead of raising when a delete fails."""
    for key in keys:
        try:
            storage.delete(key)
        except Exception as exc:  # orphans under an old attempt's keys are harmless; never fail over them
            logger.warning("cannot delete %s: %s", key, exc)
