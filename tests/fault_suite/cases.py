"""What every fault case does around its fault: submit jobs through the SDK, wait for every one to finish (polled
with a deadline), check the invariants and report the figures."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from tests.fault_suite.farm import TENANT, Farm, job_fields, new_task_id, png_bytes
from tests.fault_suite.invariants import Verdict, check_jobs, orphans_outside_jobs
from tests.waiting import wait_until

PICTURE = png_bytes()


def submit_jobs(farm: Farm, label: str, count: int, *, clients: int = 4, **fields: Any) -> list[str]:
    """Submit `count` jobs through `clients` SDK clients at once; their task ids, in order."""
    task_ids = [new_task_id(f"{label}{i}") for i in range(count)]

    def submit(chunk: Sequence[str]) -> None:
        with farm.client() as client:
            for task_id in chunk:
                client.submit(image=PICTURE, task_id=task_id, **job_fields(**fields))

    chunks = [task_ids[i::clients] for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(submit, chunk) for chunk in chunks if chunk]:
            future.result()
    return task_ids


def finished_count(farm: Farm, task_ids: Sequence[str]) -> int:
    import sqlalchemy as sa

    from shared.db.tables import Job

    with farm._engine.connect() as conn:
        count = conn.scalar(
            sa.select(sa.func.count())
            .select_from(Job)
            .where(
                Job.tenant == TENANT,
                Job.task_id.in_(list(task_ids)),
                Job.state.in_(["succeeded", "failed", "canceled"]),
            )
        )
    return int(count or 0)


def finished_after(farm: Farm, task_ids: Sequence[str], moment: datetime) -> int:
    """How many of the jobs finished after `moment`: the ones a fault held back (and not merely ran beside)."""
    import sqlalchemy as sa

    from shared.db.tables import Job

    with farm._engine.connect() as conn:
        count = conn.scalar(
            sa.select(sa.func.count())
            .select_from(Job)
            .where(Job.tenant == TENANT, Job.task_id.in_(list(task_ids)), Job.finished_at > moment)
        )
    return int(count or 0)


def now() -> datetime:
    return datetime.now(UTC)


def wait_all_finished(farm: Farm, task_ids: Sequence[str], timeout_s: float) -> float:
    """Wait until every job of `task_ids` is terminal; the seconds it took."""
    began = time.monotonic()
    wait_until(
        lambda: finished_count(farm, task_ids) == len(task_ids),
        timeout_s,
        lambda: f"all {len(task_ids)} jobs to finish ({finished_count(farm, task_ids)} did)",
        max_interval=0.5,
    )
    return time.monotonic() - began


def verdict(farm: Farm, task_ids: Sequence[str]) -> Verdict:
    keys = farm.s3_keys()
    found = check_jobs(farm._engine, keys, TENANT, task_ids, farm.worker_log_texts())
    found.orphans.extend(orphans_outside_jobs(farm._engine, keys, TENANT))
    return found


SETTLE_S = 30.0  # seconds the invariants may take to hold once every job is terminal (the sweep of uncommitted
# uploads runs `orphan_sweep_grace_s` after a job finished, at the reconciler's next run)


def settled_verdict(farm: Farm, task_ids: Sequence[str], timeout_s: float = SETTLE_S) -> Verdict:
    """The verdict once it finds no problem, or the last one after `timeout_s` (polled, never slept for)."""
    last: list[Verdict] = []

    def clean() -> bool:
        last[:] = [verdict(farm, task_ids)]
        return not last[0].problems

    with contextlib.suppress(AssertionError):
        wait_until(clean, timeout_s, "the invariants to hold", max_interval=1.0)
    return last[0]


def assert_invariants(farm: Farm, task_ids: Sequence[str], *, all_succeed: bool = True) -> Verdict:
    found = settled_verdict(farm, task_ids)
    assert not found.problems, found.problems
    if all_succeed:
        assert found.states == {"succeeded": len(task_ids)}, (found.states, found.failures)
    return found
