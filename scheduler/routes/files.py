"""`/v1/files/{key}`: downloads from the local-folder storage of the embedded default, by signed URL.

The URL's `expires` and `sig` are the credential (no API token: the URL is handed to browsers and tools). A bad or
expired signature, an unknown key and S3 storage (whose downloads are presigned S3 URLs) all answer the same 404,
so probing tells nothing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from scheduler.deps import ServicesDep
from shared.errors import NotFound
from shared.storage import LocalFolderStorage

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get(
    "/{key:path}",
    summary="Download a stored file by signed URL (local-folder storage only)",
    response_class=FileResponse,
    responses={404: {"description": "unknown key, bad or expired signature"}},
)
def download_file(
    key: str,
    services: ServicesDep,
    expires: Annotated[str, Query(max_length=20)] = "",
    sig: Annotated[str, Query(max_length=128)] = "",
) -> FileResponse:
    storage = services.storage
    if not isinstance(storage, LocalFolderStorage):
        raise NotFound("no such file")
    storage.verify_download(key, expires, sig)
    path = storage.local_path(key)
    content_type = storage.head(key).content_type
    # Signed URLs are private and expire: no shared caches, and the browser's own copy only until expiry.
    return FileResponse(path, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"})
