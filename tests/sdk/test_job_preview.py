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
