"""The SDK's job snapshot carries the live preview of a snapshot read with `?previews=true` (docs/api.md)."""

from __future__ import annotations

from typing import Any

from renderfarm import Job

SNAPSHOT: dict[str, Any] = {
    "task_id": "t",
    "state": "running",
    "progress": 0.5,
    "step": 4,
    "total_steps": 8,
    "eta_s": 1.0,
    "queue_position": None,
    "attempt": 1,
    "created_at": "2026-01-01T00:00:00Z",
    "started_at": "2026-01-01T00:00:01Z",
    "finished_at": None,
    "worker": "gpu-0",
    "error": None,
    "warnings": [],
    "artifacts": [],
    "seq": 3,
}


def test_a_snapshot_preview_reaches_the_job() -> None:
    preview = {"id": 1048577, "step": 4, "job_no": 0, "method": "TAESD", "image": "data:image/png;base64,AA=="}
    assert Job.from_dict({**SNAPSHOT, "preview": preview}).preview == preview
    assert Job.from_dict({**SNAPSHOT, "preview": None}).preview is None
    assert Job.from_dict(SNAPSHOT).preview is None  # a farm that predates previews


def test_snapshots_carry_why_they_wait_the_eta_range_and_how_they_stopped() -> None:
    waiting = {"reason": "behind_priority", "message": "2 jobs of higher priority run first", "since": None}
    job = Job.from_dict(
        {
            **SNAPSHOT,
            "waiting": {**waiting, "jobs_ahead": 2, "higher_priority_ahead": 2},
            "eta_range_s": [3.5, 9.0],
            "cancel_requested": True,
        }
    )
    assert job.waiting is not None
    assert (job.waiting.reason, job.waiting.since) == ("behind_priority", None)
    assert dict(job.waiting.details) == {"jobs_ahead": 2, "higher_priority_ahead": 2}
    assert job.eta_range_s == (3.5, 9.0)
    assert job.cancel_requested
    stopped = Job.from_dict({**SNAPSHOT, "interrupted": True, "stopped_at_step": 4})
    assert (stopped.interrupted, stopped.skipped, stopped.stopped_at_step) == (True, False, 4)
    old = Job.from_dict(SNAPSHOT)  # a farm that predates these fields
    assert (old.waiting, old.eta_range_s, old.cancel_requested, old.interrupted) == (None, None, False, False)
