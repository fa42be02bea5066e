"""Scaling: N worker processes with the stand-in engine against the ideal N / render time; a large queue drained
with every job run exactly once.

The workers are the production entry point (`python -m worker.service`) with `RENDERFARM_STANDIN_STEP_S` set, the
worker's documented test mode: every job is claimed, its input fetched from S3, its progress written to Redis at
every step, its result uploaded to S3 and committed, exactly as with the real engine; only the render is a sleep
of `steps × step_s` (worker/standin.py). Workers are added between measurements (1, 2, 4, ... N), all on the
default queues, with a dispatch window of 2 × the largest N per queue (RENDERFARM_DISPATCH_WINDOW_PER_QUEUE, as a
deployment sets it from its worker count).

Throughput at N: `rounds × N` jobs are submitted at once (one `POST /v1/batches`, or concurrent `PUT`s where
batches are not available); the rate is measured from the database's own timestamps over the steady part: from
the N-th job's finish (the first round done, so start-up ramps are excluded) to the last one's, (J - N) jobs.
Efficiency = that rate / (N / render time). The render time is the stand-in's sleep only, so every millisecond the
farm spends per job (claim, fetch, upload, commit, dispatch) counts against it.

Drain: `drain_jobs` jobs (one stand-in step each) submitted at once to the N running workers, run until none is
left; verified from the database: every job succeeded, at attempt 1, with exactly one result artifact row, and
the worker logs show no second delivery of any job.
"""

from __future__ import annotations

import json
import time
import uuid

from bench import harness
from bench.config import Config
from bench.results import BenchResult

TARGET_EFFICIENCY = 0.95
QUEUES = ("rf.default.interactive", "rf.default.batch")
BATCH_LIMIT = 10_000  # items per POST /v1/batches (the default RENDERFARM_MAX_BATCH_ITEMS)


def submit(base: str, template: dict[str, object], count: int, prefix: str) -> str:
    """Submit `count` copies of the job; returns how ("batch" or "put")."""
    load = harness.HttpLoad(base)
    done = 0
    how = "batch"
    while done < count:
        chunk = min(BATCH_LIMIT, count - done)
        body = json.dumps({"jobs": [template] * chunk}).encode()
        outcome = load.run(harness.same("POST", "/v1/batches", body), 1, 1)
        if 404 in outcome.statuses or 405 in outcome.statuses:
            how = "put"
            break
        if set(outcome.statuses) - {200, 201, 202}:
            raise RuntimeError(f"POST /v1/batches answered {outcome.statuses}")
        done += chunk
    if how == "put":
        data = json.dumps(template).encode()
        ids = [f"{prefix}-{uuid.uuid4().hex}" for _ in range(count)]
        outcome = load.run(lambda i: harness.Request("PUT", f"/v1/jobs/{ids[i]}", data), count, 16)
        if set(outcome.statuses) != {201}:
            raise RuntimeError(f"submissions answered {outcome.statuses}")
    return how


def _rows(database_url: str, since: float) -> list[tuple[str, int, float | None, float | None, str]]:
    """(state, attempt, started, finished, id) of the jobs created after `since` (Unix seconds)."""
    import sqlalchemy as sa

    from shared.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT state, attempt, extract(epoch FROM started_at), extract(epoch FROM finished_at), "
                    "id::text FROM jobs WHERE created_at >= to_timestamp(:since)"
                ),
                {"since": since},
            ).all()
    finally:
        engine.dispose()
    return [
        (r[0], int(r[1]), None if r[2] is None else float(r[2]), None if r[3] is None else float(r[3]), r[4])
        for r in rows
    ]


def wait_done(
    database_url: str, since: float, count: int, timeout_s: float
) -> list[tuple[str, int, float | None, float | None, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = _rows(database_url, since)
        finished = [r for r in rows if r[0] in ("succeeded", "failed", "canceled")]
        if len(rows) >= count and len(finished) == len(rows):
            return rows
        if time.monotonic() > deadline:
            states: dict[str, int] = {}
            for r in rows:
                states[r[0]] = states.get(r[0], 0) + 1
            raise RuntimeError(f"{count} jobs not done within {timeout_s:.0f} s: {states}")
        time.sleep(0.5)


def verify_exactly_once(database_url: str, since: float) -> dict[str, int]:
    """Counts of what went wrong (all zero when every job ran exactly once)."""
    import sqlalchemy as sa

    from shared.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    """
                    SELECT count(*) FILTER (WHERE j.state <> 'succeeded'),
                           count(*) FILTER (WHERE j.attempt <> 1),
                           count(*) FILTER (WHERE a.n IS DISTINCT FROM 1),
                           count(*) FILTER (WHERE a.attempts IS DISTINCT FROM 1),
                           count(*)
                    FROM jobs j
                    LEFT JOIN (SELECT job_id, count(*) AS n, count(DISTINCT attempt) AS attempts FROM artifacts
                               WHERE kind = 'result' GROUP BY job_id) a ON a.job_id = j.id
                    WHERE j.created_at >= to_timestamp(:since)
                    """
                ),
                {"since": since},
            ).one()
    finally:
        engine.dispose()
    return {
        "not succeeded": int(row[0]),
        "attempt ≠ 1": int(row[1]),
        "result rows ≠ 1": int(row[2]),
        "artifact attempts ≠ 1": int(row[3]),
        "jobs": int(row[4]),
    }


