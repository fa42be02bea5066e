"""The scheduler's `/metrics` from a real db, and the worker's metrics and HTTP endpoint."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from scheduler.metrics import build_registry, install_metrics, metrics_response, redis_list_lengths
from shared.config import Settings
from shared.db import Database, JobError, NewJob, make_engine
from shared.db.migrate import upgrade
from shared.queueing import queue_name
from tests.databases import attempt_of
from tests.services import fresh_postgres_database
from worker.metrics import WorkerMetrics, metrics_port_for, start_metrics_server

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
INTERACTIVE = queue_name(None, batch=False)
BATCH = queue_name(None, batch=True)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> datetime:
        self.now = T0 + timedelta(seconds=seconds)
        return self.now


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    body, content_type = metrics_response(registry)
    assert content_type.startswith("text/plain")
    return parse(body.decode())


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels}; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'metrics.db'}"
        upgrade(url)
        yield url
        return
    with fresh_postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(database_url: str, clock: Clock) -> Iterator[Database]:
    engine = make_engine(database_url)
    yield Database(engine, clock=clock)
    engine.dispose()


def submit(db: Database, clock: Clock, task_id: str, at: float, *, model: str | None, queue: str) -> uuid.UUID:
    clock.at(at)
    job, created = db.jobs.create_or_get(
        "tenant-a",
        NewJob(task_id, {"prompt": task_id}, f"{task_id:0>64}"[-64:], queue=queue, max_attempts=3, model=model),
    )
    assert created
    return job.id


def play_a_day(db: Database, clock: Clock) -> None:
    """What happened, with the expected metrics in test_scheduler_metrics_match_what_happened."""
    a = submit(db, clock, "a", 0, model="sd15", queue=INTERACTIVE)
    b = submit(db, clock, "b", 0, model="sd15", queue=INTERACTIVE)
    submit(db, clock, "c", 0, model="sd15", queue=INTERACTIVE)
    d = submit(db, clock, "d", 0, model=None, queue=INTERACTIVE)
    e = submit(db, clock, "e", 0, model=None, queue=BATCH)
    f = submit(db, clock, "f", 0, model=None, queue=INTERACTIVE)
    submit(db, clock, "g", 0, model=None, queue=BATCH)
    h = submit(db, clock, "h", 0, model=None, queue=INTERACTIVE)
    i = submit(db, clock, "i", 0, model=None, queue=INTERACTIVE)

    # a: waits 10 s, renders 30 s, succeeds.
    clock.at(10)
    claimed = db.leases.claim(a, "gpu0@host", 600)
    assert claimed is not None
    attempt = claimed.attempt
    assert attempt == 1
    clock.at(40)
    db.leases.succeed(a, attempt, [])
    # b: waits 5 s, fails after 2 s with render_failed.
    clock.at(5)
    assert attempt_of(db.leases.claim(b, "gpu1@host", 600)) == 1
    clock.at(7)
    assert db.leases.fail(b, 1, JobError(type="permanent", code="render_failed", message="boom")) is not None
    # c: canceled while queued.
    clock.at(8)
    assert db.jobs.request_cancel("tenant-a", "c").state.value == "canceled"
    # d: canceled while running (the worker honours the flag).
    clock.at(20)
    assert attempt_of(db.leases.claim(d, "gpu0@host", 600)) == 1
    db.jobs.request_cancel("tenant-a", "d")
    clock.at(25)
    assert db.leases.cancel_running(d, 1) is not None
    # e: its first worker vanished, the lease expired, the second attempt succeeded (one retry).
    clock.at(30)
    assert attempt_of(db.leases.claim(e, "gpu2@host", 10)) == 1
    clock.at(50)
    assert [job.state.value for job in db.leases.requeue_expired()] == ["queued"]
    clock.at(60)
    assert attempt_of(db.leases.claim(e, "gpu3@host", 600)) == 2
    clock.at(70)
    db.leases.succeed(e, 2, [])
    # f: published, waiting in the broker; g: still in the table (undispatched); h: running.
    clock.at(71)
    assert [job.id for job in db.outbox.claim_dispatch(INTERACTIVE, 1)] == [f]
    clock.at(72)
    assert attempt_of(db.leases.claim(h, "gpu1@host", 600)) == 1
    # i: refused by the API before it ever ran.
    clock.at(73)
    assert db.leases.fail(i, None, JobError(type="input", code="invalid_image", message="not an image")) is not None
    clock.at(100)


def test_scheduler_metrics_match_what_happened(db: Database, clock: Clock) -> None:
    play_a_day(db, clock)
    registry, _ = build_registry(db, known_queues=[INTERACTIVE, BATCH], clock=clock)
    samples = scrape(registry)

    assert value(samples, "renderfarm_metrics_database_up") == 1
    # jobs by state
    expected_states = {"queued": 2, "running": 1, "succeeded": 2, "failed": 2, "canceled": 2}
    for state, count in expected_states.items():
        assert value(samples, "renderfarm_jobs", state=state) == count, state
    # queue depth per queue (f in flight, g undispatched), running per queue, age of the oldest queued job
    assert value(samples, "renderfarm_queue_depth", queue=INTERACTIVE) == 1
    assert value(samples, "renderfarm_queue_depth", queue=BATCH) == 1
    assert value(samples, "renderfarm_queue_jobs", queue=INTERACTIVE, part="in_flight") == 1
    assert value(samples, "renderfarm_queue_jobs", queue=INTERACTIVE, part="undispatched") == 0
    assert value(samples, "renderfarm_queue_jobs", queue=BATCH, part="undispatched") == 1
    assert value(samples, "renderfarm_queue_running", queue=INTERACTIVE) == 1
    assert value(samples, "renderfarm_queue_running", queue=BATCH) == 0
    assert value(samples, "renderfarm_queue_oldest_age_seconds", queue=BATCH) == pytest.approx(100)
    # finished jobs by model and state
    assert value(samples, "renderfarm_jobs_finished_total", model="sd15", state="succeeded") == 1
    assert value(samples, "renderfarm_jobs_finished_total", model="sd15", state="failed") == 1
    assert value(samples, "renderfarm_jobs_finished_total", model="sd15", state="canceled") == 1
    assert value(samples, "renderfarm_jobs_finished_total", model="default", state="succeeded") == 1
    assert value(samples, "renderfarm_jobs_finished_total", model="default", state="failed") == 1
    assert value(samples, "renderfarm_jobs_finished_total", model="default", state="canceled") == 1
    # attempts and retries: a 1, b 1, c 0, d 1, e 2, i 0
    assert value(samples, "renderfarm_job_attempts_total", model="sd15") == 2
    assert value(samples, "renderfarm_job_attempts_total", model="default") == 3
    assert value(samples, "renderfarm_job_retries_total", model="default") == 1
    assert value(samples, "renderfarm_job_retries_total", model="sd15") == 0
    # cancels by stage
    assert value(samples, "renderfarm_job_cancels_total", model="sd15", stage="queued") == 1
    assert value(samples, "renderfarm_job_cancels_total", model="default", stage="running") == 1
    # failures by code
    assert value(samples, "renderfarm_job_failures_total", model="sd15", code="render_failed") == 1
    assert value(samples, "renderfarm_job_failures_total", model="default", code="invalid_image") == 1
    # wait histogram per model: sd15 waited 10 (a) and 5 (b); default waited 20 (d) and 60 (e's last attempt)
    assert value(samples, "renderfarm_job_wait_seconds_count", model="sd15") == 2
    assert value(samples, "renderfarm_job_wait_seconds_sum", model="sd15") == pytest.approx(15)
    assert value(samples, "renderfarm_job_wait_seconds_bucket", model="sd15", le="5.0") == 1
    assert value(samples, "renderfarm_job_wait_seconds_bucket", model="sd15", le="10.0") == 2
    assert value(samples, "renderfarm_job_wait_seconds_bucket", model="sd15", le="+Inf") == 2
    assert value(samples, "renderfarm_job_wait_seconds_sum", model="default") == pytest.approx(80)
    # run histogram per model and outcome: a ran 30 s, b 2 s, d 5 s, e 10 s
    assert value(samples, "renderfarm_job_run_seconds_sum", model="sd15", state="succeeded") == pytest.approx(30)
    assert value(samples, "renderfarm_job_run_seconds_bucket", model="sd15", state="succeeded", le="20.0") == 0
    assert value(samples, "renderfarm_job_run_seconds_bucket", model="sd15", state="succeeded", le="30.0") == 1
    assert value(samples, "renderfarm_job_run_seconds_sum", model="sd15", state="failed") == pytest.approx(2)
    assert value(samples, "renderfarm_job_run_seconds_sum", model="default", state="canceled") == pytest.approx(5)
    assert value(samples, "renderfarm_job_run_seconds_sum", model="default", state="succeeded") == pytest.approx(10)
    assert ("renderfarm_broker_queue_length", (("queue", INTERACTIVE),)) not in samples  # no broker given


def test_the_queues_live_workers_announce_are_reported_before_their_first_job(db: Database, clock: Clock) -> None:
    registry, _ = build_registry(db, known_queues=[INTERACTIVE], clock=clock)
    model_queues = ("rf.m-safetensors.interactive", "rf.m-safetensors.batch")
    db.workers.announce("gpu0@host", device="cuda", queues=model_queues, models=["m.safetensors"], ttl_s=60.0)
    samples = scrape(registry)
    for queue in (INTERACTIVE, *model_queues):
        assert value(samples, "renderfarm_queue_depth", queue=queue) == 0, queue
        assert value(samples, "renderfarm_queue_running", queue=queue) == 0, queue
    db.workers.withdraw("gpu0@host")  # a queue once reported stays: drained, not vanished
    assert value(scrape(registry), "renderfarm_queue_depth", queue=model_queues[1]) == 0


def test_counters_grow_by_what_finished_since_the_last_scrape(db: Database, clock: Clock) -> None:
    play_a_day(db, clock)
    registry, _ = build_registry(db, clock=clock, overlap_s=600)
    first = scrape(registry)
    again = scrape(registry)
    assert again == first, "a scrape with nothing new changes nothing (the overlap is deduplicated)"
    # h (running since 72 s) finishes now; a late commit stamped 30 s earlier than the newest row still counts.
    clock.at(45)
    h = db.jobs.get("tenant-a", "h")
    db.leases.succeed(h.id, h.attempt, [])
    clock.at(200)
    later = scrape(registry)
    assert value(later, "renderfarm_jobs_finished_total", model="default", state="succeeded") == 2
    assert value(later, "renderfarm_job_attempts_total", model="default") == 4
    assert value(later, "renderfarm_jobs", state="running") == 0
    assert value(later, "renderfarm_queue_running", queue=INTERACTIVE) == 0
    # a fresh collector (a restarted scheduler) reports the same totals: counters never go backwards
    restarted, _ = build_registry(db, clock=clock)
    assert scrape(restarted) == later


def test_database_outage_is_reported_not_raised(tmp_path: Path) -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    try:
        registry, _ = build_registry(Database(engine), known_queues=[INTERACTIVE])
        samples = scrape(registry)
    finally:
        engine.dispose()
    assert value(samples, "renderfarm_metrics_database_up") == 0
    assert not [key for key in samples if key[0] == "renderfarm_jobs"]


def test_broker_list_lengths_come_from_redis(db: Database, clock: Clock, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(INTERACTIVE, BATCH)
        client.rpush(INTERACTIVE, "m1", "m2", "m3")
        lengths, close = redis_list_lengths(redis_url)
        registry, _ = build_registry(db, broker_lengths=lengths, known_queues=[INTERACTIVE, BATCH], clock=clock)
        samples = scrape(registry)
        close()
    finally:
        client.delete(INTERACTIVE, BATCH)
        client.close()
    assert value(samples, "renderfarm_broker_queue_length", queue=INTERACTIVE) == 3
    assert value(samples, "renderfarm_broker_queue_length", queue=BATCH) == 0


def test_install_metrics_serves_get_metrics(db: Database, clock: Clock, tmp_path: Path) -> None:
    """What the lead wires into create_app: one call adds GET /metrics."""
    play_a_day(db, clock)
    settings = Settings(data_dir=tmp_path, _env_file=None)
    app = FastAPI()
    close = install_metrics(app, SimpleNamespace(settings=settings, db=db))
    try:
        # Without a metrics token, /metrics answers loopback clients only (scheduler/metrics.py).
        with TestClient(app, client=("127.0.0.1", 50000)) as client:
            response = client.get("/metrics")
    finally:
        close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = parse(response.text)
    assert value(samples, "renderfarm_jobs", state="succeeded") == 2
    assert value(samples, "renderfarm_queue_depth", queue=BATCH) == 1
    assert "/metrics" not in app.openapi()["paths"]


# ---------------------------------------------------------------------------------------------------------------------
# worker


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_worker_metrics_count_what_the_worker_did() -> None:
    mono = FakeClock()
    metrics = WorkerMetrics(CollectorRegistry(), clock=mono, wall_clock=lambda: 1.7e9)
    metrics.describe_worker("gpu0@host", "cuda")
    metrics.job_started()
    for _ in range(4):  # four step callbacks, 0.5 s apart: three step durations
        metrics.step("sd15")
        mono.t += 0.5
    metrics.oom("sd15")
    outcome = SimpleNamespace(state="succeeded", timings_ms={"claim": 5.0, "render": 1995.0})
    metrics.record_outcome(outcome, "sd15")
    metrics.record_outcome(SimpleNamespace(state="skipped", timings_ms={"claim": 1.0}), None)

    loads: list[str] = []

    def load(name: str) -> str:
        loads.append(name)
        return f"model:{name}"

    loader = metrics.instrument_loader(load)
    assert loader("sd15") == "model:sd15"

    def broken(name: str) -> str:
        mono.t += 3
        raise FileNotFoundError(name)

    with pytest.raises(FileNotFoundError):
        metrics.instrument_loader(broken)("missing")

    samples = parse(metrics.exposition().decode())
    assert value(samples, "renderfarm_worker_step_seconds_count", model="sd15") == 3
    assert value(samples, "renderfarm_worker_step_seconds_sum", model="sd15") == pytest.approx(1.5)
    assert value(samples, "renderfarm_worker_renders_total", model="sd15", outcome="succeeded") == 1
    assert value(samples, "renderfarm_worker_renders_total", model="default", outcome="skipped") == 1
    assert value(samples, "renderfarm_worker_render_seconds_sum", model="sd15", outcome="succeeded") == 2.0
    assert ("renderfarm_worker_render_seconds_count", (("model", "default"), ("outcome", "skipped"))) not in samples
    assert value(samples, "renderfarm_worker_oom_total", model="sd15") == 1
    assert value(samples, "renderfarm_worker_model_loads_total", model="sd15", result="ok") == 1
    assert value(samples, "renderfarm_worker_model_loads_total", model="missing", result="error") == 1
    assert value(samples, "renderfarm_worker_model_load_seconds_count", model="sd15") == 1
    assert value(samples, "renderfarm_worker_busy") == 0
    assert value(samples, "renderfarm_worker_info", worker="gpu0@host", device="cuda") == 1


def test_a_new_job_does_not_count_the_gap_since_the_last_step() -> None:
    mono = FakeClock()
    metrics = WorkerMetrics(CollectorRegistry(), clock=mono)
    metrics.job_started()
    metrics.step("m")
    metrics.record_outcome(SimpleNamespace(state="succeeded", timings_ms={}), "m")
    mono.t += 30
    metrics.job_started()
    metrics.step("m")
    samples = parse(metrics.exposition().decode())
    assert ("renderfarm_worker_step_seconds_count", (("model", "m"),)) not in samples or (
        value(samples, "renderfarm_worker_step_seconds_count", model="m") == 0
    )


def test_health_reports_a_stuck_render_and_an_unhealthy_worker() -> None:
    mono = FakeClock()
    metrics = WorkerMetrics(CollectorRegistry(), clock=mono)
    assert metrics.health(stuck_after_s=100)[0]
    metrics.job_started()
    mono.t += 99
    assert metrics.health(stuck_after_s=100)[0]
    metrics.step("m")  # progress resets the clock
    mono.t += 99
    assert metrics.health(stuck_after_s=100)[0]
    mono.t += 2
    healthy, reason = metrics.health(stuck_after_s=100)
    assert not healthy
    assert "no progress" in reason
    metrics.record_outcome(SimpleNamespace(state="failed", timings_ms={}), "m")
    mono.t += 1000
    assert metrics.health(stuck_after_s=100)[0], "an idle worker is not stuck"
    assert not metrics.health(stuck_after_s=100, unhealthy=lambda: True)[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metrics_server_serves_metrics_and_health() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    state: dict[str, Any] = {"unhealthy": False}
    server = start_metrics_server(
        metrics, free_port(), host="127.0.0.1", stuck_after_s=3600, unhealthy=lambda: state["unhealthy"]
    )
    assert server is not None
    try:
        base = f"http://127.0.0.1:{server.port}"
        metrics.oom("sd15")
        metrics.oom("sd15")
        response = httpx.get(f"{base}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert value(parse(response.text), "renderfarm_worker_oom_total", model="sd15") == 2
        health = httpx.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        state["unhealthy"] = True
        health = httpx.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        assert httpx.get(f"{base}/nope", timeout=10).status_code == 404
    finally:
        server.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


def test_metrics_server_off_and_ports_per_gpu() -> None:
    assert start_metrics_server(WorkerMetrics(CollectorRegistry()), 0) is None
    assert metrics_port_for(9400, None) == 9400
    assert metrics_port_for(9400, 3) == 9403
    assert metrics_port_for(0, 3) == 0
    assert Settings(_env_file=None).metrics_port == 9400
