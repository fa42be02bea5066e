"""Resolve a job's image references to decoded PIL images (farm-design.md, "The worker's run of one job", step 3).

A reference is one of (see `shared.job.image_refs.ImageRef`):

- `asset:<sha256>`: an uploaded asset, read from `asset_key(tenant, sha256)`; its bytes are checked against the sha256.
- a URL of the farm's own storage: `s3://<bucket>/<prefix><key>` of the farm's bucket, the API's download URL
  `<public_url>/v1/files/<key>?expires=..&sig=..`, or a presigned (path-style) URL of the farm's S3 endpoint. The key
  is read straight from storage (the signature is not needed: the worker is inside the farm) and must belong to the
  job's tenant, so one tenant cannot render another tenant's pictures by naming their keys.
- inline base64: the API normally turns it into an asset before storing the job; still accepted for robustness.

Errors name the field (`init_images.0`, `mask`, `latent_mask`): a missing or foreign object is an `InputError`
(the job fails at once); a store that is briefly unreachable raises `StorageUnavailable` (the job is retried).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from PIL import Image

from shared.errors import InputError, NotFound, PermanentError
from shared.images import ImageLimits, decode_image
from shared.job.image_refs import ImageRef
from shared.job.spec import Img2ImgJob
from shared.storage import Storage, asset_key, key_of_farm_url
from worker.asset_cache import AssetCache

__all__ = ["LoadedInputs", "load_inputs", "resolve_storage_key"]

LoadedInputs = tuple[list[Image.Image], Image.Image | None, Image.Image | None]


def load_inputs(
    job: Img2ImgJob,
    tenant: str,
    storage: Storage,
    limits: ImageLimits,
    *,
    public_url: str | None = None,
    cache: AssetCache | None = None,
) -> LoadedInputs:
    """Fetch and decode the job's images: `(init_images, mask, latent_mask)`.

    `limits` bounds each encoded image (bytes) and its decoded size (pixels). `public_url` is the API's address,
    for download URLs of the local folder (default: the local folder's own `public_url`). `cache` keeps verified
    asset bytes between jobs (assets never change).

    Raises InputError naming the field for a reference that is malformed, foreign, missing or not a decodable image;
    StorageUnavailable when the store is briefly unreachable; PermanentError when an asset's bytes do not match its
    sha256 (the store is corrupt).
    """
    refs: Sequence[ImageRef] = job.init_image_refs
    init_images = [
        _load_one(ref, f"init_images.{i}", tenant, storage, limits, public_url, cache) for i, ref in enumerate(refs)
    ]
    mask_ref, latent_ref = job.mask_ref, job.latent_mask_ref
    mask = _load_one(mask_ref, "mask", tenant, storage, limits, public_url, cache) if mask_ref else None
    latent_mask = (
        _load_one(latent_ref, "latent_mask", tenant, storage, limits, public_url, cache) if latent_ref else None
    )
    return init_images, mask, latent_mask


def _load_one(
    ref: ImageRef,
    field: str,
    tenant: str,
    storage: Storage,
    limits: ImageLimits,
    public_url: str | None,
    cache: AssetCache | None,
) -> Image.Image:
    if ref.kind == "inline":
        try:
            data = ref.inline_bytes()
        except ValueError as exc:  # binascii.Error is a ValueError
            raise InputError(f"{field}: invalid base64 ({exc})", code="invalid_base64", field=field) from exc
        return decode_image(data, field=field, limits=limits)
    if ref.kind == "asset":
        cached = cache.get(tenant, ref.value) if cache is not None else None
        if cached is not None:
            return decode_image(cached, field=field, limits=limits)
        data = _get(storage, asset_key(tenant, ref.value), field, what=f"asset {ref.value}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != ref.value:
            # Content-addressed data that does not hash to its name: the store is damaged, not the request.
            raise PermanentError(
                f"{field}: the stored asset {ref.value} has sha256 {actual}; the storage is corrupt",
                code="asset_corrupt",
            )
        image = decode_image(data, field=field, limits=limits)  # cached only once it decodes
        if cache is not None:
            cache.put(tenant, ref.value, data)
        return image
    key = resolve_storage_key(ref.value, storage, public_url=public_url, field=field)
    if not key.startswith(f"{tenant}/"):
        raise InputError(
            f"{field}: the URL names an object of another tenant; use your own assets or results",
            code="foreign_image_url",
            field=field,
        )
    return decode_image(_get(storage, key, field, what=ref.value), field=field, limits=limits)


def _get(storage: Storage, key: str, field: str, *, what: str) -> bytes:
    try:
        return storage.get(key)
    except NotFound:
        raise InputError(
            f"{field}: {what} does not exist (upload it with POST /v1/assets first)",
            code="image_not_found",
            field=field,
        ) from None


def resolve_storage_key(url: str, storage: Storage, *, public_url: str | None = None, field: str = "image") -> str:
    """The storage key a farm URL names (`shared.storage.key_of_farm_url`). Raises InputError naming `field` for a
    URL outside the farm's storage."""
    key = key_of_farm_url(url, storage, [public_url] if public_url else [])
    if not key:
        raise _foreign(url, field)
    return key


def _foreign(url: str, field: str) -> InputError:
    shown = url if len(url) <= 120 else url[:117] + "..."
    return InputError(
        f"{field}: {shown} is not a URL of this farm's storage; upload the image with POST /v1/assets and send "
        "asset:<sha256>",
        code="foreign_image_url",
        field=field,
    )