def run(config: Config) -> list[BenchResult]:
    from worker.engine.models import build_tiny_model

    sweep = config.scaling_workers
    largest = max(sweep)
    step_s = config.scaling_job_s / config.scaling_steps
    result = BenchResult("scaling", "Scaling: stand-in workers against the ideal N / render time")
    result.settings = {
        "workers": ", ".join(str(n) for n in sweep) + " processes (python -m worker.service, stand-in engine)",
        "render": f"{config.scaling_steps} steps × {step_s:.3f} s = {config.scaling_job_s:.2f} s per job (sleep)",
        "jobs per N": f"{config.scaling_rounds} × N, steady part measured (first round excluded)",
        "dispatch window": f"{2 * largest} per queue",
        "job": "64×64, 1 init image from S3, 1 result uploaded to S3",
    }
    drain = BenchResult("drain", f"Drain: {config.drain_jobs:,} queued jobs, every job exactly once")
    env = {
        "RENDERFARM_DISPATCH_WINDOW_PER_QUEUE": str(2 * largest),
        "RENDERFARM_MAX_QUEUED_JOBS_PER_TENANT": str(max(100_000, 2 * config.drain_jobs)),
    }
    with harness.farm(env) as farm:
        # Built once before any worker starts: N workers building it at once would all pay for it.
        build_tiny_model(farm.settings.data_dir / "models" / "tiny")
        base = farm.start_scheduler()
        asset = harness.upload_asset(base, harness.png_bytes(64, 64))
        template = harness.job_body(asset, size=64, steps=config.scaling_steps, denoising_strength=1.0)
        memory: list[str] = []
        how = "?"
        for n in sweep:
            started = time.monotonic()
            farm.start_workers(n - len(farm.workers), QUEUES, standin_step_s=step_s)
            if n == sweep[0] or n == largest:
                rss, private = zip(*(harness.rss_mib(w.process.pid) for w in farm.workers), strict=True)
                memory.append(
                    f"N={n}: {harness.median(rss):.0f} MiB RSS, {harness.median(private):.0f} MiB private "
                    f"per worker (started in {time.monotonic() - started:.0f} s)"
                )
            count = config.scaling_rounds * n
            since = time.time()
            how = submit(base, template, count, f"scale{n}")
            rows = wait_done(farm.database_url, since, count, 120 + 4 * config.scaling_job_s * config.scaling_rounds)
            finishes = sorted(r[3] for r in rows if r[3] is not None)
            steady = (len(finishes) - n) / (finishes[-1] - finishes[n - 1]) if len(finishes) > n else float("nan")
            ideal = n / config.scaling_job_s
            efficiency = steady / ideal
            result.add(f"N={n}: throughput", steady, "jobs/s")
            target = f"≥ {TARGET_EFFICIENCY:.0%}" if n == largest else None
            result.add(
                f"N={n}: efficiency",
                efficiency * 100,
                "%",
                target,
                efficiency >= TARGET_EFFICIENCY if n == largest else None,
            )
        for line in memory:
            result.note(line)
        result.note(f"jobs submitted with {'POST /v1/batches' if how == 'batch' else 'concurrent PUT /v1/jobs'}")

        # The drain: the same workers, one step per job (one stand-in step of render), a queue filled at once.
        drain.settings = {
            "workers": f"{len(farm.workers)} stand-in processes, {step_s:.3f} s render per job",
            "jobs": f"{config.drain_jobs:,} submitted at once",
        }
        since = time.time()
        submit(base, template | {"steps": 1}, config.drain_jobs, "drain")
        start = time.time()
        rows = wait_done(farm.database_url, since, config.drain_jobs, 600 + config.drain_jobs * 0.5)
        last = max(r[3] for r in rows if r[3] is not None)
        first = min(r[2] for r in rows if r[2] is not None)
        drain.add("drain rate (first claim to last commit)", config.drain_jobs / (last - first), "jobs/s")
        drain.add("wall time from the end of the submission", last - start, "s")
        problems = verify_exactly_once(farm.database_url, since)
        redeliveries = sum(w.log_text().count("not queued (duplicate or canceled delivery") for w in farm.workers)
        lost = problems["not succeeded"] + (config.drain_jobs - problems["jobs"])
        duplicated = problems["attempt ≠ 1"] + problems["result rows ≠ 1"] + problems["artifact attempts ≠ 1"]
        drain.add("jobs lost", lost, "", "0", lost == 0)
        drain.add("jobs run twice", duplicated, "", "0", duplicated == 0)
        drain.add("duplicate deliveries skipped by the claim", redeliveries, "")
        drain.note(
            "checked in the database: state succeeded, attempt 1, exactly one result artifact row of one "
            "attempt, for every job"
        )
    return [result, drain]
