"""A job's status as clients see it: the durable row merged with its live progress (docs/farm-design.md).

`build_snapshot` is a pure function of what was read; `read_snapshot` does the reads (row, live progress,
artifacts, queue position, wait estimate). The response models document the shape in `/openapi.json`.

`seq` = `row.seq × 2^20 + live.seq`: the row's seq grows with every durable change, the live counter with every
progress write of the running attempt, so a larger `seq` is always a newer snapshot of the same job.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shared.db import ArtifactRow, JobRow
from shared.live import LivePreview, LiveProgress
from shared.states import JobState
from shared.storage import Storage

if TYPE_CHECKING:
    from scheduler.deps import Services

log = logging.getLogger("scheduler.snapshots")

LIVE_SEQ_BITS = 20
LIVE_SEQ_SPAN = 2**LIVE_SEQ_BITS  # live progress writes per attempt that fit below one durable change
DOWNLOAD_URL_EXPIRES_S = 3600  # lifetime of the artifact URLs in a snapshot (seconds)
# A queued job's position is counted up to here: a job further back shows this number (and an eta from it). The
# count is the costliest read of a status request, and a job 1,000 places back needs no exact place; without the
# cap a status read cost 23 ms of PostgreSQL time with 25,000 jobs queued (bench/RESULTS.md).
QUEUE_POSITION_CAP = 1000


# --------------------------------------------------------------------------------------------------------------
# The documented shape


class ErrorOut(BaseModel):
    type: str
    code: str
    message: str
    field: str | None = None


class ArtifactOut(BaseModel):
    kind: str  # result | overlay | mask
    index: int
    url: str  # a download URL that expires (presigned S3, or a signed /v1/files/ URL)
    sha256: str
    bytes: int
    width: int
    height: int
    seed: int | None = None
    infotext: str | None = None


class PreviewOut(BaseModel):
    """A running job's newest live preview (docs/api.md "Live previews"): `id` grows with every preview; `image` is
    a data URI (PNG, or JPEG when the PNG would be too big), at most 512 pixels a side."""

    id: int
    step: int
    job_no: int
    method: str
    requested_method: str
    width: int
    height: int
    image: str


class JobSnapshot(BaseModel):
    """One job's status. Times are ISO 8601 UTC; `progress` is 0..1; `eta_s` in seconds (null when unknown).

    `queue_position` (queued jobs only) is the number of jobs of its queue that run first, counted up to 1,000:
    a job further back shows 1000, and its `eta_s` is then a lower bound.
    """

    task_id: str
    state: JobState
    progress: float
    step: int
    total_steps: int | None
    eta_s: float | None
    queue_position: int | None
    attempt: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    worker: str | None
    error: ErrorOut | None
    warnings: list[dict[str, Any]]
    artifacts: list[ArtifactOut]
    seq: int
    preview: PreviewOut | None = None  # only when asked for (`?previews=true`) and one was drawn
    results_purged_at: str | None = None  # when the retention purge deleted the artifacts (docs/api.md "Retention")


class JobList(BaseModel):
    jobs: list[JobSnapshot]
    next_cursor: str | None


# --------------------------------------------------------------------------------------------------------------
# Building


def public_worker_name(name: str | None) -> str | None:
    """A worker's name as tenants see it: `gpu0@host` becomes `gpu0@<8 hex digits>`, a digest of the whole name.
    Two jobs on one worker still show one name, but the operator's host names stay inside the farm."""
    if not name:
        return None
    slot, _, _host = name.partition("@")
    return f"{slot}@{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def current_live(row: JobRow, live: LiveProgress | None) -> LiveProgress | None:
    """The live progress if it belongs to this row now: the row is running and the record is of its attempt."""
    if live is None or row.state is not JobState.RUNNING or live.attempt != row.attempt:
        return None
    return live


def preview_out(preview: LivePreview) -> dict[str, Any]:
    return {
        "id": preview.preview_id,
        "step": preview.step,
        "job_no": preview.job_no,
        "method": preview.method,
        "requested_method": preview.requested_method,
        "width": preview.width,
        "height": preview.height,
        "image": preview.data_uri,
    }


def snapshot_seq(row: JobRow, live: LiveProgress | None) -> int:
    """`row.seq × 2^20 + live.seq` (live only when `current_live`); the live part is capped below 2^20."""
    live_part = min(max(live.seq, 0), LIVE_SEQ_SPAN - 1) if live is not None else 0
    return row.seq * LIVE_SEQ_SPAN + live_part


def artifact_out(artifact: ArtifactRow, storage: Storage) -> dict[str, Any]:
    return {
        "kind": artifact.kind,
        "index": artifact.index,
        "url": storage.download_url(artifact.storage_key, DOWNLOAD_URL_EXPIRES_S),
        "sha256": artifact.sha256,
        "bytes": artifact.bytes,
        "width": artifact.width,
        "height": artifact.height,
        "seed": artifact.seed,
        "infotext": artifact.infotext,
    }


