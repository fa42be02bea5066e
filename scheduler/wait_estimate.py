"""The wait estimate of a queued job: its queue position times the median run time of the queue's recent jobs."""

from __future__ import annotations

import statistics
import threading
import time

from shared.db import Database

RUN_TIME_SAMPLE = 50  # recent succeeded jobs per queue whose run time makes the wait estimate
RUN_TIME_CACHE_S = 30.0  # seconds a queue's median run time is reused before it is read again


class RunTimeEstimator:
    """The median run time (seconds, claim to finish) of a queue's recent succeeded jobs, cached per queue.

    Cached for `RUN_TIME_CACHE_S` so a page of snapshots costs one query per queue at most.
    """

    def __init__(self, db: Database, *, sample: int = RUN_TIME_SAMPLE, cache_s: float = RUN_TIME_CACHE_S):
        self._db = db
        self._sample = sample
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, float | None]] = {}
        self._lock = threading.Lock()

    def median_run_s(self, queue: str) -> float | None:
        """The median, or None when the queue has no succeeded job yet."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(queue)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        durations = self._db.stats.recent_run_times(queue, self._sample)
        median = statistics.median(durations) if durations else None
        with self._lock:
            self._cache[queue] = (now, median)
        return median

    def wait_s(self, queue: str, queue_position: int | None) -> float | None:
        """Seconds until a queued job at `queue_position` is done: (position + 1) × the median run time.

        One worker per queue is assumed (the farm does not know how many serve it), so this is an upper bound
        while more workers run. None when the position or the median is unknown.
        """
        if queue_position is None:
            return None
        median = self.median_run_s(queue)
        return None if median is None else round((queue_position + 1) * median, 1)
