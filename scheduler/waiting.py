"""Why an unfinished job is not done yet: the `waiting` object of a snapshot (docs/api.md "Waiting reasons").

    {"reason": "behind_priority", "message": "3 jobs of higher priority run first", "since": null, ...details}

`waiting_reason` is a pure function of what a status read already has (the row, its queue standing, the worker
registry's cached answers, the database's time), so a reason costs no scan of the backlog: the standing is three
capped counts (`Stats.queue_standing`), the registry a cached read of the live workers' announcements.

One reason per job, the first that applies, in this order:

| state    | condition                                                    | reason               |
|----------|--------------------------------------------------------------|----------------------|
| running  | a cancel was requested                                       | `canceling`          |
| running  | its worker has no live announcement any more                 | `worker_silent`      |
| queued   | `retry_at` is ahead, after an outage                          | `outage_backoff`     |
| queued   | `retry_at` is ahead, after a failed attempt                   | `retry_backoff`      |
| queued   | no live worker consumes its queue                            | `no_worker`          |
| queued   | jobs of higher priority are ahead                            | `behind_priority`    |
| queued   | own tenant's jobs ahead, other tenants waiting (round-robin) | `tenant_fair_share`  |
| queued   | anything else (maybe 0 ahead: handed to the broker, waiting) | `queued`             |

A running job that is rendering has no reason (`waiting: null`), as has a finished one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.db import JobRow, QueueStanding
from shared.states import JobState

REASONS: tuple[str, ...] = (
    "canceling",
    "worker_silent",
    "outage_backoff",
    "retry_backoff",
    "no_worker",
    "behind_priority",
    "tenant_fair_share",
    "queued",
)


@dataclass(frozen=True)
class QueueView:
    """What a status read knows about the job's queue and worker (from the registry's cached answers)."""

    served: bool  # some live worker consumes the job's queue
    last_served_at: datetime | None  # the last heartbeat of a worker seen consuming it (None: none seen)
    worker_live: bool  # a running job's worker still announces itself
    cap: int  # the counts of the standing stop here


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _jobs(count: int, cap: int) -> str:
    """`3 jobs`, `1 job`, `1000+ jobs` (a count stopped at the cap)."""
    shown = f"{count}+" if count >= cap else str(count)
    return f"{shown} job" if count == 1 else f"{shown} jobs"


def _reason(code: str, message: str, since: datetime | None, **details: Any) -> dict[str, Any]:
    return {"reason": code, "message": message, "since": _iso(since), **details}


def waiting_reason(
    row: JobRow, standing: QueueStanding | None, view: QueueView, now: datetime
) -> dict[str, Any] | None:
    """The `waiting` object of `row`'s snapshot, or None when it is not waiting (finished, or rendering)."""
    if row.state is JobState.RUNNING:
        return _running_reason(row, view)
    if row.state is not JobState.QUEUED:
        return None
    if row.retry_at is not None and row.retry_at > now:
        if row.outage_since is not None:
            return _reason(
                "outage_backoff",
                f"storage, broker or database were unreachable; the job is tried again at {_iso(row.retry_at)}",
                row.outage_since,
                retry_at=_iso(row.retry_at),
                outage_requeues=row.outage_requeues,
            )
        return _reason(
            "retry_backoff",
            f"attempt {row.attempts_used} of {row.max_attempts} failed; the job is tried again at {_iso(row.retry_at)}",
            row.updated_at,
            retry_at=_iso(row.retry_at),
        )
    if not view.served:
        model = row.model or "the default model"
        since = view.last_served_at
        when = f"since {_iso(since)}" if since is not None else "since the scheduler started"
        return _reason(
            "no_worker",
            f"no live worker serves {model} (queue {row.queue}) {when}; the job waits until one does",
            since,
            queue=row.queue,
            model=row.model,
        )
    if standing is None:  # a list read: no counts were made
        return _reason("queued", "queued", row.created_at)
    ahead = standing.position
    if standing.higher_priority > 0:
        return _reason(
            "behind_priority",
            f"{_jobs(standing.higher_priority, view.cap)} of higher priority run first",
            row.created_at,
            jobs_ahead=ahead,
            higher_priority_ahead=standing.higher_priority,
        )
    if standing.own_tenant > 0 and standing.other_tenants_waiting:
        return _reason(
            "tenant_fair_share",
            f"{_jobs(standing.own_tenant, view.cap)} of this tenant run first, and other tenants' jobs take turns "
            "between them (the dispatcher serves tenants in turn)",
            row.created_at,
            jobs_ahead=ahead,
            own_tenant_ahead=standing.own_tenant,
        )
    if ahead == 0:
        message = "next in its queue; waiting for a free worker"
    else:
        message = f"queued behind {_jobs(ahead, view.cap)}"
    return _reason("queued", message, row.created_at, jobs_ahead=ahead)


def _running_reason(row: JobRow, view: QueueView) -> dict[str, Any] | None:
    if row.cancel_requested:
        return _reason("canceling", "cancel requested; the worker stops at its next step", row.updated_at)
    if not view.worker_live:
        return _reason(
            "worker_silent",
            f"its worker went silent; the job is queued again when its lease expires at {_iso(row.lease_until)}",
            None,
            lease_until=_iso(row.lease_until),
        )
    return None
