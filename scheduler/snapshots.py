"""A job's status as clients see it: the durable row merged with its live progress (docs/farm-design.md).

`build_snapshot` is a pure function of what was read; `read_snapshot` does the reads (row, live progress,
artifacts, queue standing, waiting reason, ETA range). The response models document the shape in `/openapi.json`.

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

from scheduler.wait_estimate import Eta
from scheduler.waiting import QueueView, waiting_reason
from shared.db import ArtifactRow, JobRow, QueueStanding
from shared.errors import NotFound
from shared.job.stops import STOP_INTERRUPTED, STOP_SKIPPED, stopped_early
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


class WaitingOut(BaseModel):
    """Why an unfinished job is not done yet (docs/api.md "Waiting reasons"): a stable `reason` code, a sentence,
    since when (null when unknown), and the reason's details: only those of its reason are present."""

    reason: str
    message: str
    since: str | None
    jobs_ahead: int | None = None  # queued, behind_priority, tenant_fair_share (counted up to 1,000)
    higher_priority_ahead: int | None = None  # behind_priority
    own_tenant_ahead: int | None = None  # tenant_fair_share
    queue: str | None = None  # no_worker
    model: str | None = None  # no_worker (null: the default model)
    retry_at: str | None = None  # outage_backoff, retry_backoff
    outage_requeues: int | None = None  # outage_backoff
    lease_until: str | None = None  # worker_silent


class JobSnapshot(BaseModel):
    """One job's status. Times are ISO 8601 UTC; `progress` is 0..1; `eta_s` in seconds (null when unknown).

    `queue_position` (queued jobs only) is the number of jobs of its queue that run first, counted up to 1,000:
    a job further back shows 1000, and its `eta_s` is then a lower bound.
    `eta_range_s` is `[low, high]` around `eta_s` (the quartiles of recent jobs' speed, scaled by this job's size).
    `waiting` says why a queued job, or a running one that is not rendering, is not done yet (null otherwise).
    `interrupted` / `skipped`: the job was stopped early by an A1111 interrupt / skip and holds the partial result
    (`stopped_at_step` says where); `cancel_requested`: a cancel was taken and the worker has not stopped yet.
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
    eta_range_s: list[float] | None = None
    waiting: WaitingOut | None = None
    cancel_requested: bool = False
    interrupted: bool = False
    skipped: bool = False
    stopped_at_step: int | None = None
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
    eta: Eta | float | None,
    preview: LivePreview | None = None,
    waiting: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The API's snapshot of a job (api.md "Status"), as a JSON-ready dict.

    `live_progress` is merged only while the row is running under the same attempt. `queue_position` is shown only
    for a queued job; `eta` is the job's estimate (scheduler/wait_estimate.py: a range, or plain seconds) for a
    queued or running job, where a running job's `eta_s` is the worker's own estimate when it gave one.
    `waiting` is the reason (scheduler/waiting.py) for an unfinished job.
    """
    live = current_live(row, live_progress)
    stop = stopped_early(row.warnings) if row.state is JobState.SUCCEEDED else None
    if row.state is JobState.SUCCEEDED:
        total_steps = row.total_steps
        step = stop.step if stop is not None and stop.step is not None else total_steps or 0
        progress = 1.0
    elif live is not None:
        progress = min(max(live.fraction, 0.0), 1.0)
        step, total_steps = live.step, live.total_steps
    else:
        progress, step, total_steps = 0.0, 0, row.total_steps
    eta_s, eta_range = _eta_fields(eta)
    if row.state is JobState.QUEUED:
        position = queue_position
    elif row.state is JobState.RUNNING:
        position = None
        if live is not None and live.eta_s is not None:
            eta_s = live.eta_s
            if eta_range is not None:  # the worker's own figure lies inside the range shown
                eta_range = [min(eta_range[0], eta_s), max(eta_range[1], eta_s)]
        elif live is None:
            eta_s, eta_range = None, None
    else:
        eta_s, eta_range, position = None, None, None
    return {
        "task_id": row.task_id,
        "state": row.state.value,
        "progress": progress,
        "step": step,
        "total_steps": total_steps,
        "eta_s": eta_s,
        "eta_range_s": eta_range,
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
        "waiting": None if row.is_terminal else waiting,
        "cancel_requested": row.cancel_requested and row.state is JobState.RUNNING,
        "interrupted": stop is not None and stop.code == STOP_INTERRUPTED,
        "skipped": stop is not None and stop.code == STOP_SKIPPED,
        "stopped_at_step": stop.step if stop is not None else None,
        "results_purged_at": _iso(row.results_purged_at),
    }


