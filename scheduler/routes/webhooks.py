"""Events and webhooks (docs/api.md "Events and webhooks"):

- `GET /v1/events?after=<cursor>&wait_s=<s>`: the tenant's events, oldest first, after a cursor; waits up to `wait_s`
  seconds for the first one when there is none yet (a long poll). Each item is the webhook body plus its `cursor`.
  A waiting poll sleeps on the tenant's `events_key` (shared/live.py), which whoever ends a job notifies, and reads
  the feed again at least every `RECHECK_S` in case a wake-up was lost.
- `GET /v1/jobs/{task_id}/deliveries`: the job's webhook deliveries, their attempts and next retry.
- `POST /v1/jobs/{task_id}/deliveries/{event_id}/redeliver`: one more delivery of one of the job's events.
- `GET /v1/webhooks/secret`, `POST /v1/webhooks/secret/rotate`: the tenant's signing secret, and a new one (the old
  one keeps signing for `webhook_secret_overlap_s`).
- `PUT /v1/webhooks/default-url`: the URL of events whose job names no `webhook_url` (null clears it).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from scheduler.auth import TenantDep
from scheduler.deps import Services, ServicesDep
from scheduler.open_streams import wait_for_change
from scheduler.routes import Responses, checked_task_id
from scheduler.webhook_urls import check_submitted_webhook_url
from shared.db.events import DeliveryRow, EventRow, TenantSecrets
from shared.errors import InputError, NotFound
from shared.live import events_key

router = APIRouter(tags=["events"])

MAX_EVENTS = 500
DEFAULT_EVENTS = 100
MAX_WAIT_S = 30.0
RECHECK_S = 2.0  # the longest a waiting long poll goes without reading the feed (a lost wake-up costs this much)
MAX_CURSOR_DIGITS = 19

ERRORS: Responses = {
    401: {"description": "missing or invalid API token"},
    404: {"description": "no such job (or event) for this tenant"},
    422: {"description": "invalid request, naming the field"},
}


def _iso(when: datetime | None) -> str | None:
    return when.isoformat().replace("+00:00", "Z") if when is not None else None


def _event_out(row: EventRow) -> dict[str, Any]:
    return {"cursor": str(row.position), **row.body}


def _cursor(after: str | None) -> int:
    if after is None or after == "":
        return 0
    if not after.isdigit() or len(after) > MAX_CURSOR_DIGITS:
        raise InputError(
            "after: must be a cursor from an earlier answer (digits)", code="invalid_cursor", field="after"
        )
    return int(after)


@router.get(
    "/v1/events",
    summary="Your job and batch events after a cursor, oldest first (a long poll)",
    responses=ERRORS,
    description="Each item is the body a webhook delivery sends, plus `cursor`; pass the answer's `next_cursor` as "
    "`after` to read on. `wait_s` > 0 waits up to that long for the first event when none is there yet.",
)
async def list_events(
    services: ServicesDep,
    tenant: TenantDep,
    after: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = DEFAULT_EVENTS,
    wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0,
) -> JSONResponse:
    position = _cursor(after)
    deadline = time.monotonic() + wait_s
    rows = await run_in_threadpool(services.db.events.feed, tenant, position, limit)
    if not rows and wait_s > 0:
        rows = await _wait_for_events(services, tenant, position, limit, deadline)
    next_cursor = str(rows[-1].position) if rows else str(position)
    return JSONResponse({"events": [_event_out(row) for row in rows], "next_cursor": next_cursor})


async def _wait_for_events(
    services: Services, tenant: str, position: int, limit: int, deadline: float
) -> list[EventRow]:
    """The feed after `position` once it has something, or empty at `deadline` or when the server shuts down (a
    graceful shutdown answers waiting polls at once, scheduler/open_streams.py; the client polls again)."""
    loop = asyncio.get_running_loop()
    key = events_key(tenant)
    stopping = services.streams.stopping
    with services.streams.track(key) as poll:
        while (remaining := deadline - time.monotonic()) > 0 and not poll.ended.done():
            # Listening before the read, so that an event written during the read still wakes this wait.
            waiter = loop.run_in_executor(
                services.stream_waits, wait_for_change, services.live, key, min(remaining, RECHECK_S), stopping
            )
            rows = await run_in_threadpool(services.db.events.feed, tenant, position, limit)
            if rows:
                return rows
            await asyncio.wait((waiter, poll.ended), return_when=asyncio.FIRST_COMPLETED)
    return []


def _delivery_out(row: DeliveryRow, event_types: dict[str, str]) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "event_id": row.event_id,
        "event_type": event_types.get(row.event_id),
        "url": row.url,
        "state": row.state,
        "attempts": row.attempts,
        "next_attempt_at": _iso(row.next_attempt_at) if row.state == "pending" else None,
        "created_at": _iso(row.created_at),
        "finished_at": _iso(row.finished_at),
        "log": list(row.log or []),
    }


@router.get(
    "/v1/jobs/{task_id}/deliveries",
    summary="A job's events and their webhook deliveries: attempts, status codes, next retry",
    responses=ERRORS,
)
def job_deliveries(task_id: str, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    job = services.db.jobs.get(tenant, checked_task_id(task_id))
    job_events = services.db.events.of_job(tenant, job.id)
    types = {row.event_id: row.type for row in job_events}
    deliveries = services.db.events.deliveries_of_job(tenant, job.id)
    return JSONResponse(
        {
            "events": [_event_out(row) for row in job_events],
            "deliveries": [_delivery_out(row, types) for row in deliveries],
        }
    )


@router.post(
    "/v1/jobs/{task_id}/deliveries/{event_id}/redeliver",
    summary="Deliver one of a job's events again (to the URL of its latest delivery, or the job's webhook_url)",
    status_code=202,
    responses=ERRORS,
)
def redeliver(task_id: str, event_id: str, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    job = services.db.jobs.get(tenant, checked_task_id(task_id))
    types = {row.event_id: row.type for row in services.db.events.of_job(tenant, job.id)}
    if event_id not in types:
        raise NotFound(f"job {task_id!r} has no event {event_id!r}", code="event_not_found")
    known = [row for row in services.db.events.deliveries_of_job(tenant, job.id) if row.event_id == event_id]
    url = known[-1].url if known else None
    if url is None:
        url = (job.request.get("webhook_url") if isinstance(job.request, dict) else None) or (
            services.db.events.tenant_secrets(tenant).default_url
        )
    if url is None:
        raise InputError(
            "the job has no webhook_url and the tenant no default URL to deliver to",
            code="no_webhook_url",
            field="webhook_url",
        )
    row = services.db.events.redeliver(tenant, job.id, event_id, url)
    return JSONResponse(_delivery_out(row, types), status_code=202)


def _secrets_out(found: TenantSecrets) -> dict[str, Any]:
    return {
        "secret": found.secret,
        "previous_secret": found.previous_secret,
        "previous_valid_until": _iso(found.previous_until),
        "rotated_at": _iso(found.rotated_at),
        "default_url": found.default_url,
    }


@router.get("/v1/webhooks/secret", summary="Your webhook signing secret (created on first use)", responses=ERRORS)
def get_secret(services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    return JSONResponse(_secrets_out(services.db.events.tenant_secrets(tenant)))


@router.post(
    "/v1/webhooks/secret/rotate",
    summary="A new webhook signing secret; the previous one keeps signing during the overlap",
    responses=ERRORS,
)
def rotate_secret(services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    rotated = services.db.events.rotate_secret(tenant, services.settings.webhook_secret_overlap_s)
    return JSONResponse(_secrets_out(rotated))


@router.put(
    "/v1/webhooks/default-url",
    summary="The URL of events whose job names no webhook_url (and of batch events); null clears it",
    responses=ERRORS,
)
def put_default_url(services: ServicesDep, tenant: TenantDep, body: Annotated[dict[str, Any], Body()]) -> JSONResponse:
    url = body.get("url")
    if url is not None and not isinstance(url, str):
        raise InputError("url: must be a string or null", code="invalid_type", field="url")
    check_submitted_webhook_url(url, services.settings, "url")
    return JSONResponse(_secrets_out(services.db.events.set_default_url(tenant, url)))
