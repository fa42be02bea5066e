"""The fault suite (issue 15): each case injects a fault into the running farm and checks that every job ends in
exactly one terminal state, a succeeded job's results exist exactly once, nothing is orphaned and no job ran twice;
it reports the time the farm took to recover. Sizes: tests/fault_suite/sizes.py (CI by default, nightly by
RENDERFARM_FAULTS=nightly)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest

from renderfarm import TransportError, Unavailable
from tests.fault_suite.cases import (
    assert_invariants,
    finished_after,
    now,
    settled_verdict,
    submit_jobs,
    wait_all_finished,
)
from tests.fault_suite.conftest import Report
from tests.fault_suite.farm import HOLD_MODEL, HOLD_QUEUE, Farm, Killer
from tests.fault_suite.faulty_worker import CRASH_MARKER, HOLD_ENV, HOLD_LINE, OOM_MARKER
from tests.fault_suite.sizes import Size, chosen_size
from tests.waiting import wait_until

HOLD_PREFIX = HOLD_LINE.split("{", 1)[0]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.timeout(600 if chosen_size().name == "ci" else 3600),
]


def test_workers_sigkilled_at_random_moments(farm: Farm, size: Size, report: Report) -> None:
    task_ids = submit_jobs(farm, "kill", size.kill_jobs, steps=20)  # about a second each: kills land mid-render
    killer = Killer(farm, kills=size.kills, interval_s=(0.2, 1.2)).start()
    try:
        killer.wait(size.recovery_timeout_s * 2)
    finally:
        killer.stop()
    recovery_s = wait_all_finished(farm, task_ids, size.recovery_timeout_s)

    found = assert_invariants(farm, task_ids)
    assert killer.kills >= size.kills
    assert killer.mid_render > 0, "no kill landed mid-render"
    report.add(
        "sigkill_random",
        kills=killer.kills,
        kills_mid_render=killer.mid_render,
        recovery_s=round(recovery_s, 1),
        **found.figures(),
    )


def test_workers_killed_between_receipt_and_claim_strand_nothing(farm: Farm, size: Size, report: Report) -> None:
    """Finding 2: held workers each receive a message and die before their claim. A healthy worker started after
    the kills must run every job within the recovery bound, not after the broker's visibility timeout (hours)."""
    count = size.hold_kills
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(farm.extra_worker(HOLD_QUEUE, **{HOLD_ENV: "1"})) for _ in range(count)]
        task_ids = submit_jobs(farm, "hold", count, clients=1, model=HOLD_MODEL)

        def all_holding() -> bool:
            return all(slot.proc is not None and HOLD_PREFIX in slot.proc.log_text() for slot in held)

        wait_until(all_holding, size.recovery_timeout_s, "every held worker to receive a job", max_interval=0.5)
        killed_at = time.monotonic()
        for slot in held:
            farm.kill_worker(slot)
    with farm.extra_worker(HOLD_QUEUE):
        wait_all_finished(farm, task_ids, size.recovery_timeout_s)
        recovery_s = time.monotonic() - killed_at

    found = assert_invariants(farm, task_ids)
    report.add("sigkill_between_receipt_and_claim", kills=count, recovery_s=round(recovery_s, 1), **found.figures())


def test_sigterm_mid_job_returns_or_finishes_it(farm: Farm, size: Size, report: Report) -> None:
    long_steps = max(40, int(4 / size.step_s))  # a few seconds of render, so the signal lands mid-job
    task_ids = submit_jobs(farm, "term", len(farm.slots), clients=1, steps=long_steps)
    running = wait_until(lambda: farm.running_jobs() or None, size.recovery_timeout_s, "a job to run")
    slot = next(s for s in farm.slots if s.hostname in running)
    began = time.monotonic()
    farm.terminate_worker(slot, timeout_s=60)
    exit_s = time.monotonic() - began
    drain_s = wait_all_finished(farm, task_ids, size.recovery_timeout_s)  # after the exit: what was left to run

    found = assert_invariants(farm, task_ids)
    assert exit_s < 30, f"the worker took {exit_s:.1f} s to exit after SIGTERM"
    report.add(
        "sigterm_mid_job", worker_exit_s=round(exit_s, 1), drain_after_exit_s=round(drain_s, 1), **found.figures()
    )


