"""worker/claimed_run.py:LiveGuard: a failing live store is left alone for a while, reads and writes apart, so that a
failed progress or preview write never hides a cancel, interrupt or skip from the next steps."""

from __future__ import annotations

import uuid

from shared.live import LocalLiveStatus
from worker.claimed_run import LIVE_BACKOFF_S, LiveGuard


def test_a_failed_write_pauses_writes_only_and_for_a_while() -> None:
    live = LocalLiveStatus()
    job = uuid.uuid4()
    now = [100.0]
    guard = LiveGuard(live, lambda: now[0])

    def too_large() -> None:
        raise ConnectionError("the preview write failed")

    assert guard.call("preview write", too_large) is None
    live.request_interrupt(job)
    seen = guard.call("stop check", lambda: live.stop_requests(job), default=None, reads=True)
    assert seen is not None
    assert seen.interrupt  # the stop check still reads after a write failed

    writes: list[int] = []
    guard.call("progress write", lambda: writes.append(1))
    assert writes == []  # writes are left alone after their failure...
    now[0] += LIVE_BACKOFF_S
    guard.call("progress write", lambda: writes.append(1))
    assert writes == [1]  # ...until the pause is over


def test_a_failed_read_pauses_reads_only() -> None:
    live = LocalLiveStatus()
    now = [0.0]
    guard = LiveGuard(live, lambda: now[0])

    def down() -> None:
        raise ConnectionError("no live store")

    assert guard.call("stop check", down, default="none read", reads=True) == "none read"
    reads: list[int] = []
    guard.call("stop check", lambda: reads.append(1), reads=True)
    assert reads == []
    writes: list[int] = []
    guard.call("progress write", lambda: writes.append(1))
    assert writes == [1]
