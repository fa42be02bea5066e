"""`/v1/assets`: upload an input image once (content-addressed by sha256) and reference it as `asset:<sha256>`.

The body is the image itself (any `Content-Type`), or `multipart/form-data` with the image as its file part
(field `file`, or the first part). Multipart is parsed with the standard library's MIME parser, so the farm needs
no extra dependency.

Limits at the edge (docs/api.md "Auth, limits, errors"): the body is bounded by the request size limit
(`BodyLimitMiddleware`: `Content-Length` before reading, bytes counted while streaming); a multipart body's parts are
counted while it streams in (a C-speed search for the boundary, no parsing), and a body with more than
`RENDERFARM_MAX_UPLOAD_PARTS` parts is refused with 413 before any parsing; the rest of such a body is drained, not
kept, so the client reads a clean answer. Parsing, hashing and decoding run in worker threads: a large upload never
holds up the event loop, hence never another tenant's requests.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from scheduler.assets import asset_body, store_asset
from scheduler.auth import TenantDep
from scheduler.deps import ServicesDep
from scheduler.routes import create_or_get_responses, created_or_existing
from shared.errors import InputError, NotFound, PayloadTooLarge
from shared.images import ImageLimits

router = APIRouter(prefix="/v1/assets", tags=["assets"])

UPLOAD_FIELD = "file"
_ASSET_ID_RE = re.compile(r"(?:asset:)?([0-9a-f]{64})")


class AssetOut(BaseModel):
    asset_id: str  # asset:<sha256>, what a job references
    sha256: str
    width: int  # pixels, after EXIF orientation
    height: int
    mime: str
    bytes: int


def file_of_multipart(content_type: str, body: bytes) -> bytes:
    """The uploaded file of a multipart/form-data body: the part named `file`, else the first part.

    Raises InputError (field `file`) for a body without parts.
    """
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    parts = list(message.iter_parts()) if message.is_multipart() else []
    chosen = next(
        (part for part in parts if part.get_param("name", header="content-disposition") == UPLOAD_FIELD), None
    )
    if chosen is None and parts:
        chosen = parts[0]
    payload = chosen.get_payload(decode=True) if chosen is not None else None
    if not isinstance(payload, bytes) or not payload:
        raise InputError(
            "file: the multipart body has no file part; send the image as field 'file' or as the raw body",
            code="missing",
            field=UPLOAD_FIELD,
        )
    return payload


class DelimiterCounter:
    """Counts the boundary delimiters of a multipart body fed in chunks (one split between chunks counts once).
    Every part opens with one, and one more closes the body."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"--" + boundary
        self._tail = b""
        self.delimiters = 0

    def feed(self, chunk: bytes) -> None:
        window = self._tail + chunk
        self.delimiters += window.count(self._delimiter)
        # Keep less than one delimiter's length: an occurrence wholly inside the tail was counted already.
        self._tail = window[-(len(self._delimiter) - 1) :]


def _boundary(content_type: str) -> bytes | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1", "replace")
    return None


async def read_multipart(request: Request, content_type: str, max_parts: int) -> bytes:
    """The body of a multipart upload, read while its parts are counted; PayloadTooLarge (413, code
    `too_many_parts`) once it has more than `max_parts` parts. The rest of a refused body is read and dropped."""
    boundary = _boundary(content_type)
    counter = DelimiterCounter(boundary) if boundary is not None else None
    body = bytearray()
    refused = False
    async for chunk in request.stream():
        if refused:
            continue  # drain: the client gets its answer on a clean connection
        body += chunk
        if counter is not None:
            counter.feed(chunk)
            if counter.delimiters > max_parts + 1:
                refused = True
                body.clear()
    if refused:
        raise PayloadTooLarge(
            f"{UPLOAD_FIELD}: the multipart body has more than {max_parts} parts; send the image as field "
            f"'{UPLOAD_FIELD}' (one part) or as the raw body",
            code="too_many_parts",
            field=UPLOAD_FIELD,
        )
    return bytes(body)


@router.post(
    "",
    summary="Upload an input image (raw body or multipart field 'file')",
    response_model=None,
    responses=create_or_get_responses(
        AssetOut,
        existing="you had uploaded these bytes before",
        created="stored",
        errors={
            413: "the image or body is over the limits, or a multipart body has too many parts",
            422: "not a supported image (PNG, JPEG, WebP, GIF, BMP)",
        },
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "image/*": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary"}}}
                },
            },
        }
    },
)
async def upload_asset(request: Request, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/"):
        body = await read_multipart(request, content_type, services.settings.max_upload_parts)
        data = await run_in_threadpool(file_of_multipart, content_type, body)
    else:
        data = await request.body()  # bounded by BodyLimitMiddleware
    if not data:
        raise InputError("file: the body is empty; send the image's bytes", code="missing", field=UPLOAD_FIELD)
    # Uploads may be larger than inline images: only the request limit bounds their bytes.
    limits = ImageLimits(max_pixels=services.settings.max_image_pixels, max_bytes=services.settings.max_request_bytes)
    asset, created = await run_in_threadpool(store_asset, services, tenant, data, field=UPLOAD_FIELD, limits=limits)
    return created_or_existing(asset_body(asset), created=created)


@router.get("/{asset_id}", summary="An asset's description", response_model=AssetOut)
def get_asset(
    asset_id: Annotated[str, Path(description="asset:<sha256> or the bare sha256")],
    services: ServicesDep,
    tenant: TenantDep,
) -> JSONResponse:
    match = _ASSET_ID_RE.fullmatch(asset_id)
    if match is None:
        raise NotFound(f"no asset {asset_id!r}", code="asset_not_found")
    return JSONResponse(asset_body(services.db.assets.get(tenant, match.group(1))))
