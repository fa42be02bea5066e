"""The size-aware estimate (scheduler/wait_estimate.py) from recorded runs: pure functions, no database."""

from __future__ import annotations

import pytest

from scheduler.wait_estimate import estimate, job_work, learn


def run(seconds: float, steps: int, size: int, sampler: str = "Euler", batch: int = 1) -> tuple[float, int, dict]:
    request = {"width": size, "height": size, "batch_size": batch, "sampler_name": sampler}
    return seconds, steps, request


def test_work_is_steps_times_megapixels_times_batch() -> None:
    assert job_work(20, {"width": 1000, "height": 500, "batch_size": 4}) == pytest.approx(40.0)
    assert job_work(None, {"width": 64, "height": 64}) is None
    assert job_work(20, "not a request") is None


def test_a_sampler_with_enough_runs_has_its_own_rate() -> None:
    # Euler: 1 s per step·megapixel; "DPM2" (two model calls per step): 2 s, three runs of each.
    runs = [run(1.0 * 10 * 0.25, 10, 500) for _ in range(3)] + [run(2.0 * 10 * 0.25, 10, 500, "DPM2") for _ in range(3)]
    rates = learn(runs)
    assert rates is not None
    work = job_work(100, {"width": 1000, "height": 1000})
    assert estimate(rates, work, "euler").eta_s == pytest.approx(100.0)
    assert estimate(rates, work, "dpm2").eta_s == pytest.approx(200.0)
    # A sampler never seen uses the queue's rate (the median over all runs).
    unknown = estimate(rates, work, "lms")
    assert 100.0 <= unknown.low_s <= unknown.eta_s <= unknown.high_s <= 200.0


def test_jobs_ahead_are_shared_by_the_workers_and_what_is_left_of_a_running_job_counts() -> None:
    rates = learn([run(10.0, 10, 1000) for _ in range(4)])  # 10 s per job of 10 megapixel-steps
    assert rates is not None
    own = estimate(rates, 10.0, None)
    assert own.eta_s == pytest.approx(10.0)
    assert estimate(rates, 10.0, None, jobs_ahead=4, workers=2).eta_s == pytest.approx(30.0)
    assert estimate(rates, 10.0, None, remaining=0.25).eta_s == pytest.approx(2.5)
    assert learn([]) is None
