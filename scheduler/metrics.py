"""The scheduler's Prometheus metrics, served at `GET /metrics` (api.md "Auth, limits, errors").

Everything is read from the database (the source of truth) at scrape time, plus the broker's list lengths when a
Redis broker is configured; nothing is counted in the request path, so every scheduler replica reports the same
farm-wide numbers and a restart loses nothing. Aggregate replicas with `max`, not `sum` (deploy/grafana does).

Gauges (the farm now):

    renderfarm_jobs{state}                               every job row by state
    renderfarm_queue_depth{queue}                        queued jobs per Celery queue (waiting + in the broker)
    renderfarm_queue_jobs{queue, part}                   the same split: part="undispatched" | "in_flight"
    renderfarm_queue_running{queue}                      running jobs per queue (KEDA keeps their workers)
    renderfarm_queue_oldest_age_seconds{queue}           age of the oldest queued job of the queue
    renderfarm_broker_queue_length{queue}                the Redis list's length (what KEDA scales on)
    renderfarm_metrics_database_up                       1 when the database answered this scrape

Counters and histograms, folded from finished jobs (succeeded, failed, canceled) as they finish:

    renderfarm_jobs_finished_total{model, state}
    renderfarm_job_wait_seconds{model}                   created -> started (of the attempt that finished)
    renderfarm_job_run_seconds{model, state}             started -> finished
    renderfarm_job_attempts_total{model}                 deliveries claimed by finished jobs
    renderfarm_job_retries_total{model}                  the same, minus each job's first attempt
    renderfarm_job_cancels_total{model, stage}           stage="queued" (never started) | "running"
    renderfarm_job_failures_total{model, code}           failed jobs by error code

The fold keeps a watermark on `finished_at` and re-reads an overlap window behind it (rows are committed with the
writer's clock, a little out of order), deduplicating by job id. Its first scrape reads every finished job once;
later scrapes read only what finished since. Counters therefore equal the database's totals (a restart re-reads them,
so they never go backwards), as long as finished rows are not deleted.

Access: with `RENDERFARM_METRICS_TOKEN` set, a scrape must send it (`Authorization: Bearer <token>`; 401 without,
counted by the failed-auth rate limit like a wrong API token); unset, only loopback clients are answered and any
other gets the 404 of an unknown route. API tokens never open /metrics: its numbers are the whole farm's.

Wiring (scheduler/app.py, in `create_app`, after the routers):
`owned.append(install_metrics(app, services, token=settings.metrics_token))`.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request

from shared.db import Database, FinishedJob, QueueCounts, utcnow
from shared.db.stats import Stats
from shared.errors import DatabaseUnavailable
from shared.states import JobState

log = logging.getLogger("scheduler.metrics")

__all__ = [
    "FOLD_OVERLAP_S",
    "RUN_BUCKETS_S",
    "WAIT_BUCKETS_S",
    "DatabaseCollector",
    "FinishedJobs",
    "build_registry",
    "install_metrics",
    "metrics_response",
    "redis_list_lengths",
]

# Bucket upper bounds in seconds; +Inf is added. Waits run from "a free GPU took it at once" to a night's batch.
WAIT_BUCKETS_S: tuple[float, ...] = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
# Renders: a tiny test model takes under a second, a large SDXL batch many minutes.
RUN_BUCKETS_S: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
FOLD_OVERLAP_S = 600.0  # seconds re-read behind the watermark: commits with a skewed or slow clock land late
DEFAULT_MODEL_LABEL = "default"  # jobs without a model use the farm's default model (RENDERFARM_MODEL)
UNKNOWN_CODE = "unknown"


def _model_label(model: str | None) -> str:
    return model or DEFAULT_MODEL_LABEL


@dataclass
class _Histogram:
    """Counts per bucket (not cumulative), their sum, for one label set."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == math.inf else _float_text(bound), float(running)))
        return out


def _float_text(value: float) -> str:
    return repr(float(value))


