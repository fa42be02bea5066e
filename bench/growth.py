"""Growth: status read latency (`GET /v1/jobs/{task_id}`) with 10^3 and with 10^6 jobs in the table.

Two databases, filled in SQL (`generate_series`, not through the API: a million submissions would take the whole
budget), each served by its own scheduler process; the reads alternate between the two in rounds, so that the
machine's load (shared with other work) falls on both alike. Each table holds the same 100 queued jobs (a queued
job's snapshot counts the jobs ahead of it, which depends on the backlog, not on the table) and otherwise succeeded
jobs with one result artifact each (a succeeded job's snapshot reads its artifacts and presigns their URLs). Half
the reads are of queued jobs, half of succeeded ones picked at random over the whole table.
"""

from __future__ import annotations

import random
import time
from typing import Any

from bench import harness
from bench.config import Config
from bench.results import BenchResult

QUEUED_JOBS = 100
# The large table's queued share: a backlog that grows with the table (10^5 queued jobs of 10^6), so the reads of
# queued jobs (queue position, waiting reason, ETA: scheduler/snapshots.py) are measured deep in a large backlog.
BACKLOG_SHARE = 0.1
TARGET_RATIO = 1.2


def _request_json() -> tuple[dict[str, Any], str]:
    from shared.job.hashing import request_hash
    from shared.job.spec import SpecLimits, parse_job

    job = parse_job(harness.job_body("asset:" + "a" * 64, size=512, steps=20), SpecLimits())
    return job.to_request_json(), request_hash(job)


