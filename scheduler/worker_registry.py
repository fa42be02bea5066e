"""What the live workers serve, as the scheduler sees it: the announcements of `shared.db.workers`, cached briefly.

    registry = WorkerRegistry(db)
    registry.serves_queue("rf.tiny-inpaint.interactive")   # does some live worker consume it?
    registry.loadable_models()                              # every model some live worker can load
    registry.workers()                                      # the announcements themselves (GET /v1/workers)
    registry.refresh()                                      # read again now (the A1111 refresh routes call it)

Reads are cached for `CACHE_S` seconds, so a burst of submissions costs one query; a worker that just started is
seen within that time plus its first heartbeat. A database that cannot be reached leaves the last answer in place
(logged) and, before any answer, counts as "nobody known": the scheduler never refuses a job for it; at worst the
job carries a `no_worker_serves_model` warning it did not need.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final

from shared.db import Database, WorkerRow
from shared.errors import DatabaseUnavailable
from shared.job.spec import Img2ImgJob
from shared.job.warnings import JobWarning, warning

__all__ = ["CACHE_S", "WorkerRegistry", "unserved_model_warning"]

logger = logging.getLogger(__name__)

CACHE_S: Final = 2.0  # seconds an answer is reused before the announcements are read again
MISS_REFRESH_S: Final = 0.25  # a worker missing from an answer at least this old is looked for again at once


class WorkerRegistry:
    """The live workers' announcements, cached for `cache_s` seconds of `monotonic` time. Thread-safe."""

    def __init__(
        self, db: Database, *, cache_s: float = CACHE_S, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._db = db
        self._cache_s = cache_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._rows: tuple[WorkerRow, ...] = ()
        self._queues: frozenset[str] = frozenset()
        self._read_at: float | None = None
        # Per queue, the last heartbeat of a worker seen consuming it (by this process): since when nobody serves it.
        self._last_served: dict[str, datetime] = {}

    def refresh(self) -> tuple[WorkerRow, ...]:
        """Read the live announcements now. Keeps the last answer (and logs) when the database is unreachable."""
        try:
            rows = tuple(self._db.workers.live())
        except DatabaseUnavailable as exc:
            logger.warning("worker registry: announcements unreadable (%s); keeping the last answer", exc)
            with self._lock:
                return self._rows
        queues = frozenset(queue for row in rows for queue in row.queues)
        with self._lock:
            self._rows, self._queues, self._read_at = rows, queues, self._monotonic()
            for row in rows:
                for queue in row.queues:
                    last = self._last_served.get(queue)
                    if last is None or row.seen_at > last:
                        self._last_served[queue] = row.seen_at
        return rows

    def workers(self) -> tuple[WorkerRow, ...]:
        """The live announcements, read again once the cached answer is older than `cache_s`."""
        with self._lock:
            fresh = self._read_at is not None and self._monotonic() - self._read_at < self._cache_s
            if fresh:
                return self._rows
        return self.refresh()

    def served_queues(self) -> frozenset[str]:
        """Every queue some live worker consumes."""
        self.workers()
        with self._lock:
            return self._queues

    def serves_queue(self, queue: str) -> bool:
        return queue in self.served_queues()

    def workers_serving(self, queue: str) -> int:
        """How many live workers consume `queue` (the wait estimate divides the jobs ahead among them)."""
        return sum(1 for row in self.workers() if queue in row.queues)

    def is_live(self, hostname: str) -> bool:
        """Whether `hostname` has a live announcement (a running job's worker that has none went silent).

        A miss reads the announcements again once the cached answer is `MISS_REFRESH_S` old (one row per worker: a
        small read): a worker that started and claimed a job within the cache's lifetime must not be called silent,
        and a page of jobs of a dead worker must not read them once per job."""
        if any(row.hostname == hostname for row in self.workers()):
            return True
        with self._lock:
            recent = self._read_at is not None and self._monotonic() - self._read_at < MISS_REFRESH_S
        if recent:
            return False
        return any(row.hostname == hostname for row in self.refresh())

    def last_served_at(self, queue: str) -> datetime | None:
        """The last heartbeat of a worker this process saw consuming `queue`, or None when it saw none (since it
        started): the `since` of a `no_worker` waiting reason."""
        with self._lock:
            return self._last_served.get(queue)

    def loadable_models(self) -> frozenset[str]:
        """Every model name some live worker says it can load."""
        return frozenset(model for row in self.workers() for model in row.models)


def unserved_model_warning(
    registry: WorkerRegistry, job: Img2ImgJob, queue: str, default_model: str
) -> JobWarning | None:
    """The `no_worker_serves_model` warning when no live worker consumes `queue` (the job's), else None.

    The job is still accepted: workers may be starting, scaling up or between heartbeats, and the job runs as soon
    as one consumes its queue. The warning names the model and the field that chose it."""
    if registry.serves_queue(queue):
        return None
    if job.model is not None:
        field, model = "model", job.model
    elif job.resolved_model is not None:
        field, model = "override_settings.sd_model_checkpoint", job.resolved_model
    else:
        field, model = "model", default_model
    return warning(
        "no_worker_serves_model",
        field,
        f"no live worker serves model {model!r} (queue {queue}); the job waits, queued, until one does",
    )