class FinishedJobs:
    """Counters and histograms of finished jobs, folded incrementally from the jobs table. Thread-safe."""

    def __init__(self, *, overlap_s: float = FOLD_OVERLAP_S) -> None:
        self._overlap = timedelta(seconds=overlap_s)
        self._lock = threading.Lock()
        self._watermark: datetime | None = None  # the newest finished_at folded so far
        self._recent: dict[uuid.UUID, datetime] = {}  # ids folded within the overlap window
        self.finished: dict[tuple[str, str], int] = {}
        self.attempts: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.cancels: dict[tuple[str, str], int] = {}
        self.failures: dict[tuple[str, str], int] = {}
        self.wait: dict[str, _Histogram] = {}
        self.run: dict[tuple[str, str], _Histogram] = {}

    def refresh(self, stats: Stats) -> int:
        """Fold every job that finished since the last refresh; returns how many were new."""
        with self._lock:
            since = None if self._watermark is None else self._watermark - self._overlap
            new = 0
            for row in stats.finished_since(since):
                if row.id in self._recent:
                    continue
                self._fold(row)
                new += 1
                self._recent[row.id] = row.finished_at
                if self._watermark is None or row.finished_at > self._watermark:
                    self._watermark = row.finished_at
            if self._watermark is not None:
                horizon = self._watermark - self._overlap
                self._recent = {key: when for key, when in self._recent.items() if when >= horizon}
            return new

    def _fold(self, row: FinishedJob) -> None:
        model = _model_label(row.model)
        state = row.state.value
        self.finished[(model, state)] = self.finished.get((model, state), 0) + 1
        self.attempts[model] = self.attempts.get(model, 0) + row.attempt
        self.retries[model] = self.retries.get(model, 0) + max(row.attempt - 1, 0)
        if row.state is JobState.CANCELED:
            stage = "queued" if row.started_at is None else "running"
            self.cancels[(model, stage)] = self.cancels.get((model, stage), 0) + 1
        if row.state is JobState.FAILED:
            code = row.error_code or UNKNOWN_CODE
            self.failures[(model, code)] = self.failures.get((model, code), 0) + 1
        if row.started_at is not None:
            wait = max((row.started_at - row.created_at).total_seconds(), 0.0)
            self.wait.setdefault(model, _Histogram(WAIT_BUCKETS_S)).observe(wait)
            ran = max((row.finished_at - row.started_at).total_seconds(), 0.0)
            self.run.setdefault((model, state), _Histogram(RUN_BUCKETS_S)).observe(ran)

    def metrics(self) -> Iterator[Metric]:
        with self._lock:
            yield _counters(
                "renderfarm_jobs_finished", "Jobs that reached a terminal state", ["model", "state"], self.finished
            )
            yield _counters("renderfarm_job_attempts", "Deliveries (claims) of finished jobs", ["model"], self.attempts)
            yield _counters(
                "renderfarm_job_retries", "Deliveries of finished jobs beyond their first", ["model"], self.retries
            )
            yield _counters(
                "renderfarm_job_cancels", "Canceled jobs, by whether they had started", ["model", "stage"], self.cancels
            )
            yield _counters("renderfarm_job_failures", "Failed jobs by error code", ["model", "code"], self.failures)
            yield _histograms(
                "renderfarm_job_wait_seconds",
                "Seconds from submission to the start of the finishing attempt",
                ["model"],
                self.wait,
            )
            yield _histograms(
                "renderfarm_job_run_seconds",
                "Seconds from start to finish of the finishing attempt",
                ["model", "state"],
                self.run,
            )


def _label_values(key: str | tuple[str, ...]) -> list[str]:
    return list(key) if isinstance(key, tuple) else [key]


def _counters(name: str, documentation: str, labels: list[str], values: Mapping[Any, int]) -> CounterMetricFamily:
    """One counter family: a sample per label set (a key of `values`: a label value, or a tuple of them)."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(_label_values(key), value)
    return family


def _histograms(
    name: str, documentation: str, labels: list[str], values: Mapping[Any, _Histogram]
) -> HistogramMetricFamily:
    """One histogram family: a histogram per label set (keyed like `_counters`)."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, histogram in sorted(values.items()):
        family.add_metric(_label_values(key), histogram.cumulative(), histogram.total)
    return family


