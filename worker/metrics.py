"""A worker's Prometheus metrics and its health endpoint, served over HTTP on `RENDERFARM_METRICS_PORT`.

    renderfarm_worker_renders_total{model, outcome}       deliveries run, by how they ended (RunOutcome.state)
    renderfarm_worker_render_seconds{model, outcome}      claim to commit of one delivery
    renderfarm_worker_step_seconds{model}                 one sampling step (time between step callbacks)
    renderfarm_worker_oom_total{model}                    out-of-GPU-memory errors (each retry counts)
    renderfarm_worker_model_loads_total{model, result}    model loads (cache misses), result="ok" | "error"
    renderfarm_worker_model_load_seconds{model}           how long each successful load took
    renderfarm_worker_gpu_memory_bytes{kind}              allocated | reserved | peak_allocated | total (torch.cuda)
    renderfarm_worker_busy                                1 while a job runs
    renderfarm_worker_last_activity_timestamp_seconds     Unix time of the last job start, step or end
    renderfarm_worker_info{worker, device}                constant 1

`GET /metrics` serves them; `GET /healthz` answers 200, or 503 when the worker is stuck (busy with no step for longer
than `stuck_after_s`) or its `unhealthy` check says so (for example `WorkerStats.unhealthy` after repeated OOMs). A
Kubernetes liveness probe on it restarts a wedged worker; its job's lease then expires and the reconciler re-queues it.

Nothing here imports torch at module level; GPU memory is read only when torch is already imported and CUDA is up.

Wiring (worker/job_runner.py, worker/step_hook.py and worker/tasks.py), with the process-wide `WORKER_METRICS`:

    WORKER_METRICS.job_started()                       # run_job, after a successful claim
    WORKER_METRICS.step(model)                         # StepHook.__call__, first line
    WORKER_METRICS.record_outcome(outcome, model)      # run_job, before returning the outcome
    WORKER_METRICS.oom(model)                          # where WorkerStats.record_oom() is called
    loader = WORKER_METRICS.instrument_loader(loader)  # build_worker_deps, around the model loader
    start_metrics_server(WORKER_METRICS, settings.metrics_port, unhealthy=lambda: deps.stats.unhealthy)
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("worker.metrics")

__all__ = [
    "DEFAULT_MODEL_LABEL",
    "WORKER_METRICS",
    "MetricsServer",
    "WorkerMetrics",
    "metrics_port_for",
    "start_metrics_server",
]

STEP_BUCKETS_S: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
RENDER_BUCKETS_S: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
LOAD_BUCKETS_S: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
STEP_GAP_MAX_S = 60.0  # a gap longer than this between callbacks is a pause (model load, upload), not a step
DEFAULT_MODEL_LABEL = "default"

T = TypeVar("T")


class _Outcome(Protocol):
    """What `record_outcome` reads of `worker.run_outcome.RunOutcome`."""

    @property
    def state(self) -> str: ...

    @property
    def timings_ms(self) -> Any: ...


def _model_label(model: str | None) -> str:
    return model or DEFAULT_MODEL_LABEL


def metrics_port_for(base_port: int, gpu_index: int | None) -> int:
    """The port of GPU `gpu_index`'s worker when one host runs several (`renderfarm worker --gpus all`): base + index.
    0 (off) stays 0."""
    if base_port == 0:
        return 0
    return base_port + (gpu_index or 0)


class WorkerMetrics:
    """The worker's metrics on their own registry (one per process; tests make their own)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        process_metrics: bool = False,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._busy_since: float | None = None
        self._last_activity = clock()
        self._last_step: float | None = None
        r = self.registry
        self.renders = Counter(
            "renderfarm_worker_renders", "Deliveries run by this worker, by outcome", ["model", "outcome"], registry=r
        )
        self.render_seconds = Histogram(
            "renderfarm_worker_render_seconds",
            "Seconds from claim to commit of one delivery",
            ["model", "outcome"],
            buckets=RENDER_BUCKETS_S,
            registry=r,
        )
        self.step_seconds = Histogram(
            "renderfarm_worker_step_seconds", "Seconds per sampling step", ["model"], buckets=STEP_BUCKETS_S, registry=r
        )
        self.ooms = Counter("renderfarm_worker_oom", "Out-of-GPU-memory errors", ["model"], registry=r)
        self.model_loads = Counter(
            "renderfarm_worker_model_loads", "Model loads (cache misses)", ["model", "result"], registry=r
        )
        self.model_load_seconds = Histogram(
            "renderfarm_worker_model_load_seconds",
            "Seconds per successful model load",
            ["model"],
            buckets=LOAD_BUCKETS_S,
            registry=r,
        )
        self.gpu_memory = Gauge(
            "renderfarm_worker_gpu_memory_bytes", "GPU memory as torch.cuda reports it", ["kind"], registry=r
        )
        self.busy = Gauge("renderfarm_worker_busy", "1 while a job runs", registry=r)
        self.last_activity = Gauge(
            "renderfarm_worker_last_activity_timestamp_seconds",
            "Unix time of the last job start, step or end",
            registry=r,
        )
        self.info = Info("renderfarm_worker", "This worker process", registry=r)
        self.last_activity.set(wall_clock())
        if process_metrics:
            ProcessCollector(registry=r)

    # -- events ---------------------------------------------------------------------------------------------------

    def describe_worker(self, worker: str, device: str) -> None:
        self.info.info({"worker": worker, "device": device})

    def _touch(self) -> None:
        self._last_activity = self._clock()
        self.last_activity.set(self._wall_clock())

    def job_started(self) -> None:
        """A claimed job begins (busy until `record_outcome`)."""
        with self._lock:
            self._busy_since = self._clock()
            self._last_step = None
            self.busy.set(1)
            self._touch()

    def step(self, model: str | None) -> None:
        """Call at every sampling step: observes the time since the previous step of this job."""
        now = self._clock()
        with self._lock:
            previous = self._last_step
            self._last_step = now
            self._touch()
        if previous is not None and 0 <= now - previous <= STEP_GAP_MAX_S:
            self.step_seconds.labels(_model_label(model)).observe(now - previous)

    def record_outcome(self, outcome: _Outcome, model: str | None) -> None:
        """A delivery ended (`worker.run_outcome.RunOutcome`): count it, time it, and refresh GPU memory."""
        label = _model_label(model)
        self.renders.labels(label, outcome.state).inc()
        timings = dict(outcome.timings_ms or {})
        total_ms = sum(float(value) for value in timings.values())
        if outcome.state != "skipped":
            self.render_seconds.labels(label, outcome.state).observe(total_ms / 1000.0)
        with self._lock:
            self._busy_since = None
            self._last_step = None
            self.busy.set(0)
            self._touch()
        self.update_gpu_memory()

    def oom(self, model: str | None) -> None:
        self.ooms.labels(_model_label(model)).inc()

    def model_loaded(self, model: str | None, seconds: float, *, ok: bool = True) -> None:
        label = _model_label(model)
        self.model_loads.labels(label, "ok" if ok else "error").inc()
        if ok:
            self.model_load_seconds.labels(label).observe(seconds)
        self._touch()

    def instrument_loader(self, loader: Callable[[str], T]) -> Callable[[str], T]:
        """Wrap a model loader (`name -> model`) so that each call is counted and timed."""

        @functools.wraps(loader)
        def load(name: str) -> T:
            started = self._clock()
            try:
                model = loader(name)
            except BaseException:
                self.model_loaded(name, self._clock() - started, ok=False)
                raise
            self.model_loaded(name, self._clock() - started)
            return model

        return load

    def update_gpu_memory(self) -> None:
        """Read torch.cuda's memory counters of the current device, if torch is loaded and CUDA is initialised."""
        torch: Any = sys.modules.get("torch")
        if torch is None:
            return
        try:
            if not torch.cuda.is_available() or not torch.cuda.is_initialized():
                return
            device = torch.cuda.current_device()
            self.gpu_memory.labels("allocated").set(torch.cuda.memory_allocated(device))
            self.gpu_memory.labels("reserved").set(torch.cuda.memory_reserved(device))
            self.gpu_memory.labels("peak_allocated").set(torch.cuda.max_memory_allocated(device))
            self.gpu_memory.labels("total").set(torch.cuda.get_device_properties(device).total_memory)
        except Exception as exc:  # metrics must never break a render
            log.debug("cannot read GPU memory: %s", exc)

    # -- health ---------------------------------------------------------------------------------------------------

    def health(self, stuck_after_s: float | None, unhealthy: Callable[[], bool] | None = None) -> tuple[bool, str]:
        """(healthy, reason). Stuck: a job has run with no step, start or load for longer than `stuck_after_s`."""
        if unhealthy is not None:
            try:
                if unhealthy():
                    return False, "the worker reported itself unhealthy (repeated out-of-memory errors)"
            except Exception as exc:
                return False, f"the health check failed: {type(exc).__name__}: {exc}"
        with self._lock:
            busy = self._busy_since is not None
            idle_for = self._clock() - self._last_activity
        if busy and stuck_after_s is not None and idle_for > stuck_after_s:
            return False, f"a job has made no progress for {idle_for:.0f} s (limit {stuck_after_s:.0f} s)"
        return True, "ok"

    def exposition(self) -> bytes:
        self.update_gpu_memory()
        return generate_latest(self.registry)


class MetricsServer:
    """A running metrics/health HTTP server (a daemon thread). `port` is the bound port; `close()` stops it."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    metrics: WorkerMetrics,
    port: int,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - Prometheus and the kubelet scrape the pod's address
    stuck_after_s: float | None = None,
    unhealthy: Callable[[], bool] | None = None,
) -> MetricsServer | None:
    """Serve `/metrics` and `/healthz` on `host:port` in a daemon thread; None when `port` is 0 (off).

    `stuck_after_s`: see `WorkerMetrics.health` (give it `job_deadline_max_s`, the longest a render may hold its
    lease). Raises OSError when the port is taken.
    """
    if port == 0:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                healthy, reason = metrics.health(stuck_after_s, unhealthy)
                body = json.dumps({"status": "ok" if healthy else "unhealthy", "reason": reason}).encode()
                self._send(200 if healthy else 503, body, "application/json")
            else:
                self._send(404, b'{"status": "not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True)
    thread.start()
    log.info("worker metrics on http://%s:%d/metrics", host, server.server_address[1])
    return MetricsServer(server, thread)


# The process-wide instance the worker's code records into (one worker process per GPU).
WORKER_METRICS = WorkerMetrics(process_metrics=True)
