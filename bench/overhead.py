"""Farm overhead: one job end to end through the farm against the engine alone, on the same model and job.

Farm side: `PUT /v1/jobs/{id}` to a scheduler process (API, dispatcher, Postgres, Redis, Celery), one warm worker
process (`python -m worker.service`: claim, inputs from S3, render with progress writes and cancel checks, upload
to S3, fenced commit), one job at a time. Its time is from the moment the client sends the PUT to the moment the
worker commits `succeeded` (the row's `finished_at`; every process runs on this machine, so the clocks agree), so
polling granularity does not count.

Engine side: in this process, `StableDiffusionProcessingImg2Img.from_job(...)` and `process_images` in a loop,
with the same decoded input, model, job, torch thread count and seed as the worker.

The two sides alternate job by job (engine, farm, engine, farm, ...), so background load on the machine falls on
both alike. Overhead per job = farm time - the engine time of the same pair. The breakdown comes from the worker's
own per-phase timings (its log line "job ... in {...} ms (n progress writes, x ms in step callbacks)"): the step
callback's own time is measured in the worker; the render phase minus the engine alone shows the rest of the gap.
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
import uuid
from typing import Any

from bench import harness
from bench.config import Config
from bench.results import BenchResult

TARGET_RATIO_GPU = 1.05
TARGET_CPU_OVERHEAD_MS = 30.0
_TIMINGS_RE = re.compile(
    r"job (?P<task>.+?) attempt \d+: succeeded in (?P<ms>\{.*?\}) ms \((?P<writes>\d+) progress writes, "
    r"(?P<callbacks>[0-9.]+) ms in step callbacks\)"
)


def _worker_timings(log: str) -> dict[str, dict[str, float]]:
    """Per task id (what the worker's log names a job by): its phase timings (ms) and its progress write count."""
    found: dict[str, dict[str, float]] = {}
    for match in _TIMINGS_RE.finditer(log):
        timings = ast.literal_eval(match.group("ms"))
        timings["progress_writes"] = float(match.group("writes"))
        timings["callbacks"] = float(match.group("callbacks"))
        found[match.group("task")] = timings
    return found


def run(config: Config) -> list[BenchResult]:
    import httpx
    import torch

    from shared.images import ImageLimits, decode_image
    from shared.job.spec import SpecLimits, parse_job
    from worker.engine.models import load_model, pick_device, pick_dtype
    from worker.engine.processing import StableDiffusionProcessingImg2Img, process_images

    gpu = config.gpu
    size = config.engine_gpu_size if gpu else config.overhead_size
    steps = config.engine_gpu_steps if gpu else config.overhead_steps
    model_name = "sd15-shaped" if gpu else "tiny"
    result = BenchResult("overhead", f"Farm overhead: one job end to end against the engine alone ({model_name})")
    # The worker process gets the same OMP_NUM_THREADS (bench/harness.py passes it on; worker.service honours it).
    threads = int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
    result.settings = {
        "job": f"{model_name}, {size}×{size}, {steps} steps, Euler, strength 0.75, batch 1",
        "pairs": f"{config.overhead_jobs} (engine and farm alternating), after 2 warm-up jobs",
        "worker": "1 process (python -m worker.service, solo pool), warm",
        "torch threads": f"{threads} on both sides (OMP_NUM_THREADS)",
        "progress interval": "0.25 s (default)",
    }
    extra_env: dict[str, str] = {}
    if gpu:
        from bench.engine import sd15_dir

        extra_env["RENDERFARM_MODEL"] = str(sd15_dir())
    with harness.farm(extra_env) as farm:
        device = pick_device("cuda" if gpu else "cpu")
        tiny_dir = farm.settings.data_dir / "models"
        # Built here, before the worker starts, so that the two do not race to build it.
        model = load_model(farm.settings.model, device=device, dtype=pick_dtype(device), tiny_dir=tiny_dir)
        if not gpu:
            torch.set_num_threads(threads)
        base = farm.start_scheduler()
        worker = farm.start_workers(1, ["rf.default.interactive"], device=device.type)[0]
        png = harness.png_bytes(size, size)
        asset = harness.upload_asset(base, png)
        body = harness.job_body(asset, size=size, steps=steps, sampler_name="Euler", denoising_strength=0.75)
        job = parse_job(body, SpecLimits())
        picture = decode_image(png, field="init_images.0", limits=ImageLimits(max_pixels=10**8, max_bytes=10**9))

        def engine_once() -> float:
            start = time.perf_counter()
            p = StableDiffusionProcessingImg2Img.from_job(job, sd_model=model, init_images=[picture])
            process_images(p)
            if gpu:
                torch.cuda.synchronize()
            return time.perf_counter() - start

        client = httpx.Client(base_url=base, headers=harness.AUTH, timeout=60)
        expected = [engine_once()]

        # The end of a job is watched in the database with a one-row read (a pooled connection, no transaction):
        # polling the API (a snapshot costs a few ms of CPU) would take CPU from the worker on a two-core machine
        # and show up as farm overhead. The client-visible time is the row's finished_at anyway.
        from shared.db import Database

        db = Database.from_url(farm.database_url)

        def farm_once() -> tuple[float, str]:
            task_id = f"overhead-{uuid.uuid4().hex}"
            data = json.dumps(body).encode()
            sent = time.time()
            response = client.put(f"/v1/jobs/{task_id}", content=data, headers={"Content-Type": "application/json"})
            if response.status_code != 201:
                raise RuntimeError(f"submission answered {response.status_code}: {response.text}")
            # Sleep through most of the render, then look every 5 ms.
            time.sleep(max(0.0, harness.median(expected) * 0.95))
            deadline = time.monotonic() + 120
            while True:
                row = db.jobs.get(harness.TENANT, task_id)
                if row.state == "succeeded" and row.finished_at is not None:
                    return row.finished_at.timestamp() - sent, task_id
                if row.is_terminal or time.monotonic() > deadline:
                    snapshot: dict[str, Any] = client.get(f"/v1/jobs/{task_id}").json()
                    raise RuntimeError(f"job {task_id} ended {row.state}: {snapshot.get('error')}")
                time.sleep(0.005)

        for _ in range(2):  # warm-up: the worker's first job loads lazily built parts, the API's caches fill
            farm_once()
            expected.append(engine_once())
        engine_s: list[float] = []
        farm_s: list[float] = []
        task_ids: list[str] = []
        for _ in range(config.overhead_jobs):
            engine_s.append(engine_once())
            expected.append(engine_s[-1])
            seconds, task_id = farm_once()
            farm_s.append(seconds)
            task_ids.append(task_id)
        client.close()
        db.close()
        timings = _worker_timings(worker.log_text())
    overhead_ms = [(f - e) * 1000 for f, e in zip(farm_s, engine_s, strict=True)]
    ratio = harness.median(farm_s) / harness.median(engine_s)
    result.add("engine alone (median)", harness.median(engine_s) * 1000, "ms")
    result.add("farm end to end (median)", harness.median(farm_s) * 1000, "ms")
    if gpu:
        result.add("farm / engine", ratio, "×", f"≤ {TARGET_RATIO_GPU}", ratio <= TARGET_RATIO_GPU)
    else:
        result.add("farm / engine", ratio, "×")
    median_overhead = harness.median(overhead_ms)
    result.add(
        "overhead per job (median)",
        median_overhead,
        "ms",
        None if gpu else f"≤ {TARGET_CPU_OVERHEAD_MS:.0f}",
        None if gpu else median_overhead <= TARGET_CPU_OVERHEAD_MS,
    )
    result.add("overhead per job (p95)", harness.percentile(overhead_ms, 95), "ms")
    phases: dict[str, list[float]] = {}
    renders: list[float] = []
    for task_id in task_ids:
        found = timings.get(task_id)
        if found is None:
            continue
        for phase in ("claim", "model", "fetch_inputs", "upload", "commit"):
            phases.setdefault(phase, []).append(found.get(phase, 0.0))
        renders.append(found.get("render", 0.0))
        phases.setdefault("writes", []).append(found["progress_writes"])
        phases.setdefault("callbacks", []).append(found["callbacks"])
    if renders:
        for phase in ("claim", "fetch_inputs", "upload", "commit"):
            result.add(f"  worker: {phase.replace('_', ' ')} (median)", harness.median(phases[phase]), "ms")
        result.add(
            "  worker: step callbacks, measured (progress writes, stop checks, lease renewals; median)",
            harness.median(phases["callbacks"]),
            "ms",
        )
        # The rest of the render's difference is the same engine work running slower in the worker process (CPU
        # shared with the farm's own processes on this machine) or faster (noise of a few percent of a CPU render).
        render_gap = harness.median(renders) - harness.median(engine_s) * 1000
        result.add("  worker: render in the worker - engine alone (incl. the callbacks)", render_gap, "ms")
        worker_total = [
            sum(timings[t].get(k, 0.0) for k in ("claim", "model", "fetch_inputs", "render", "upload", "commit"))
            for t in task_ids
            if t in timings
        ]
        rest = harness.median(farm_s) * 1000 - harness.median(worker_total)
        result.add("  API, dispatch, broker, wake-up (farm - worker phases)", rest, "ms")
        result.note(f"progress writes per job: {harness.median(phases['writes']):.0f} (median)")
    else:
        result.note("the worker's per-phase timings were not found in its log; no breakdown")
    return [result]