def _eta_fields(eta: Eta | float | None) -> tuple[float | None, list[float] | None]:
    if eta is None:
        return None, None
    if isinstance(eta, Eta):
        fields = eta.fields()
        return fields["eta_s"], fields["eta_range_s"]
    return eta, None


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

    `with_queue=False` skips the queue standing (one statement of capped counts; lists leave it out), and with it a
    queued job's position, ETA and the counts of its waiting reason.
    `live`, when given, is the already-read progress by job id (a list reads it for all rows at once).
    `previews=True` (a client that shows live previews) marks an unfinished job watched, so its worker draws them,
    and adds the newest one.
    A live status that cannot be reached degrades to the durable row: the job's state never depends on it.
    """
    progress = live.get(str(row.id)) if live is not None else None
    if progress is None:  # not read yet, or the list's read found none: see running_live
        row, progress = running_live(services, row)
    artifacts = services.db.jobs.artifacts_of(row.id) if row.state is JobState.SUCCEEDED else []
    standing = None
    if with_queue and row.state is JobState.QUEUED:
        standing = services.db.stats.queue_standing(row, cap=QUEUE_POSITION_CAP)
    position = standing.position if standing is not None else None
    waiting = None if row.is_terminal else read_waiting(services, row, standing)
    eta = read_eta(services, row, position, current_live(row, progress))
    preview = watched_preview(services, row) if previews else None
    return build_snapshot(row, progress, artifacts, services.storage, position, eta, preview, waiting)


def read_waiting(services: Services, row: JobRow, standing: QueueStanding | None) -> dict[str, Any] | None:
    """The waiting reason of an unfinished row, from the registry's cached answers; None when they cannot be read
    (the snapshot never fails for it)."""
    try:
        registry = services.workers
        view = QueueView(
            served=registry.serves_queue(row.queue),
            last_served_at=registry.last_served_at(row.queue),
            worker_live=row.worker is None or registry.is_live(row.worker),
            cap=QUEUE_POSITION_CAP,
        )
        return waiting_reason(row, standing, view, services.db.now())
    except Exception as exc:
        log.warning("waiting reason of job %s unavailable: %s", row.task_id, exc)
        return None


def read_eta(services: Services, row: JobRow, position: int | None, live: LiveProgress | None) -> Eta | None:
    """The size-aware estimate of a queued job with a known position, or of a running job that is rendering."""
    estimator = services.estimator
    if row.state is JobState.QUEUED and position is not None:
        workers = services.workers.workers_serving(row.queue)
        return estimator.queued(row.queue, row.total_steps, row.request, position, workers)
    if row.state is JobState.RUNNING and live is not None:
        return estimator.running(row.queue, row.total_steps, row.request, min(max(live.fraction, 0.0), 1.0))
    return None


def running_live(services: Services, row: JobRow) -> tuple[JobRow, LiveProgress | None]:
    """The row and its live progress, read so that they agree; `(row, None)` without a read unless it runs.

    A worker commits a job's end before it clears the live record, so a read falling between the two finds a
    running row with no record: progress 0 after 0.9, a step counter going back. A running row without a record
    is therefore read again; only when it still runs under the same attempt does "no progress yet" stand.
    """
    if row.state is not JobState.RUNNING:
        return row, None
    live = current_live(row, safe_live_progress(services, row))
    if live is not None:
        return row, live
    try:
        fresh = services.db.jobs.get_by_id(row.id)
    except NotFound:  # purged meanwhile: the row read first is the last thing known
        return row, None
    if fresh.state is JobState.RUNNING and fresh.attempt != row.attempt:  # taken over meanwhile
        return fresh, current_live(fresh, safe_live_progress(services, fresh))
    return fresh, None


def safe_live_progress(services: Services, row: JobRow) -> LiveProgress | None:
    try:
        return services.live.get_progress(row.id)
    except Exception as exc:  # Redis down or a malformed record: show the durable state only
        log.warning("live progress of job %s unavailable: %s", row.task_id, exc)
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
        log.warning("live preview of job %s unavailable: %s", row.task_id, exc)
        return None
    return preview if _preview_is_current(row, preview) else None
