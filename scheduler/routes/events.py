"""`/v1/jobs/{task_id}/events`: the job's snapshots as server-sent events, until a terminal one.

Each event is `id: <seq>`, `event: snapshot`, `data: <snapshot JSON>`. The first is sent at once; then one per
change: the stream waits with `LiveStatus.wait_for_change` (woken by the worker's progress writes and the API's
notifies), re-reads the row and sends the snapshot if its seq grew. A queued job's standing (position, waiting
reason, estimate) moves while its row does not, as the jobs ahead start: when it changed, the snapshot is sent again
under the same seq (the SDK takes an equal seq with other content as the newer). A comment line keeps idle
connections (and proxies) alive every `KEEPALIVE_S`. `Last-Event-ID` (or `?last_event_id=`) resumes: snapshots with
a seq at or below it are skipped, and a stream whose client already has the terminal snapshot ends at once.

Waits are sliced (`WAIT_SLICE_S`) so that a notify sent between a read and the next wait is picked up by the next
read at the latest, and a live status that is down degrades to polling instead of ending the stream.

`?previews=true`: the open stream keeps the job watched (its worker draws live previews, docs/engine.md "Live
previews"; the mark is renewed at every wake-up, well within `WATCH_TTL_S`), and each new preview is sent as
`event: preview`, `data: <the snapshot's preview object>` (no `id:`, so `Last-Event-ID` stays a snapshot seq).
Snapshots in the stream carry no preview: the picture is sent once, not with every progress change.

A graceful shutdown ends every open stream at once (`scheduler/open_streams.py`): the stream simply ends, and its
client resumes on the next scheduler with `Last-Event-ID` (the SDK does; docs/reliability.md "Scheduler restarts").
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from scheduler.auth import TenantDep
from scheduler.deps import Services, ServicesDep
from scheduler.open_streams import wait_for_change
from scheduler.routes import checked_task_id
from scheduler.snapshots import preview_out, read_snapshot, watched_preview
from shared.errors import InputError

log = logging.getLogger("scheduler.routes.events")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

KEEPALIVE_S = 15.0  # seconds of silence before a keep-alive comment
WAIT_SLICE_S = 5.0  # the longest one wait for a change lasts before the row is read again
RETRY_MS = 2000  # the reconnect delay suggested to EventSource clients


def format_event(snapshot: dict[str, Any]) -> str:
    """One SSE message carrying a snapshot."""
    data = json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False)
    return f"id: {snapshot['seq']}\nevent: snapshot\ndata: {data}\n\n"


def standing(snapshot: dict[str, Any]) -> tuple[Any, ...] | None:
    """What changes for a queued job while its row does not (None for other states)."""
    if snapshot["state"] != "queued":
        return None
    waiting = json.dumps(snapshot.get("waiting"), sort_keys=True)
    return (snapshot.get("queue_position"), snapshot.get("eta_s"), snapshot.get("eta_range_s"), waiting)


def format_preview_event(preview: dict[str, Any]) -> str:
    """One SSE message carrying a live preview (no id: resuming goes by snapshot seq only)."""
    data = json.dumps(preview, separators=(",", ":"), ensure_ascii=False)
    return f"event: preview\ndata: {data}\n\n"


async def snapshot_stream(
    services: Services,
    job_id: uuid.UUID,
    resume_after: int,
    *,
    keepalive_s: float = KEEPALIVE_S,
    wait_slice_s: float = WAIT_SLICE_S,
    previews: bool = False,
) -> AsyncGenerator[str, None]:
    """The SSE text of one job's snapshots with seq > `resume_after`, ending after a terminal snapshot, or when
    the server shuts down (`services.streams.end_all`); with `previews`, its new live previews too."""
    loop = asyncio.get_running_loop()
    last_sent = resume_after
    last_standing: tuple[Any, ...] | None = None
    last_preview = -1
    last_output = loop.time()
    stopping = services.streams.stopping
    yield f"retry: {RETRY_MS}\n\n"
    with services.streams.track(job_id) as stream:
        while True:
            # Start waiting before reading, so a change that lands during the read still wakes the next wait.
            waiter = loop.run_in_executor(
                services.stream_waits, wait_for_change, services.live, job_id, wait_slice_s, stopping
            )
            row = await run_in_threadpool(services.db.jobs.get_by_id, job_id)
            snapshot = await run_in_threadpool(read_snapshot, services, row)
            # Marked watched before anything is sent, so the worker draws previews from the client's first event on.
            preview = await run_in_threadpool(watched_preview, services, row) if previews else None
            now_standing = standing(snapshot)
            moved = snapshot["seq"] == last_sent and last_standing is not None and now_standing != last_standing
            if snapshot["seq"] > last_sent or moved:
                yield format_event(snapshot)
                last_sent = snapshot["seq"]
                last_output = loop.time()
            if snapshot["seq"] >= last_sent:
                last_standing = now_standing
            if preview is not None and preview.preview_id != last_preview:
                yield format_preview_event(preview_out(preview))
                last_preview = preview.preview_id
                last_output = loop.time()
            if row.is_terminal or stream.ended.done():
                return
            await asyncio.wait((waiter, stream.ended), return_when=asyncio.FIRST_COMPLETED)
            if stream.ended.done():
                return
            if loop.time() - last_output >= keepalive_s:
                yield ": keep-alive\n\n"
                last_output = loop.time()


def _resume_point(header: str | None, query: int | None) -> int:
    if query is not None:
        return query
    if header is None or not header.strip():
        return -1
    try:
        return int(header.strip())
    except ValueError:
        raise InputError(
            "Last-Event-ID must be the id (a whole number) of an event this stream sent",
            code="invalid_last_event_id",
            field="Last-Event-ID",
        ) from None


@router.get(
    "/{task_id}/events",
    summary="Stream a job's snapshots (server-sent events) until it finishes",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 404: {"description": "no such job for this tenant"}},
)
async def job_events(
    task_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_query: Annotated[int | None, Query(alias="last_event_id", ge=0)] = None,
    previews: Annotated[bool, Query()] = False,
) -> StreamingResponse:
    resume_after = _resume_point(last_event_id, last_event_id_query)
    # Read once before streaming, so an unknown id (or another tenant's) is a typed 404, not an empty stream.
    row = await run_in_threadpool(services.db.jobs.get, tenant, checked_task_id(task_id))
    return StreamingResponse(
        snapshot_stream(services, row.id, resume_after, previews=previews),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
