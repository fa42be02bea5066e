"""`scheduler.background.BackgroundLoop`: the thread, wake event and stop shared by the dispatcher and reconciler."""

from __future__ import annotations

import threading

import pytest

from scheduler.background import BackgroundLoop
from tests.waiting import wait_until

LONG_TICK_S = 3600.0  # a loop that only ever runs when woken
EVENT_TIMEOUT_S = 10.0  # only reached when the behaviour under test is broken


class CountingLoop(BackgroundLoop):
    """Counts its rounds; waits on the wake event for a tick of an hour; a round can be held open."""

    def __init__(self, stop_timeout_s: float = 5.0) -> None:
        super().__init__("counting loop", stop_timeout_s)
        self.rounds = 0
        self.closed = 0
        self.in_round = threading.Event()
        self.release_round = threading.Event()
        self.release_round.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(LONG_TICK_S)
            self._wake.clear()
            if self._stopping.is_set():
                break
            self.rounds += 1
            self.in_round.set()
            self.release_round.wait()
            self.in_round.clear()

    def _close(self) -> None:
        self.closed += 1


def test_a_started_loop_runs_a_round_at_once_and_starts_only_once() -> None:
    loop = CountingLoop()
    thread = loop.run_in_thread()
    try:
        assert thread.name == "renderfarm-counting loop"
        assert thread.daemon
        wait_until(lambda: loop.rounds == 1, EVENT_TIMEOUT_S, "the first round")
        assert loop.run_in_thread() is thread
    finally:
        loop.stop()
    assert not thread.is_alive()


def test_wake_runs_a_round_before_the_tick() -> None:
    loop = CountingLoop()
    loop.run_in_thread()
    try:
        wait_until(lambda: loop.rounds == 1, EVENT_TIMEOUT_S, "the first round")
        loop.wake()
        wait_until(lambda: loop.rounds == 2, EVENT_TIMEOUT_S, "the woken round")
    finally:
        loop.stop()


def test_stop_ends_the_thread_closes_once_per_stop_and_is_idempotent() -> None:
    loop = CountingLoop()
    thread = loop.run_in_thread()
    loop.stop()
    assert not thread.is_alive()
    assert loop.closed == 1
    loop.stop()  # nothing running: only the close again
    assert loop.closed == 2


def test_a_stopped_loop_starts_again() -> None:
    loop = CountingLoop()
    first = loop.run_in_thread()
    loop.stop()
    second = loop.run_in_thread()
    try:
        assert second is not first
        wait_until(lambda: loop.rounds == 2, EVENT_TIMEOUT_S, "the restarted loop's first round")
    finally:
        loop.stop()


def test_stop_raises_when_the_round_outlasts_the_timeout() -> None:
    loop = CountingLoop(stop_timeout_s=0.05)
    loop.release_round.clear()  # the round blocks until released
    thread = loop.run_in_thread()
    assert loop.in_round.wait(EVENT_TIMEOUT_S)
    with pytest.raises(TimeoutError, match=r"the counting loop did not stop within 0\.05 s"):
        loop.stop()
    assert loop.closed == 0  # nothing is closed under a round that still runs
    loop.release_round.set()
    thread.join(EVENT_TIMEOUT_S)
    assert not thread.is_alive()


def test_stop_from_the_loop_thread_does_not_wait_for_itself() -> None:
    stopped = threading.Event()

    class SelfStopping(BackgroundLoop):
        def _loop(self) -> None:
            self.stop(timeout_s=EVENT_TIMEOUT_S)
            stopped.set()

    loop = SelfStopping("self-stopping loop", EVENT_TIMEOUT_S)
    thread = loop.run_in_thread()
    assert stopped.wait(EVENT_TIMEOUT_S)
    thread.join(EVENT_TIMEOUT_S)
    assert not thread.is_alive()