class DatabaseCollector(Collector):
    """Collects the farm's metrics from the database (and the broker) at every scrape.

    `broker_lengths(queues)` returns the broker's message count per queue name (for example `redis_list_lengths`);
    None leaves `renderfarm_broker_queue_length` out (embedded mode). `known_queues`, every queue a live worker
    announces (a model's queues, from the moment a worker can serve it) and every queue seen with jobs are reported
    from then on, even at 0, so dashboards and alerts see a queue that drained rather than one that vanished.
    """

    def __init__(
        self,
        db: Database,
        *,
        broker_lengths: Callable[[Sequence[str]], Mapping[str, int]] | None = None,
        known_queues: Iterable[str] = (),
        clock: Callable[[], datetime] = utcnow,
        overlap_s: float = FOLD_OVERLAP_S,
    ) -> None:
        self._db = db
        self._broker_lengths = broker_lengths
        self._queues: set[str] = set(known_queues)
        self._clock = clock
        self.finished = FinishedJobs(overlap_s=overlap_s)

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only (no database access at registration)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("renderfarm_metrics_database_up", "1 when the database answered this scrape")
        try:
            by_state = self._db.stats.counts_by_state()
            per_queue = self._db.stats.queue_counts()
            announced = [queue for worker in self._db.workers.live() for queue in worker.queues]
            self.finished.refresh(self._db.stats)
        except DatabaseUnavailable as exc:
            log.warning("metrics: %s", exc.message)
            up.add_metric([], 0)
            yield up
            yield from self._broker_metrics()
            return
        up.add_metric([], 1)
        yield up
        states = GaugeMetricFamily("renderfarm_jobs", "Jobs by state (every row of the jobs table)", labels=["state"])
        for state in JobState:
            states.add_metric([state.value], by_state.get(state, 0))
        yield states
        self._queues.update(per_queue)
        self._queues.update(announced)
        now = self._clock()
        depth = GaugeMetricFamily("renderfarm_queue_depth", "Queued jobs per Celery queue", labels=["queue"])
        parts = GaugeMetricFamily(
            "renderfarm_queue_jobs",
            "Queued jobs per Celery queue: undispatched (waiting in the table) or in_flight (published)",
            labels=["queue", "part"],
        )
        running = GaugeMetricFamily("renderfarm_queue_running", "Running jobs per Celery queue", labels=["queue"])
        oldest_age = GaugeMetricFamily(
            "renderfarm_queue_oldest_age_seconds", "Age of the oldest queued job per queue (0: none)", labels=["queue"]
        )
        for queue in sorted(self._queues):
            counts = per_queue.get(queue, QueueCounts())
            depth.add_metric([queue], counts.queued)
            parts.add_metric([queue, "undispatched"], counts.queued - counts.in_flight)
            parts.add_metric([queue, "in_flight"], counts.in_flight)
            running.add_metric([queue], counts.running)
            oldest = counts.oldest_queued
            oldest_age.add_metric([queue], 0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0))
        yield depth
        yield parts
        yield running
        yield oldest_age
        yield from self.finished.metrics()
        yield from self._broker_metrics()

    def _broker_metrics(self) -> Iterator[Metric]:
        if self._broker_lengths is None:
            return
        queues = sorted(self._queues)
        try:
            lengths = self._broker_lengths(queues)
        except Exception as exc:  # the broker is optional for a scrape: report what the database said
            log.warning("metrics: broker queue lengths unavailable: %s: %s", type(exc).__name__, exc)
            return
        family = GaugeMetricFamily(
            "renderfarm_broker_queue_length", "Messages in the broker's list per Celery queue", labels=["queue"]
        )
        for queue in queues:
            family.add_metric([queue], lengths.get(queue, 0))
        yield family


def redis_list_lengths(redis_url: str) -> tuple[Callable[[Sequence[str]], Mapping[str, int]], Callable[[], None]]:
    """`(lengths, close)`: LLEN of each queue's Redis list (Celery's Redis transport keeps a queue in a list named
    after it, which is also what the KEDA scaler reads), on one client made here; `close` releases it."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def lengths(queues: Sequence[str]) -> Mapping[str, int]:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        return {queue: int(value) for queue, value in zip(queues, pipe.execute(), strict=True)}

    return lengths, client.close


def build_registry(db: Database, **collector_options: Any) -> tuple[CollectorRegistry, DatabaseCollector]:
    """A fresh registry holding one `DatabaseCollector` (options as its keywords)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = DatabaseCollector(db, **collector_options)
    registry.register(collector)
    return registry, collector


def metrics_response(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


async def _check_scrape_access(request: Request, token_digest: bytes | None) -> None:
    """Raise unless this request may read /metrics (see the module docstring)."""
    from starlette.exceptions import HTTPException

    from scheduler.auth import credentials_of, is_loopback
    from scheduler.errors import Unauthorized

    host = request.client.host if request.client else None
    if token_digest is None:
        if not is_loopback(host):
            raise HTTPException(404)
        return
    limiter = getattr(request.app.state, "rate_limiter", None)
    address = host or "unix-socket"
    presented = credentials_of(request.headers.get("authorization"))
    digest = hashlib.sha256((presented or "").encode("utf-8")).digest()
    valid = presented is not None and hmac.compare_digest(digest, token_digest)
    if limiter is not None:
        await limiter.admit(address, None)  # scrapes are counted by address, like any request
    if not valid:
        if limiter is not None:
            await limiter.note_failed_auth(address)
        raise Unauthorized("GET /metrics needs the metrics token: Authorization: Bearer <token>", code="invalid_token")


def install_metrics(app: Any, services: Any, *, token: str | None = None) -> Callable[[], None]:
    """Add `GET /metrics` to the FastAPI `app`, reading `services.db` (and the Redis broker in cluster mode).
    `token`: the bearer token a scrape must send; None serves loopback clients only.

    Returns the function that releases what it opened (a Redis client); call it at shutdown.
    """
    from fastapi import Response
    from fastapi.concurrency import run_in_threadpool

    from shared.queueing import queue_name

    settings = services.settings
    broker_lengths = None
    close: Callable[[], None] = lambda: None  # noqa: E731
    if settings.redis_url is not None:
        broker_lengths, close = redis_list_lengths(settings.redis_url)
    default_queues = [queue_name(None, batch=False), queue_name(None, batch=True)]
    registry, _ = build_registry(services.db, broker_lengths=broker_lengths, known_queues=default_queues)

    token_digest = hashlib.sha256(token.encode("utf-8")).digest() if token is not None else None

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        await _check_scrape_access(request, token_digest)
        body, content_type = await run_in_threadpool(metrics_response, registry)
        return Response(content=body, media_type=content_type)

    return close
