"""Admitting one job (`PUT /v1/jobs/{task_id}`, `POST /v1/jobs`, A1111's img2img): choose its task id, then
create-or-get its row. Normalising, hashing and the row's values are the one admission path (scheduler.admission)
that a batch's children take too.

Every function here blocks (database, storage): call them from a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.admission import QUEUE_LIMIT_RETRY_AFTER_S, ImageNormaliser, admit
from scheduler.deps import Services
from scheduler.errors import TaskIdConflict
from shared.db import JobRow
from shared.errors import Conflict, InputError, NotFound, RateLimited
from shared.job.ids import new_task_id
from shared.job.spec import SpecLimits, parse_job

log = logging.getLogger("scheduler.submission")


@dataclass(frozen=True)
class Submission:
    """The job as it is after create-or-get; `created` is False when the task id already had this request."""

    row: JobRow
    created: bool


# --------------------------------------------------------------------------------------------------------------
# Create-or-get


def _within_queue_limit(services: Services, tenant: str) -> bool:
    """Whether one more queued job fits under the tenant's limit (a soft limit: refusals are decided by an exact
    count, admissions far from the limit by an estimate; scheduler/queue_limit.py)."""
    return services.queue_limit.admit(tenant, 1, services.settings.max_queued_jobs_per_tenant) is None


def _existing(services: Services, tenant: str, task_id: str) -> JobRow | None:
    try:
        return services.db.jobs.get(tenant, task_id)
    except NotFound:
        return None


def submit_job(
    services: Services,
    tenant: str,
    body: Any,
    *,
    task_id: str | None = None,
    warnings: Sequence[Mapping[str, Any]] = (),
) -> Submission:
    """Admit one job for `tenant`: create it, or return the existing job with the same task id and request.

    `task_id` is the id of `PUT /v1/jobs/{task_id}`; without it the body's `force_task_id` or a new server id
    is used. `warnings` are the door's own admission warnings (the A1111 routes'), stored with a new job.
    Raises InputError (422 naming the field), PayloadTooLarge (413, an inline image over the limit),
    TaskIdConflict (409, the id is taken by a different request), RateLimited (429, too many queued jobs),
    and DatabaseUnavailable / StorageUnavailable (503).
    """
    if not isinstance(body, Mapping):
        raise InputError("the body must be a JSON object with the job's fields", code="invalid_type", field="body")
    settings = services.settings
    job = parse_job(body, SpecLimits.from_settings(settings))
    if task_id is not None and job.force_task_id not in (None, task_id):
        raise InputError(
            f"force_task_id {job.force_task_id!r} differs from the task id {task_id!r} of the URL; send one of them",
            code="task_id_mismatch",
            field="force_task_id",
        )
    final_id = task_id or job.force_task_id or new_task_id()
    # The queue limit first (usually answered without a query, scheduler/queue_limit.py). A resubmission of an
    # existing id must answer even when the tenant is at its limit (the SDK resubmits after a timeout to learn what
    # happened), so only a refusal looks for the existing job; everything else goes straight to create-or-get.
    existing = None
    if not _within_queue_limit(services, tenant):
        existing = _existing(services, tenant, final_id) if (task_id or job.force_task_id) else None
        if existing is None:
            raise RateLimited(
                f"you have {services.settings.max_queued_jobs_per_tenant} or more queued jobs, the most one tenant "
                "may have; wait for some to finish",
                retry_after_s=QUEUE_LIMIT_RETRY_AFTER_S,
                code="too_many_queued_jobs",
            )
    item = admit(
        ImageNormaliser(services, tenant),
        job,
        task_id=final_id,
        batch=False,
        max_attempts=settings.max_attempts,
        warnings=warnings,
    )
    if existing is not None:
        if existing.request_hash != item.request_hash:
            raise TaskIdConflict(final_id, existing.request_hash, item.request_hash)
        return Submission(existing, created=False)
    try:
        row, created = services.db.jobs.create_or_get(tenant, item)
    except Conflict as exc:
        # The id is taken by a different request; name both hashes.
        current = _existing(services, tenant, final_id)
        raise TaskIdConflict(final_id, current.request_hash if current else "unknown", item.request_hash) from exc
    if created:
        _wake_dispatcher(services, row)
    return Submission(row, created)


def _wake_dispatcher(services: Services, row: JobRow) -> None:
    """Nudge the dispatcher to publish the new job now. A failure is logged, not raised: the row is committed and
    the dispatcher's next tick (or the reconciler) publishes whatever it missed. (Nobody can be watching a job
    created just now, so there is no live notification to send.)"""
    if services.dispatcher is not None:
        try:
            services.dispatcher.wake()
        except Exception:
            log.exception("waking the dispatcher failed for job %s", row.task_id)
