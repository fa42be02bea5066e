"""Progress as clients see it: polling shows `running` with rising step counts; SSE streams the same snapshots."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ALICE_TOKEN, JOB_TIMEOUT_S, Api, Scheduler, Worker, new_task_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMPARED = ("state", "step", "total_steps", "progress", "attempt", "worker")  # what one seq must mean everywhere


def read_stream(url: str, events: list[dict[str, Any]], errors: list[BaseException]) -> None:
    """Collect the snapshots of an SSE stream until it ends (after the terminal snapshot)."""
    try:
        headers = {"Authorization": f"Bearer {ALICE_TOKEN}", "Accept": "text/event-stream"}
        with httpx.stream("GET", url, headers=headers, timeout=JOB_TIMEOUT_S) as response:
            response.raise_for_status()
            event_id, data = None, None
            for line in response.iter_lines():
                if line.startswith("id:"):
                    event_id = int(line[3:].strip())
                elif line.startswith("data:"):
                    data = json.loads(line[5:].strip())
                elif line == "" and data is not None:
                    assert event_id == data["seq"]
                    events.append(data)
                    event_id, data = None, None
    except BaseException as exc:  # reported to the test's thread
        errors.append(exc)


def test_polling_and_sse_see_the_same_rising_progress(
    alice: Api, scheduler: Scheduler, standin_workers: list[Worker]
) -> None:
    task_id = new_task_id("progress")
    alice.submit(task_id, model="e2e-standin", steps=8, denoising_strength=1.0)  # 8 steps of 0.25 s
    events: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    stream = threading.Thread(
        target=read_stream, args=(f"{scheduler.url}/v1/jobs/{task_id}/events", events, errors), daemon=True
    )
    stream.start()

    polled: list[dict[str, Any]] = []

    def record(snapshot: dict[str, Any]) -> bool:
        polled.append(snapshot)
        return snapshot["state"] in ("succeeded", "failed", "canceled")

    final = alice.wait_for(task_id, record, what="a finished state")
    stream.join(JOB_TIMEOUT_S)

    assert final["state"] == "succeeded"
    running_steps = [s["step"] for s in polled if s["state"] == "running"]
    assert len(set(running_steps)) >= 2, f"polling saw no rising progress: {running_steps}"
    assert running_steps == sorted(running_steps)
    assert [s["seq"] for s in polled] == sorted(s["seq"] for s in polled)

    assert not stream.is_alive(), "the SSE stream did not end after the terminal snapshot"
    assert not errors, errors
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(set(seqs)), f"SSE snapshots out of seq order: {seqs}"
    assert events[-1]["state"] == "succeeded"
    streamed_steps = [event["step"] for event in events if event["state"] == "running"]
    assert len(set(streamed_steps)) >= 2, f"SSE saw no rising progress: {streamed_steps}"
    assert streamed_steps == sorted(streamed_steps)
    # A seq names one snapshot: where both channels saw the same seq they saw the same thing.
    by_seq = {event["seq"]: event for event in events}
    shared = [s for s in polled if s["seq"] in by_seq]
    assert shared, "polling and SSE never saw the same snapshot"
    for snapshot in shared:
        assert {k: snapshot[k] for k in COMPARED} == {k: by_seq[snapshot["seq"]][k] for k in COMPARED}