def test_redis_flushed_and_restarted(farm: Farm, size: Size, report: Report) -> None:
    task_ids = submit_jobs(farm, "redis", size.outage_jobs, steps=8)
    wait_until(lambda: farm.running_jobs() or None, size.recovery_timeout_s, "a job to run")
    farm.redis.flush_and_restart()
    fault_ended = now()
    recovery_s = wait_all_finished(farm, task_ids, size.recovery_timeout_s)

    found = assert_invariants(farm, task_ids)
    held = finished_after(farm, task_ids, fault_ended)
    assert held > 0, "every job finished before the fault: the case tested nothing"
    report.add("redis_flushed_restarted", recovery_s=round(recovery_s, 1), jobs_through_fault=held, **found.figures())


def test_postgres_restarted(farm: Farm, size: Size, report: Report) -> None:
    """Every connection reset and new ones refused for a while, then accepted again: a database restart as the
    farm sees it (the shared server itself is not ours to restart)."""
    assert farm.postgres_proxy is not None
    task_ids = submit_jobs(farm, "pg", size.outage_jobs, steps=8)
    wait_until(lambda: farm.running_jobs() or None, size.recovery_timeout_s, "a job to run")
    down_s = 5.0 if size.name == "ci" else 20.0
    farm.postgres_proxy.refusing_for(down_s)
    fault_ended = now()
    recovery_s = wait_all_finished(farm, task_ids, size.recovery_timeout_s)

    found = assert_invariants(farm, task_ids)
    held = finished_after(farm, task_ids, fault_ended)
    assert held > 0, "every job finished before the fault: the case tested nothing"
    report.add(
        "postgres_restarted",
        down_s=down_s,
        recovery_s=round(recovery_s, 1),
        jobs_through_fault=held,
        **found.figures(),
    )


@pytest.mark.parametrize("fault", ["refusing", "hanging"])
def test_s3_outage_is_a_wait_not_an_attempt(farm: Farm, size: Size, report: Report, fault: str) -> None:
    """Finding 1: an S3 outage used attempts and failed jobs. During the outage jobs wait; after it they finish."""
    assert farm.s3_proxy is not None
    task_ids = submit_jobs(farm, f"s3{fault}", size.outage_jobs, steps=8)
    wait_until(lambda: farm.running_jobs() or None, size.recovery_timeout_s, "a job to run")
    if fault == "refusing":
        duration = size.s3_refuse_s
        farm.s3_proxy.refusing_for(duration)
    else:
        duration = size.s3_hang_s
        farm.s3_proxy.hanging_for(duration)
    fault_ended = now()
    recovery_s = wait_all_finished(farm, task_ids, size.recovery_timeout_s)

    found = assert_invariants(farm, task_ids)
    held = finished_after(farm, task_ids, fault_ended)
    assert held > 0, "every job finished before the outage ended: the case tested nothing"
    report.add(
        f"s3_{fault}", outage_s=duration, recovery_s=round(recovery_s, 1), jobs_through_fault=held, **found.figures()
    )


