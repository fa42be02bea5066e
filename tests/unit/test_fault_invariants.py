"""The fault suite's own checks (tests/fault_suite/invariants.py) can fail: a job the workers' logs show committed
twice is reported "run twice". Their lines are the worker's own (`RunOutcome.summary`), so a change of that format
cannot silently turn the check into one that finds nothing."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import sqlalchemy as sa

from shared.db import Database, make_engine, upgrade
from shared.db.rows import NewJob
from tests.databases import insert_batch
from tests.fault_suite.invariants import check_jobs
from worker.run_outcome import RunOutcome


def test_a_job_the_logs_show_committed_twice_is_run_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'faults.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        items = [
            NewJob(task_id=task_id, request={"seed": 1}, request_hash=hashlib.sha256(task_id.encode()).hexdigest())
            for task_id in ("f-twice-1", "f-once-1")
        ]
        insert_batch(Database(engine), "alice", items)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE jobs SET state = 'canceled', attempt = 1"))

        def line(task_id: str) -> str:
            outcome = RunOutcome(uuid.uuid4(), "succeeded", 1, task_id=task_id)
            return f"2026-12-07 05:00:00,000 INFO worker.tasks: {outcome.summary()}\n"

        first_worker = line("f-twice-1") + line("f-once-1")
        second_worker = line("f-twice-1")  # a second commit of the same job: what the farm must never do
        verdict = check_jobs(engine, [], "alice", ["f-twice-1", "f-once-1"], [first_worker, second_worker])
    finally:
        engine.dispose()
    assert verdict.run_twice == ["f-twice-1"]
    assert verdict.lost == []
