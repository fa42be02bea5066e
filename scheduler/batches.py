"""Batches: one request fans out into many child jobs (api.md "Submit", `POST /v1/batches`).

A batch body is a list of jobs or a grid, with optional `defaults` under every item:

    {"batch_id": "<uuid>"?, "defaults": {...}?, "jobs": [{...job}, ...]}                                  mode "list"
    {"batch_id": "<uuid>"?, "defaults": {...}?, "grid": {"mode": "product" | "zip", "axes": {field: [values]}}}

A grid's axes are any job fields (`init_images`, `prompt`, `seed`, `cfg_scale`, `force_task_id`, ...); an
`init_images` value may be one image reference (a picture per item) or a list. "product" takes every combination
(the first axis varies slowest), "zip" takes the i-th value of every axis (all axes the same length). The mode is
always explicit: guessing it would silently turn 3 × 3 items into 3 or 9.

Children get `{batch_id}-{index}` as task id unless their request names a `force_task_id`. Every child is validated
and admitted exactly as `PUT /v1/jobs` does (the one admission path, `scheduler.admission`), then all are inserted
in ONE statement and transaction with the batch row (`Database.batches.create_if_absent`), on the batch tier's
queue (`queue_name(model, batch=True)`), so interactive jobs are not stuck behind a night's batch.

A client-chosen `batch_id` makes the request create-or-get, like `PUT /v1/jobs/{task_id}`: the same batch again
answers 200 with what exists; a different one under that id is 409. Batch ids are per tenant (the table's key is
`(tenant, id)`): another tenant's batch id is, to this tenant, an unused one. The SDK always sends one, so a
retry after a timeout can never create a second batch.

Every function here blocks (database, storage): call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from scheduler.admission import QUEUE_LIMIT_RETRY_AFTER_S, ImageNormaliser, admit
from scheduler.deps import Services
from scheduler.snapshots import read_snapshot, safe_live_many
from scheduler.wait_estimate import QueueRates
from shared.db import BatchRow, JobRow, NewJob
from shared.errors import Conflict, FieldProblem, InputError, NotFound, RateLimited
from shared.job.problems import headline_first
from shared.job.spec import Img2ImgJob, SpecLimits, parse_job
from shared.live import events_key
from shared.states import JobState

log = logging.getLogger("scheduler.batches")

GRID_MODES: Final = ("product", "zip")
MAX_REPORTED_PROBLEMS: Final = 20  # field problems named in one 422 of a batch; the rest are counted
DEFAULT_ITEMS_PAGE: Final = 100  # items per page of GET /v1/batches/{id}
MAX_ITEMS_PAGE: Final = 1000
_BODY_KEYS: Final = frozenset({"batch_id", "defaults", "jobs", "grid"})
_JOB_FIELDS: Final = frozenset(Img2ImgJob.model_fields)


@dataclass(frozen=True)
class BatchSubmission:
    """What `submit_batch` did: `created` False when the batch id already named the same batch."""

    batch: BatchRow
    created: bool
    requested: int
    enqueued: int
    existing: int
    task_ids: tuple[str, ...]

    def to_body(self) -> dict[str, Any]:
        return {
            "batch_id": str(self.batch.id),
            "mode": self.batch.mode,
            "requested": self.requested,
            "enqueued": self.enqueued,
            "existing": self.existing,
            "task_ids": list(self.task_ids),
        }


# --------------------------------------------------------------------------------------------------------------
# Expansion (pure)


def grid_size(axes: Mapping[str, Sequence[Any]], mode: str) -> int:
    """Items a grid expands to: the product of the axis lengths, or the common length for "zip"."""
    lengths = [len(values) for values in axes.values()]
    if not lengths:
        return 0
    return math.prod(lengths) if mode == "product" else lengths[0]


def expand_grid(axes: Mapping[str, Sequence[Any]], mode: str) -> Iterator[dict[str, Any]]:
    """The grid's items as field dicts, in order: for "product" the first axis varies slowest.

    An `init_images` value that is one string becomes a one-image list. Call `check_grid` first.
    """
    names = list(axes)
    rows = itertools.product(*axes.values()) if mode == "product" else zip(*axes.values(), strict=True)
    for values in rows:
        item = dict(zip(names, values, strict=True))
        if isinstance(item.get("init_images"), str):
            item["init_images"] = [item["init_images"]]
        yield item


def check_grid(grid: Any, max_items: int) -> tuple[dict[str, list[Any]], str]:
    """The grid's `(axes, mode)` after checking its shape; InputError naming `grid...` otherwise."""
    if not isinstance(grid, Mapping):
        raise InputError("grid: must be an object with 'mode' and 'axes'", code="invalid_type", field="grid")
    unknown = sorted(set(grid) - {"mode", "axes"})
    if unknown:
        raise InputError(
            f"grid.{unknown[0]}: unknown key; a grid has 'mode' and 'axes'", code="unknown_field", field="grid"
        )
    mode = grid.get("mode")
    if mode not in GRID_MODES:
        raise InputError(
            f"grid.mode: must be 'product' (every combination) or 'zip' (the i-th value of every axis), not {mode!r}",
            code="invalid_choice",
            field="grid.mode",
        )
    axes = grid.get("axes")
    if not isinstance(axes, Mapping) or not axes:
        raise InputError(
            "grid.axes: must be a non-empty object of field name → list of values",
            code="invalid_type",
            field="grid.axes",
        )
    checked: dict[str, list[Any]] = {}
    for name, values in axes.items():
        field = f"grid.axes.{name}"
        if name not in _JOB_FIELDS:
            raise InputError(f"{field}: {name!r} is not a job field", code="unknown_field", field=field)
        if not isinstance(values, list) or not values:
            raise InputError(f"{field}: must be a non-empty list of values", code="invalid_type", field=field)
        checked[name] = values
    if mode == "zip":
        lengths = {name: len(values) for name, values in checked.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{name}: {length}" for name, length in lengths.items())
            raise InputError(
                f"grid.axes: a 'zip' grid needs axes of one length, these have {shown}; use 'product' for every "
                "combination",
                code="length_mismatch",
                field="grid.axes",
            )
    size = grid_size(checked, mode)
    if size > max_items:
        raise InputError(
            f"grid: expands to {size} items, over the limit of {max_items} per batch; split it into several batches",
            code="too_many_items",
            field="grid",
        )
    return checked, mode


def child_task_id(batch_id: uuid.UUID, index: int) -> str:
    """The task id of a batch's `index`-th child that names none: `{batch_id}-{index}`."""
    return f"{batch_id}-{index}"


# --------------------------------------------------------------------------------------------------------------
# Submission


def _batch_id_of(body: Mapping[str, Any]) -> uuid.UUID | None:
    value = body.get("batch_id")
    if value is None:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InputError("batch_id: must be a UUID", code="invalid_format", field="batch_id") from None


def _items_of(body: Mapping[str, Any], max_items: int) -> tuple[list[dict[str, Any]], str, Any]:
    """`(items, mode, description)`: the raw item dicts (defaults applied), the batch mode, and what is stored as
    the batch's manifest besides its hash."""
    defaults = body.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise InputError("defaults: must be an object of job fields", code="invalid_type", field="defaults")
    has_jobs, has_grid = "jobs" in body, "grid" in body
    if has_jobs == has_grid:
        raise InputError(
            "send either 'jobs' (a list of jobs) or 'grid' (axes of values, mode 'product' or 'zip'), not both or "
            "neither",
            code="missing",
            field="jobs",
        )
    if has_jobs:
        jobs = body["jobs"]
        if not isinstance(jobs, list) or not jobs:
            raise InputError("jobs: must be a non-empty list of job objects", code="invalid_type", field="jobs")
        if len(jobs) > max_items:
            raise InputError(
                f"jobs: {len(jobs)} items, over the limit of {max_items} per batch; split it into several batches",
                code="too_many_items",
                field="jobs",
            )
        items = []
        for index, job in enumerate(jobs):
            if not isinstance(job, Mapping):
                raise InputError(f"jobs.{index}: must be a job object", code="invalid_type", field=f"jobs.{index}")
            items.append({**defaults, **job})
        return items, "list", {"items": len(items)}
    axes, mode = check_grid(body["grid"], max_items)
    items = [{**defaults, **item} for item in expand_grid(axes, mode)]
    return items, mode, {"items": len(items), "axes": list(axes)}


def _parse_items(
    items: Sequence[Mapping[str, Any]], limits: SpecLimits, prefix: str, defaults: Mapping[str, Any]
) -> list[Img2ImgJob]:
    """Validate every item; one InputError naming each bad field as `{prefix}.{index}.{field}` (the first few),
    or as `defaults.{field}` (once) when the item took the bad value from the batch's defaults."""
    parsed: list[Img2ImgJob] = []
    problems: list[FieldProblem] = []
    bad_items = 0
    for index, item in enumerate(items):
        try:
            parsed.append(parse_job(item, limits))
        except InputError as exc:
            bad_items += 1
            for problem in exc.problems or (FieldProblem(exc.field or "body", exc.message, exc.code),):
                where = _problem_place(problem.field, item, defaults, f"{prefix}.{index}")
                if len(problems) < MAX_REPORTED_PROBLEMS and where not in {known.field for known in problems}:
                    problems.append(FieldProblem(where, problem.message, problem.code))
    if problems:
        # As for one job: an inline image over the limit makes it a 413, and that problem is the headline.
        kind, ordered = headline_first(problems)
        first = ordered[0]
        message = f"{first.field}: {first.message}"
        if bad_items > 1:
            message += f" ({bad_items} of {len(items)} items are invalid)"
        raise kind(message, code=first.code, field=first.field, problems=ordered)
    return parsed


def _problem_place(field: str, item: Mapping[str, Any], defaults: Mapping[str, Any], item_place: str) -> str:
    """Where a bad field was written: `defaults.<field>` when the item's value is the defaults' own (a typo in
    `defaults` is one mistake, not one per item), else `<item_place>.<field>`."""
    top = field.split(".", 1)[0]
    if top in defaults and item.get(top) is defaults[top]:
        return f"defaults.{field}"
    return f"{item_place}.{field}"


def _batch_hash(items: Sequence[NewJob]) -> str:
    """The batch's identity for create-or-get: its children's task ids and request hashes, in order."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.task_id} {item.request_hash}\n".encode())
    return digest.hexdigest()


def submit_batch(services: Services, tenant: str, body: Any) -> BatchSubmission:
    """Admit a batch for `tenant` (see the module docstring), or return the existing batch with this `batch_id`.

    Raises InputError (422, naming `jobs.<i>.<field>` or `items.<i>.<field>` for grids), PayloadTooLarge (413),
    Conflict (409: the batch id names a different batch, or a child task id is taken by a different request),
    RateLimited (429: the children would pass the tenant's queued-jobs limit), and 503s when a dependency is down.
    """
    if not isinstance(body, Mapping):
        raise InputError("the body must be a JSON object with 'jobs' or 'grid'", code="invalid_type", field="body")
    unknown = sorted(set(body) - _BODY_KEYS)
    if unknown:
        raise InputError(
            f"{unknown[0]}: unknown key; a batch has 'batch_id', 'defaults', and 'jobs' or 'grid'",
            code="unknown_field",
            field=unknown[0],
        )
    settings = services.settings
    batch_id = _batch_id_of(body) or uuid.uuid4()
    raw_items, mode, description = _items_of(body, settings.max_batch_items)
    prefix = "jobs" if mode == "list" else "items"
    jobs = _parse_items(raw_items, SpecLimits.from_settings(settings), prefix, body.get("defaults") or {})
    # One normaliser for the whole batch: 10,000 children of one picture look its asset up once.
    normalise = ImageNormaliser(services, tenant)
    new_jobs = [
        admit(
            normalise,
            job,
            task_id=job.force_task_id or child_task_id(batch_id, index),
            batch=True,
            max_attempts=settings.max_attempts,
            field_prefix=f"{prefix}.{index}.",
        )
        for index, job in enumerate(jobs)
    ]
    digest = _batch_hash(new_jobs)
    task_ids = tuple(item.task_id for item in new_jobs)
    existing = _existing_batch(services, tenant, batch_id)
    if existing is None:
        _check_queue_limit(services, tenant, len(new_jobs))
        manifest = {"hash": digest, **description}
        existing, result = services.db.batches.create_if_absent(
            tenant, new_jobs, mode=mode, manifest=manifest, batch_id=batch_id
        )
        if result is not None:
            _wake_dispatcher(services, batch_id)
            return BatchSubmission(existing, True, len(new_jobs), result.created, result.existing, task_ids)
    if (existing.manifest or {}).get("hash") != digest:
        raise Conflict(
            f"batch id {batch_id} is already used by a different batch; choose another batch id or send the same batch",
            code="batch_id_conflict",
            field="batch_id",
        )
    return BatchSubmission(existing, False, existing.requested, 0, existing.requested, task_ids)


def _existing_batch(services: Services, tenant: str, batch_id: uuid.UUID) -> BatchRow | None:
    try:
        return services.db.batches.get(tenant, batch_id)
    except NotFound:
        return None


def _check_queue_limit(services: Services, tenant: str, adding: int) -> None:
    limit = services.settings.max_queued_jobs_per_tenant
    queued = services.queue_limit.admit(tenant, adding, limit)  # None: admitted (scheduler/queue_limit.py)
    if queued is not None:
        more = " or more" if queued >= limit else ""  # counted up to the limit only
        raise RateLimited(
            f"this batch would bring your queued jobs to {queued + adding}{more}, over the limit of {limit}; wait "
            "for some to finish or send a smaller batch",
            retry_after_s=QUEUE_LIMIT_RETRY_AFTER_S,
            code="too_many_queued_jobs",
        )


def _wake_dispatcher(services: Services, batch_id: uuid.UUID) -> None:
    # The rows are committed; a dispatcher that misses this nudge publishes them at its next tick.
    if services.dispatcher is not None:
        try:
            services.dispatcher.wake()
        except Exception:
            log.exception("waking the dispatcher failed for batch %s", batch_id)


# --------------------------------------------------------------------------------------------------------------
# Status and cancel


def _elapsed_s(since: datetime | None, until: datetime) -> float | None:
    if since is None:
        return None
    return max((until - since).total_seconds(), 0.0)


def batch_progress(counts: Mapping[JobState, int], running_fractions: Sequence[float]) -> tuple[int, int, int, float]:
    """`(total, finished, remaining, progress 0..1)`: finished jobs count whole, running ones by their fraction."""
    total = sum(counts.values())
    finished = sum(count for state, count in counts.items() if state.is_terminal)
    remaining = total - finished
    done = finished + sum(min(max(fraction, 0.0), 1.0) for fraction in running_fractions)
    return total, finished, remaining, (done / total if total else 1.0)


def batch_eta_s(remaining: int, finished: int, first_started: datetime | None, now: datetime) -> float | None:
    """Seconds until the batch is done at the rate it has run so far (finished jobs per second since the first
    started); None before any job finished. Workers joining or leaving change the rate, so it is an estimate."""
    if remaining == 0:
        return 0.0
    elapsed = _elapsed_s(first_started, now)
    if not finished or not elapsed:
        return None
    return round(remaining * elapsed / finished, 1)


def batch_eta_range_s(eta_s: float | None, rates: QueueRates | None) -> list[float] | None:
    """`[low, high]` around a batch's `eta_s`: its throughput estimate scaled by the spread of the queue's recent
    run times (1st and 3rd quartile over the median, scheduler/wait_estimate.py). None without both."""
    if eta_s is None or rates is None or rates.run_s.mid <= 0:
        return None
    spread = rates.run_s
    return [round(eta_s * spread.low / spread.mid, 1), round(eta_s * spread.high / spread.mid, 1)]


def read_batch(
    services: Services,
    tenant: str,
    batch_id: uuid.UUID,
    *,
    state: JobState | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_ITEMS_PAGE,
) -> dict[str, Any]:
    """The batch's status (counts by state, progress, ETA) and one page of its items (full job snapshots, in the
    order of the manifest). Raises NotFound for an unknown batch and another tenant's alike."""
    batch = services.db.batches.get(tenant, batch_id)
    counts = services.db.batches.counts(batch.tenant, batch.id)
    running_rows: list[JobRow] = []
    if counts[JobState.RUNNING]:
        running_rows, _ = services.db.jobs.list_jobs(tenant, state=JobState.RUNNING, batch_id=batch.id, limit=1000)
    live = safe_live_many(services, running_rows)
    fractions = [live[str(row.id)].fraction for row in running_rows if str(row.id) in live]
    total, finished, remaining, progress = batch_progress(counts, fractions)
    first_started, last_finished = services.db.batches.timing(batch.tenant, batch.id)
    now = datetime.now(UTC)
    elapsed = _elapsed_s(first_started, last_finished if remaining == 0 and last_finished else now)
    rows, next_cursor = services.db.jobs.list_jobs(
        tenant, state=state, batch_id=batch.id, cursor=cursor, limit=limit, oldest_first=True
    )
    page_live = safe_live_many(services, rows)
    eta_s = batch_eta_s(remaining, finished, first_started, now)
    queue = next((row.queue for row in [*running_rows, *rows]), None)
    rates = services.estimator.rates(queue) if queue is not None and eta_s else None
    return {
        "batch_id": str(batch.id),
        "mode": batch.mode,
        "created_at": batch.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "canceled_at": (
            batch.canceled_at.astimezone(UTC).isoformat().replace("+00:00", "Z") if batch.canceled_at else None
        ),
        "requested": batch.requested,
        "total": total,
        "counts": {job_state.value: counts[job_state] for job_state in JobState},
        "finished": finished,
        "progress": round(progress, 4),
        "elapsed_s": round(elapsed, 1) if elapsed is not None else None,
        "jobs_per_s": round(finished / elapsed, 3) if elapsed else None,
        "eta_s": eta_s,
        "eta_range_s": [0.0, 0.0] if eta_s == 0.0 else batch_eta_range_s(eta_s, rates),
        "items": [read_snapshot(services, row, with_queue=False, live=page_live) for row in rows],
        "next_cursor": next_cursor,
    }


def cancel_batch(services: Services, tenant: str, batch_id: uuid.UUID) -> None:
    """Cancel what has not finished: queued children at once, running ones at their next step. Raises NotFound."""
    batch = services.db.batches.cancel(tenant, batch_id)
    try:
        services.live.notify(events_key(tenant))  # the queued children's events are written
    except Exception as exc:
        log.warning("waking the event feed of %s failed: %s", tenant, exc)
    cursor: str | None = None
    while True:
        running, cursor = services.db.jobs.list_jobs(
            tenant, state=JobState.RUNNING, batch_id=batch.id, cursor=cursor, limit=1000
        )
        for row in running:
            try:
                # The fast flag the worker checks at every step; the durable one is seen at lease renewal.
                services.live.request_cancel(row.id)
                services.live.notify(row.id)
            except Exception as exc:
                log.warning("live cancel flag for job %s not set: %s", row.task_id, exc)
        if cursor is None:
            return
