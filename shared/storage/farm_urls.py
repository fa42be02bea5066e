"""Which storage key a URL of the farm's own storage names (`key_of_farm_url`)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from shared.storage.interface import Storage
from shared.storage.local_folder import DOWNLOAD_ROUTE, LocalFolderStorage
from shared.storage.s3 import S3Storage


def key_of_farm_url(url: str, storage: Storage, public_urls: Sequence[str] = ()) -> str | None:
    """The storage key that a URL of the farm's own storage names, or None when the URL is not the farm's.

    Accepted (the scheduler validates inputs with this and the worker resolves them with it, so both agree):
    `s3://<bucket>/<prefix><key>` of the farm's bucket, `<public url>/v1/files/<key>[?...]` for each of
    `public_urls` (and a local folder's own), and a path-style (presigned) URL of the farm's S3 endpoints
    `<endpoint>/<bucket>/<prefix><key>[?...]`, such as an artifact URL from a status snapshot.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path = unquote(parts.path)
    if scheme == "s3":
        if isinstance(storage, S3Storage) and parts.netloc == storage.bucket:
            full = path.lstrip("/")
            if full.startswith(storage.prefix):
                return full[len(storage.prefix) :] or None
        return None
    if scheme not in ("http", "https"):
        return None
    bases = list(public_urls)
    if isinstance(storage, LocalFolderStorage):
        bases.append(storage.public_url)
    for base in bases:
        route = urlsplit(base.rstrip("/") + DOWNLOAD_ROUTE)
        same_origin = (scheme, parts.netloc.lower()) == (route.scheme.lower(), route.netloc.lower())
        if same_origin and parts.path.startswith(route.path):
            return unquote(parts.path[len(route.path) :]) or None
    if isinstance(storage, S3Storage):
        for endpoint in (storage.endpoint_url, storage.public_endpoint_url):
            if endpoint is None:
                continue
            origin = urlsplit(endpoint)
            bucket_path = f"{origin.path.rstrip('/')}/{storage.bucket}/{storage.prefix}"
            if parts.netloc.lower() == origin.netloc.lower() and path.startswith(bucket_path):
                return path[len(bucket_path) :] or None
    return None
