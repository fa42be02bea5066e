"""A loop in a daemon thread of the scheduler process: started once, woken early, stopped with a timeout.

The dispatcher and the reconciler are such loops. A subclass writes `_loop`, which runs until `_stopping` is set
and waits on `_wake` (or on `_stopping`) between its rounds; this class owns the thread and the two events.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod


class BackgroundLoop(ABC):
    """The thread, wake event and stop of a background loop.

    Args:
        name: what the loop is, for its thread's name (`renderfarm-<name>`) and the error of a stop that times out.
        default_stop_timeout_s: seconds `stop()` waits for the loop's current round unless told otherwise.
    """

    def __init__(self, name: str, default_stop_timeout_s: float) -> None:
        self._loop_name = name
        self._default_stop_timeout_s = default_stop_timeout_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _loop(self) -> None:
        """Run rounds until `_stopping` is set; wait between them on `_wake` or `_stopping`, never in a bare sleep."""

    def _close(self) -> None:  # noqa: B027 - a hook: most loops have nothing to close
        """Release what the loop holds (connections), after its thread has ended. Called by every `stop()`."""

    def wake(self) -> None:
        """Make the loop run a round now rather than at its next tick. Never blocks."""
        self._wake.set()

    def run_in_thread(self) -> threading.Thread:
        """Start the loop in a daemon thread, with a round at once; a second call returns the running thread."""
        if self._thread is not None and self._thread.is_alive():
            return self._thread
        self._stopping.clear()
        self._wake.set()
        thread = threading.Thread(target=self._loop, name=f"renderfarm-{self._loop_name}", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the loop, wait up to `timeout_s` seconds (default: the loop's own) for its current round, then
        `_close()`.

        Idempotent, and safe from the loop's own thread (which is then not waited for). Raises `TimeoutError` when
        the thread did not end in time.
        """
        timeout_s = self._default_stop_timeout_s if timeout_s is None else timeout_s
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                raise TimeoutError(f"the {self._loop_name} did not stop within {timeout_s} s")
        self._close()
