"""`/v1/jobs`: submit (create-or-get), read, list and cancel jobs (api.md "Submit", "Status", "Cancel").

The routes are synchronous on purpose: everything they do blocks (database, storage, Redis), so FastAPI runs them
in its worker threads.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse

from scheduler.auth import TenantDep
from scheduler.deps import Services, ServicesDep
from scheduler.routes import Responses, checked_task_id, create_or_get_responses, created_or_existing
from scheduler.snapshots import JobList, JobSnapshot, read_snapshot, safe_live_many
from scheduler.submission import Submission, submit_job
from shared.db import MAX_LIST_LIMIT
from shared.live import events_key
from shared.states import JobState

log = logging.getLogger("scheduler.routes.jobs")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

DEFAULT_LIST_LIMIT = 50
# The body is validated by shared.job.spec.parse_job (with the farm's limits), not by FastAPI; this documents it.
JOB_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Img2ImgJob"}}},
    }
}
ERROR_RESPONSES: Responses = {
    401: {"description": "missing or invalid API token"},
    404: {"description": "no such job for this tenant"},
    410: {"description": "the job was purged at the end of its retention period (the error carries purged_at)"},
    422: {"description": "invalid request, naming the field"},
}


def _submit_responses(existing: str, conflict: str) -> Responses:
    """The documented answers of a job submission: `existing` (200) and `conflict` (409) say what the id was."""
    return create_or_get_responses(
        JobSnapshot,
        existing=existing,
        errors={
            409: conflict,
            413: "an inline image or the body is over the limit",
            429: "too many queued jobs (Retry-After)",
        },
        common=ERROR_RESPONSES,
    )


def _submitted(services: Services, submission: Submission) -> JSONResponse:
    return created_or_existing(
        read_snapshot(services, submission.row),
        created=submission.created,
        location=f"/v1/jobs/{submission.row.task_id}",
    )


@router.put(
    "/{task_id}",
    summary="Create a job under a client-chosen id, or get the job that id already names",
    response_model=None,
    responses=_submit_responses(
        "the job existed with the same request", "the id is taken by a different request (both hashes named)"
    ),
    openapi_extra=JOB_BODY_DOC,
)
def put_job(task_id: str, body: Annotated[Any, Body()], services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    submission = submit_job(services, tenant, body, task_id=checked_task_id(task_id))
    return _submitted(services, submission)


@router.post(
    "",
    summary="Create a job with a server-chosen id (or the body's force_task_id)",
    response_model=None,
    responses=_submit_responses(
        "force_task_id named an existing job with the same request", "force_task_id is taken by a different request"
    ),
    openapi_extra=JOB_BODY_DOC,
)
def post_job(body: Annotated[Any, Body()], services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    return _submitted(services, submit_job(services, tenant, body))


@router.get(
    "/{task_id}",
    summary="A job's status",
    response_model=JobSnapshot,
    responses=ERROR_RESPONSES,
    description="`previews=true`: the worker draws live previews of the job while such reads keep coming (a few "
    "seconds each), and the snapshot carries the newest one in `preview`.",
)
def get_job(
    task_id: str, services: ServicesDep, tenant: TenantDep, previews: Annotated[bool, Query()] = False
) -> JSONResponse:
    row = services.db.jobs.get(tenant, checked_task_id(task_id))
    return JSONResponse(read_snapshot(services, row, previews=previews))


@router.get(
    "",
    summary="List your jobs, newest first",
    response_model=JobList,
    responses=ERROR_RESPONSES,
    description="Pages with an opaque `cursor`; `next_cursor` is null on the last page. Every job is listed once "
    "even while new ones arrive. `queue_position` and `eta_s` are left out (null) in lists.",
)
def list_jobs(
    services: ServicesDep,
    tenant: TenantDep,
    state: Annotated[JobState | None, Query()] = None,
    batch: Annotated[uuid.UUID | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT,
) -> JSONResponse:
    rows, next_cursor = services.db.jobs.list_jobs(tenant, state=state, batch_id=batch, cursor=cursor, limit=limit)
    live = safe_live_many(services, rows)
    snapshots = [read_snapshot(services, row, with_queue=False, live=live) for row in rows]
    return JSONResponse({"jobs": snapshots, "next_cursor": next_cursor})


@router.post(
    "/{task_id}/cancel",
    summary="Cancel a job, in any state",
    response_model=JobSnapshot,
    responses=ERROR_RESPONSES,
    description="queued: canceled at once. running: cancel requested; the worker stops at its next step and the "
    "state becomes canceled then. finished: unchanged. Always 200 with the job's snapshot.",
)
def cancel_job(task_id: str, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    row = services.db.jobs.request_cancel(tenant, checked_task_id(task_id))
    try:
        if row.state is JobState.RUNNING and row.cancel_requested:
            # The fast flag the worker checks at every step; the durable one (in the row) is seen at lease renewal.
            services.live.request_cancel(row.id)
        services.live.notify(row.id)
        if row.state is JobState.CANCELED:  # canceled here, while queued: its event is written
            services.live.notify(events_key(tenant))
    except Exception as exc:
        # The durable flag is set; a worker still sees it at its next lease renewal.
        log.warning("live cancel flag for job %s not set: %s", row.task_id, exc)
    return JSONResponse(read_snapshot(services, row))
