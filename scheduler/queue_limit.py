"""The per-tenant limit on queued jobs (`RENDERFARM_MAX_QUEUED_JOBS_PER_TENANT`), checked without counting the
tenant's whole backlog on every submission.

Counting a tenant's queued jobs costs time in proportion to the count: at 25,000 queued jobs it was 39 ms of
PostgreSQL time per `PUT` (bench/RESULTS.md), most of the submission's cost. The limit only has to be exact near
the limit, so this keeps, per tenant, the last exact count (capped at the limit) and the jobs this process has
admitted since, and counts again only when the estimate is old or within a margin of the limit:

- far from the limit (estimate + adding ≤ limit - margin, estimate younger than `max_age_s`): admitted at once;
- otherwise: an exact count, capped at the limit (cost bounded by the limit, not the backlog), decides.

So a refusal is always decided by an exact count; an admission far from the limit may rest on an estimate up to
`max_age_s` old. Jobs leaving the queue only make the estimate high (a recount, never a wrong refusal); jobs
admitted by other scheduler replicas in that time make it low, which the margin (a tenth of the limit) covers for
any replica admitting fewer than `margin / max_age_s` jobs per second. Like the count before it, the limit is
soft: two submissions racing at the limit may both pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_AGE_S = 1.0  # seconds an exact count is used as the base of the estimate
MARGIN_FRACTION = 0.1  # the share of the limit within which every admission is decided by an exact count


@dataclass
class _Estimate:
    counted: int  # the last exact count (capped at the limit)
    counted_at: float  # time.monotonic() of that count
    admitted: int  # jobs admitted by this process since


class QueueLimit:
    """Admission against a per-tenant limit on queued jobs. Thread-safe; one per scheduler process.

    `count(tenant, cap)` returns the tenant's queued jobs, counted up to `cap` (`Database.stats.queued_count`).
    """

    def __init__(
        self,
        count: Callable[[str, int], int],
        *,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._max_age_s = max_age_s
        self._clock = clock
        self._estimates: dict[str, _Estimate] = {}
        self._lock = threading.Lock()

    def admit(self, tenant: str, adding: int, limit: int) -> int | None:
        """Record `adding` new jobs of `tenant` if they fit under `limit`; returns None when admitted, else the
        tenant's queued jobs (exact, capped at the limit) that made the refusal."""
        margin = int(limit * MARGIN_FRACTION)
        now = self._clock()
        with self._lock:
            estimate = self._estimates.get(tenant)
            if (
                estimate is not None
                and now - estimate.counted_at < self._max_age_s
                and estimate.counted + estimate.admitted + adding <= limit - margin
            ):
                estimate.admitted += adding
                return None
        # Counted outside the lock: a slow count must not hold up other tenants' admissions.
        queued = self._count(tenant, limit)
        with self._lock:
            if queued + adding > limit:
                self._estimates[tenant] = _Estimate(queued, now, 0)
                return queued
            self._estimates[tenant] = _Estimate(queued, now, adding)
            return None
