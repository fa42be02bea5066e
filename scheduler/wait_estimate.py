"""How long a job still takes, as a range: `eta_s` and `eta_range_s` of a snapshot (docs/api.md "ETA").

A job's *work* is its sampling steps × megapixels × batch size (`job_work`): the render time of the farm's models
grows with each (a 150-step 512² job is ~1,600 times the work of a 6-step 64² one). From the queue's recently
succeeded jobs the estimator learns seconds per unit of work, per sampler where the sampler has enough samples
(samplers differ in model evaluations per step) and for the whole queue otherwise, and keeps the quartiles:

    own      = work × rate                                  (low: 1st quartile of rates, eta: median, high: 3rd)
    queued   = own + jobs ahead × run time of a recent job / workers serving the queue
    running  = (1 - progress) × own, or the worker's own estimate for `eta_s` when it gave one

The jobs ahead are counted up to the snapshot's cap (QUEUE_POSITION_CAP): further back, the figures are lower
bounds. Cached per queue for `RUN_TIME_CACHE_S`, so a page of snapshots costs one query per queue at most.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.db import Database

RUN_TIME_SAMPLE = 50  # recent succeeded jobs per queue whose run times make the estimate
RUN_TIME_CACHE_S = 30.0  # seconds a queue's rates are reused before they are read again
MIN_SAMPLER_SAMPLES = 3  # recent jobs of one sampler needed before its own rate is used


def job_work(total_steps: int | None, request: Any) -> float | None:
    """Sampling steps × megapixels × batch size of a job (its `total_steps` already counts every `n_iter` batch);
    None when the request does not say."""
    if not isinstance(request, Mapping) or not total_steps:
        return None
    try:
        megapixels = int(request.get("width", 512)) * int(request.get("height", 512)) / 1e6
        batch = max(int(request.get("batch_size", 1)), 1)
    except (TypeError, ValueError):
        return None
    return total_steps * megapixels * batch


def sampler_of(request: Any) -> str | None:
    """The request's sampler name, lowercased (the rates of one sampler are learnt apart)."""
    if isinstance(request, Mapping) and "sampler_name" in request:
        return str(request["sampler_name"]).lower()
    return None


@dataclass(frozen=True)
class Spread:
    """A quantity's 1st quartile, median and 3rd quartile."""

    low: float
    mid: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if len(values) == 1:
            return cls(values[0], values[0], values[0])
        q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(q1, q2, q3)


@dataclass(frozen=True)
class QueueRates:
    """What a queue's recent jobs say: seconds per unit of work (whole queue and per sampler), and run times."""

    rate: Spread | None
    by_sampler: dict[str, Spread]
    run_s: Spread

    def rate_for(self, sampler: str | None) -> Spread | None:
        return self.by_sampler.get(sampler or "", self.rate)


@dataclass(frozen=True)
class Eta:
    eta_s: float
    low_s: float
    high_s: float

    def fields(self) -> dict[str, Any]:
        return {"eta_s": round(self.eta_s, 1), "eta_range_s": [round(self.low_s, 1), round(self.high_s, 1)]}


def learn(runs: Sequence[tuple[float, int | None, Any]]) -> QueueRates | None:
    """The rates of a queue from its recent runs (`Stats.recent_runs`); None without any."""
    if not runs:
        return None
    rates: list[float] = []
    per_sampler: dict[str, list[float]] = {}
    for seconds, steps, request in runs:
        work = job_work(steps, request)
        if work is None or work <= 0:
            continue
        rate = max(seconds, 0.0) / work
        rates.append(rate)
        per_sampler.setdefault(sampler_of(request) or "", []).append(rate)
    by_sampler = {name: Spread.of(values) for name, values in per_sampler.items() if len(values) >= MIN_SAMPLER_SAMPLES}
    return QueueRates(
        rate=Spread.of(rates) if rates else None,
        by_sampler=by_sampler,
        run_s=Spread.of([max(seconds, 0.0) for seconds, _steps, _request in runs]),
    )


def estimate(
    rates: QueueRates,
    work: float | None,
    sampler: str | None,
    *,
    jobs_ahead: int = 0,
    workers: int = 1,
    remaining: float = 1.0,
) -> Eta:
    """The range for a job of `work` with `jobs_ahead` before it in a queue `workers` consume, `remaining` of it
    still to render (1 for a queued job)."""
    rate = rates.rate_for(sampler)
    per_worker = jobs_ahead / max(workers, 1)
    ahead = Spread(per_worker * rates.run_s.low, per_worker * rates.run_s.mid, per_worker * rates.run_s.high)
    if rate is not None and work is not None:
        own = Spread(work * rate.low, work * rate.mid, work * rate.high)
    else:  # no size known: a recent job's run time stands in
        own = rates.run_s
    share = min(max(remaining, 0.0), 1.0)
    return Eta(
        eta_s=ahead.mid + share * own.mid,
        low_s=ahead.low + share * own.low,
        high_s=ahead.high + share * own.high,
    )


class RunTimeEstimator:
    """The rates of each queue's recent succeeded jobs (`learn`), cached per queue for `cache_s`."""

    def __init__(self, db: Database, *, sample: int = RUN_TIME_SAMPLE, cache_s: float = RUN_TIME_CACHE_S):
        self._db = db
        self._sample = sample
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, QueueRates | None]] = {}
        self._lock = threading.Lock()

    def rates(self, queue: str) -> QueueRates | None:
        """The queue's rates, or None when it has no succeeded job yet."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(queue)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        rates = learn(self._db.stats.recent_runs(queue, self._sample))
        with self._lock:
            self._cache[queue] = (now, rates)
        return rates

    def forget(self) -> None:
        """Drop the cached rates (tests, and after an operator changes workers)."""
        with self._lock:
            self._cache.clear()

    def queued(self, queue: str, total_steps: int | None, request: Any, jobs_ahead: int, workers: int) -> Eta | None:
        """A queued job's range; None before the queue has a succeeded job."""
        rates = self.rates(queue)
        if rates is None:
            return None
        return estimate(
            rates, job_work(total_steps, request), sampler_of(request), jobs_ahead=jobs_ahead, workers=workers
        )

    def running(self, queue: str, total_steps: int | None, request: Any, progress: float) -> Eta | None:
        """A running job's range for what is left of it; None before the queue has a succeeded job."""
        rates = self.rates(queue)
        if rates is None:
            return None
        return estimate(rates, job_work(total_steps, request), sampler_of(request), remaining=1.0 - progress)
