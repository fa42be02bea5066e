"""Assets: input images a tenant uploads once and names by `asset:<sha256>` (api.md "Submit").

Every function here blocks (database, storage): call them from a worker thread.
"""

from __future__ import annotations

import hashlib
from typing import Any

from scheduler.deps import Services
from shared.db import AssetRow
from shared.errors import NotFound
from shared.images import ImageLimits, decode_image, image_info
from shared.storage import asset_key


def store_asset(
    services: Services, tenant: str, data: bytes, *, field: str, limits: ImageLimits
) -> tuple[AssetRow, bool]:
    """Store an input image as the tenant's asset (content-addressed by sha256); returns `(asset, created)`.

    An asset the tenant already has is returned as it is. A new one must decode within `limits`: PayloadTooLarge
    (413) over them, InputError (422, naming `field`) for data that is no supported image. StorageUnavailable or
    DatabaseUnavailable (503) when a dependency is down.
    """
    digest = hashlib.sha256(data).hexdigest()
    try:
        return services.db.assets.get(tenant, digest), False
    except NotFound:
        pass
    image = decode_image(data, field=field, limits=limits)
    try:
        # The size after EXIF orientation: what the worker will see.
        width, height = image.width, image.height
    finally:
        image.close()
    mime = image_info(data, field=field).mime
    key = asset_key(tenant, digest)
    # Object first, row second: a row always names an object that exists.
    services.storage.put(key, data, mime, sha256=digest)
    return services.db.assets.add(
        tenant, digest, storage_key=key, size_bytes=len(data), mime=mime, width=width, height=height
    )


def asset_body(asset: AssetRow) -> dict[str, Any]:
    """The API's description of an asset."""
    return {
        "asset_id": f"asset:{asset.sha256}",
        "sha256": asset.sha256,
        "width": asset.width,
        "height": asset.height,
        "mime": asset.mime,
        "bytes": asset.bytes,
    }