def populate(database_url: str, total: int, queued: int = QUEUED_JOBS) -> float:
    """Fill the jobs table with `total` jobs (`queued` of them queued, the rest succeeded with one artifact each);
    returns the seconds it took."""
    import json

    import sqlalchemy as sa

    from shared.db import make_engine

    request, digest = _request_json()
    engine = make_engine(database_url)
    start = time.perf_counter()
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    """
                    INSERT INTO jobs (id, tenant, task_id, state, attempt, max_attempts, priority, queue, model,
                                      request, request_hash, created_at, dispatched_at, started_at, finished_at,
                                      updated_at, cancel_requested, warnings, seq, total_steps, worker)
                    SELECT md5('job' || g)::uuid, :tenant, 'growth-' || g,
                           CASE WHEN g > :total - :queued THEN 'queued' ELSE 'succeeded' END,
                           CASE WHEN g > :total - :queued THEN 0 ELSE 1 END,
                           3, 0, 'rf.default.interactive', NULL,
                           CAST(:request AS jsonb), :digest,
                           now() - (:total - g) * interval '10 ms',
                           CASE WHEN g > :total - :queued THEN NULL ELSE now() - (:total - g) * interval '10 ms' END,
                           CASE WHEN g > :total - :queued THEN NULL ELSE now() - (:total - g) * interval '10 ms' END,
                           CASE WHEN g > :total - :queued THEN NULL ELSE now() - (:total - g) * interval '9 ms' END,
                           now(), false, CAST('[]' AS jsonb), 3, 16,
                           CASE WHEN g > :total - :queued THEN NULL ELSE 'gpu0@bench' END
                    FROM generate_series(1, :total) AS g
                    """
                ),
                {
                    "tenant": harness.TENANT,
                    "total": total,
                    "queued": queued,
                    "request": json.dumps(request),
                    "digest": digest,
                },
            )
            conn.execute(
                sa.text(
                    """
                    INSERT INTO artifacts (id, job_id, attempt, kind, "index", storage_key, sha256, bytes, width,
                                           height, seed, infotext, created_at)
                    SELECT md5('artifact' || g)::uuid, md5('job' || g)::uuid, 1, 'result', 0,
                           :tenant || '/growth-' || g || '/1/result-0.png', md5('a' || g) || md5('b' || g),
                           300000, 512, 512, g, 'a red cube on a table' || chr(10) || 'Steps: 20, Seed: ' || g,
                           now()
                    FROM generate_series(1, :total - :queued) AS g
                    """
                ),
                {"tenant": harness.TENANT, "total": total, "queued": queued},
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE jobs"))
            conn.execute(sa.text("VACUUM ANALYZE artifacts"))
    finally:
        engine.dispose()
    return time.perf_counter() - start


def _task_ids(total: int, queued: int, count: int, rng: random.Random) -> list[str]:
    """Half queued jobs from the back of the backlog (the last QUEUED_JOBS: the most jobs ahead), half succeeded."""
    ids = []
    for i in range(count):
        if i % 2 == 0:
            ids.append(f"growth-{total - rng.randrange(QUEUED_JOBS)}")  # a queued job
        else:
            ids.append(f"growth-{1 + rng.randrange(total - queued)}")  # a succeeded one, anywhere
    return ids


def run(config: Config) -> list[BenchResult]:
    result = BenchResult("growth", "Growth: status reads with 10^3 and 10^6 jobs in the table")
    small, large = config.growth_sizes
    backlog = max(QUEUED_JOBS, int(large * BACKLOG_SHARE))
    queued_of = {small: QUEUED_JOBS, large: backlog}
    result.settings = {
        "tables": f"{small:,} jobs ({QUEUED_JOBS} queued) and {large:,} jobs ({backlog:,} queued); the rest "
        "succeeded with 1 artifact each",
        "reads": f"{config.growth_reads} per size in {config.growth_rounds} alternating rounds, "
        f"{config.growth_concurrency} keep-alive connections, half queued / half succeeded jobs",
        "server": "one scheduler process (uvicorn, 1 worker) per database; rate limits off",
    }
    rng = random.Random(7)
    # The reads measure the status read, not the API's rate limits (thousands of reads from one token and one
    # address in seconds would be refused with 429 at the defaults): both limits are off for these schedulers.
    unlimited = {"RENDERFARM_RATE_LIMIT_TOKEN_REQUESTS": "0", "RENDERFARM_RATE_LIMIT_ADDRESS_REQUESTS": "0"}
    with harness.farm(unlimited) as farm, harness.postgres_database() as large_url:
        seconds = populate(farm.database_url, small)
        result.note(f"filled {small:,} jobs in {seconds:.1f} s")
        seconds = populate(large_url, large, backlog)
        result.note(f"filled {large:,} jobs (+ {large - backlog:,} artifacts) in {seconds:.1f} s")
        small_url = farm.start_scheduler()
        large_api = farm.start_extra_scheduler({"RENDERFARM_DATABASE_URL": large_url})
        latencies: dict[int, list[float]] = {small: [], large: []}
        per_round = max(1, config.growth_reads // config.growth_rounds)
        for base, total in ((small_url, small), (large_api, large)):  # warm-up: connections, caches
            warm = _task_ids(total, queued_of[total], 100, rng)
            harness.HttpLoad(base).run(
                harness.gets([f"/v1/jobs/{task_id}" for task_id in warm]),
                100,
                config.growth_concurrency,
            )
        for _ in range(config.growth_rounds):
            for base, total in ((small_url, small), (large_api, large)):
                ids = _task_ids(total, queued_of[total], per_round, rng)
                load = harness.HttpLoad(base).run(
                    harness.gets([f"/v1/jobs/{task_id}" for task_id in ids]),
                    per_round,
                    config.growth_concurrency,
                )
                if set(load.statuses) != {200}:
                    raise RuntimeError(f"status reads answered {load.statuses}")
                latencies[total] += load.latencies
    for total in (small, large):
        values = latencies[total]
        result.add(f"p50 with {total:,} jobs", harness.median(values) * 1000, "ms")
        result.add(f"p99 with {total:,} jobs", harness.percentile(values, 99) * 1000, "ms")
    ratio = harness.percentile(latencies[large], 99) / harness.percentile(latencies[small], 99)
    result.add(f"p99 ratio {large:,} / {small:,}", ratio, "×", f"≤ {TARGET_RATIO}", ratio <= TARGET_RATIO)
    return [result]