def test_scheduler_restarted_under_polling_and_streaming_clients(farm: Farm, size: Size, report: Report) -> None:
    """Finding 3: `wait(timeout=…)` must outlast a scheduler restart; polling clients see every job finish too."""
    task_ids = submit_jobs(farm, "sched", 8, clients=2, steps=40)
    waited: dict[str, Any] = {}
    errors: list[tuple[str, str, BaseException]] = []
    poll_failures: list[BaseException] = []

    def stream(task_id: str) -> None:
        try:
            with farm.client() as client:
                waited[task_id] = client.wait(task_id, timeout=size.recovery_timeout_s)
        except BaseException as exc:  # reported below, with the job's id
            errors.append(("wait", task_id, exc))

    def poll(task_id: str) -> None:
        """A polling client: GET every half second; a GET the farm does not answer (it is restarting, and the
        SDK's own retries of that one request ran out) is counted and the polling goes on, as a poller's would."""
        deadline = time.monotonic() + size.recovery_timeout_s
        try:
            with farm.client() as client:
                while time.monotonic() < deadline:
                    try:
                        job = client.get(task_id)
                    except (TransportError, Unavailable) as exc:
                        poll_failures.append(exc)
                        continue
                    if job.is_finished:
                        waited[task_id] = job
                        return
                    time.sleep(0.5)  # a polling client's interval, not a synchronisation
                raise AssertionError(f"{task_id} did not finish within {size.recovery_timeout_s} s")
        except BaseException as exc:
            errors.append(("poll", task_id, exc))

    threads = [
        threading.Thread(target=stream if i % 2 == 0 else poll, args=(task_id,), daemon=True)
        for i, task_id in enumerate(task_ids)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: farm.running_jobs() or None, size.recovery_timeout_s, "a job to run")
    away_s = farm.restart_scheduler(graceful=True)
    for thread in threads:
        thread.join(size.recovery_timeout_s + 30)

    assert not errors, errors
    assert sorted(waited) == sorted(task_ids)
    assert {job.state.value for job in waited.values()} == {"succeeded"}
    found = assert_invariants(farm, task_ids)
    report.add(
        "scheduler_restarted",
        away_s=round(away_s, 1),
        clients=len(threads),
        poll_requests_unanswered=len(poll_failures),
        **found.figures(),
    )


def test_a_poison_job_fails_after_its_attempts_and_harms_no_other(farm: Farm, size: Size, report: Report) -> None:
    """A job that kills its worker each time: it fails once its attempts are used; the jobs beside it succeed."""
    (poison,) = submit_jobs(farm, "poison", 1, clients=1, prompt=f"a square {CRASH_MARKER}")
    others = submit_jobs(farm, "beside", size.outage_jobs, steps=4)
    recovery_s = wait_all_finished(farm, [poison, *others], size.recovery_timeout_s * 2)

    found = settled_verdict(farm, [poison, *others])
    assert not found.problems, found.problems
    assert found.states == {"succeeded": len(others), "failed": 1}, found.states
    assert list(found.failures) == [poison]
    report.add("poison_job", poison_code=found.failures[poison], recovery_s=round(recovery_s, 1), **found.figures())


def test_out_of_gpu_memory_fails_only_that_job(farm: Farm, size: Size, report: Report) -> None:
    """The stand-in raises torch.cuda.OutOfMemoryError (the real type): the job fails as out_of_memory, once,
    with no retry on another worker; the jobs beside it succeed, and no worker dies."""
    before = {slot.index: slot.generation for slot in farm.slots}
    (oom,) = submit_jobs(farm, "oom", 1, clients=1, prompt=f"a square {OOM_MARKER}", batch_size=2)
    others = submit_jobs(farm, "calm", size.outage_jobs, steps=4)
    wait_all_finished(farm, [oom, *others], size.recovery_timeout_s)

    found = settled_verdict(farm, [oom, *others])
    assert not found.problems, found.problems
    assert found.states == {"succeeded": len(others), "failed": 1}, found.states
    assert found.failures == {oom: "out_of_memory"}
    with farm.client() as client:
        job = client.get(oom)
    assert job.attempt == 1
    assert job.error is not None
    assert "CUDA out of memory" in job.error.message
    assert {slot.index: slot.generation for slot in farm.slots} == before, "a worker died of the OOM"
    report.add("out_of_memory", **found.figures())