def build_snapshot(
    row: JobRow,
    live_progress: LiveProgress | None,
    artifacts: Sequence[ArtifactRow],
    storage: Storage,
    queue_position: int | None,
    eta: float | None,
    preview: LivePreview | None = None,
) -> dict[str, Any]:
    """The API's snapshot of a job (api.md "Status"), as a JSON-ready dict.

    `live_progress` is merged only while the row is running under the same attempt. `queue_position` and `eta`
    (seconds) are shown only for a queued job; a running job's eta is the worker's own estimate.
    """
    live = current_live(row, live_progress)
    if row.state is JobState.SUCCEEDED:
        progress, step, total_steps = 1.0, row.total_steps or 0, row.total_steps
    elif live is not None:
        progress = min(max(live.fraction, 0.0), 1.0)
        step, total_steps = live.step, live.total_steps
    else:
        progress, step, total_steps = 0.0, 0, row.total_steps
    if row.state is JobState.QUEUED:
        eta_s, position = eta, queue_position
    elif live is not None:
        eta_s, position = live.eta_s, None
    else:
        eta_s, position = None, None
    return {
        "task_id": row.task_id,
        "state": row.state.value,
        "progress": progress,
        "step": step,
        "total_steps": total_steps,
        "eta_s": eta_s,
        "queue_position": position,
        "attempt": row.attempt,
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "worker": public_worker_name((live.worker if live is not None and live.worker else None) or row.worker),
        "error": row.error.to_dict() if row.error is not None else None,
        "warnings": [dict(warning) for warning in row.warnings],
        "artifacts": [artifact_out(artifact, storage) for artifact in artifacts],
        "seq": snapshot_seq(row, live),
        "preview": preview_out(preview) if preview is not None and _preview_is_current(row, preview) else None,
        "results_purged_at": _iso(row.results_purged_at),
    }


def _preview_is_current(row: JobRow, preview: LivePreview | None) -> bool:
    return preview is not None and row.state is JobState.RUNNING and preview.attempt == row.attempt


# --------------------------------------------------------------------------------------------------------------
# Reading


def read_snapshot(
    services: Services,
    row: JobRow,
    *,
    with_queue: bool = True,
    live: Mapping[str, LiveProgress] | None = None,
    previews: bool = False,
) -> dict[str, Any]:
    """Read what a snapshot of `row` needs and build it. Blocking (database, Redis): call it from a thread.

    `with_queue=False` skips the queue position and wait estimate (one COUNT each; lists leave them out).
    `live`, when given, is the already-read progress by job id (a list reads it for all rows at once).
    `previews=True` (a client that shows live previews) marks an unfinished job watched, so its worker draws them,
    and adds the newest one.
    A live status that cannot be reached degrades to the durable row: the job's state never depends on it.
    """
    if live is not None:
        progress = live.get(str(row.id))
    elif row.state is JobState.RUNNING:
        progress = safe_live_progress(services, row)
    else:
        progress = None
    artifacts = services.db.jobs.artifacts_of(row.id) if row.state is JobState.SUCCEEDED else []
    queued = with_queue and row.state is JobState.QUEUED
    position = services.db.stats.queue_position(row, cap=QUEUE_POSITION_CAP) if queued else None
    eta = services.estimator.wait_s(row.queue, position) if position is not None else None
    preview = watched_preview(services, row) if previews else None
    return build_snapshot(row, progress, artifacts, services.storage, position, eta, preview)


def safe_live_progress(services: Services, row: JobRow) -> LiveProgress | None:
    try:
        return services.live.get_progress(row.id)
    except Exception as exc:  # Redis down or a malformed record: show the durable state only
        log.warning("live progress of job %s unavailable: %s", row.id, exc)
        return None


def safe_live_many(services: Services, rows: Sequence[JobRow]) -> dict[str, LiveProgress]:
    running = [row.id for row in rows if row.state is JobState.RUNNING]
    if not running:
        return {}
    try:
        return services.live.get_many(running)
    except Exception as exc:  # see safe_live_progress
        log.warning("live progress unavailable: %s", exc)
        return {}


def watched_preview(services: Services, row: JobRow) -> LivePreview | None:
    """Mark an unfinished job watched (its worker draws live previews for the next few seconds) and return its
    newest preview of the running attempt, if any. Never raises: without a live status there are no previews."""
    if row.is_terminal:
        return None
    try:
        services.live.mark_watched(row.id)
        preview = services.live.get_preview(row.id) if row.state is JobState.RUNNING else None
    except Exception as exc:  # see safe_live_progress
        log.warning("live preview of job %s unavailable: %s", row.id, exc)
        return None
    return preview if _preview_is_current(row, preview) else None
