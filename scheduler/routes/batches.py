"""`/v1/batches`: fan a list of jobs or a grid out into child jobs, watch them as one, cancel them as one.

The logic is in `scheduler.batches`; these routes resolve the tenant and shape the answer. They are synchronous
on purpose: everything they do blocks (database, storage, Redis), so FastAPI runs them in its worker threads.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from scheduler.auth import TenantDep
from scheduler.batches import DEFAULT_ITEMS_PAGE, MAX_ITEMS_PAGE, cancel_batch, read_batch, submit_batch
from scheduler.deps import ServicesDep
from scheduler.routes import Responses, create_or_get_responses, created_or_existing
from scheduler.snapshots import JobSnapshot
from shared.states import JobState

router = APIRouter(prefix="/v1/batches", tags=["batches"])

ERROR_RESPONSES: Responses = {
    401: {"description": "missing or invalid API token"},
    404: {"description": "no such batch for this tenant"},
    410: {"description": "the batch was purged at the end of its retention period (the error carries purged_at)"},
    422: {"description": "invalid request, naming the field"},
}
BATCH_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "batch_id": {"type": "string", "format": "uuid", "description": "makes it create-or-get"},
                        "defaults": {"type": "object", "description": "job fields under every item"},
                        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Img2ImgJob"}},
                        "grid": {
                            "type": "object",
                            "properties": {
                                "mode": {"type": "string", "enum": ["product", "zip"]},
                                "axes": {"type": "object", "additionalProperties": {"type": "array"}},
                            },
                            "required": ["mode", "axes"],
                        },
                    },
                }
            }
        },
    }
}


class BatchCreated(BaseModel):
    batch_id: str
    mode: str  # list | product | zip
    requested: int
    enqueued: int  # children created by this request
    existing: int  # children that existed already (a retry of the same batch)
    task_ids: list[str]  # in the order of the manifest


class BatchStatus(BaseModel):
    """A batch's counts by state (they add up to `total`), progress 0..1, ETA in seconds, and a page of items."""

    batch_id: str
    mode: str
    created_at: str
    canceled_at: str | None
    requested: int
    total: int
    counts: dict[str, int]
    finished: int
    progress: float
    elapsed_s: float | None
    jobs_per_s: float | None
    eta_s: float | None
    eta_range_s: list[float] | None = None  # [low, high] around eta_s (docs/api.md "ETA")
    items: list[JobSnapshot]
    next_cursor: str | None


@router.post(
    "",
    summary="Create a batch of jobs from a list or a grid (create-or-get with a batch_id)",
    response_model=None,
    responses=create_or_get_responses(
        BatchCreated,
        existing="batch_id named the same batch; nothing new was created",
        errors={
            409: "the batch id, or a child's task id, is taken by a different request",
            413: "an inline image or the body is over the limit",
            429: "the children would pass your queued-jobs limit (Retry-After)",
        },
        common=ERROR_RESPONSES,
    ),
    openapi_extra=BATCH_BODY_DOC,
)
def post_batch(body: Annotated[Any, Body()], services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    submission = submit_batch(services, tenant, body)
    return created_or_existing(
        submission.to_body(), created=submission.created, location=f"/v1/batches/{submission.batch.id}"
    )


@router.get("/{batch_id}", summary="A batch's status and items", response_model=BatchStatus, responses=ERROR_RESPONSES)
def get_batch(
    batch_id: uuid.UUID,
    services: ServicesDep,
    tenant: TenantDep,
    state: Annotated[JobState | None, Query(description="only items in this state")] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ITEMS_PAGE)] = DEFAULT_ITEMS_PAGE,
) -> JSONResponse:
    return JSONResponse(read_batch(services, tenant, batch_id, state=state, cursor=cursor, limit=limit))


@router.post(
    "/{batch_id}/cancel",
    summary="Cancel what has not finished",
    response_model=BatchStatus,
    responses=ERROR_RESPONSES,
    description="Queued children are canceled at once, running ones stop at their next step; finished ones are "
    "unchanged. Always 200 with the batch's status.",
)
def post_cancel(batch_id: uuid.UUID, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    cancel_batch(services, tenant, batch_id)
    return JSONResponse(read_batch(services, tenant, batch_id))
