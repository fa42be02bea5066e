"""The open event streams (and event-feed long polls) of one API process, and the signal that ends them when the
server shuts down.

uvicorn's graceful shutdown waits for every open connection to finish its response; an event stream's response
lasts until its job finishes, so without this signal a restart waited out `timeout_graceful_shutdown` (10 s) and
then cut the streams anyway. `scheduler.serving` calls `end_all` as the shutdown begins (after the listening
sockets are closed): each stream wakes from its wait and ends; its client resumes it on the next scheduler with
`Last-Event-ID` (docs/reliability.md "Scheduler restarts").

Thread-safe: `end_all` may be called from any thread, streams open and close on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator

from shared.live import LiveStatus

__all__ = ["OpenStream", "OpenStreams", "wait_for_change"]

log = logging.getLogger("scheduler.open_streams")


def wait_for_change(live: LiveStatus, key: uuid.UUID | str, timeout_s: float, stopping: threading.Event) -> bool:
    """`live.wait_for_change(key)` for a stream's thread: no new wait once the server stops, and a live status that
    is down waits out the slice (the caller then reads the durable state again) instead of failing the stream."""
    if stopping.is_set():  # the server shuts down: no new wait can hold up its exit
        return False
    try:
        return live.wait_for_change(key, timeout_s)
    except Exception as exc:
        log.warning("waiting for changes of %s failed (%s); polling", key, exc)
        stopping.wait(timeout_s)
        return False


class OpenStream:
    """One open stream: the live key it waits on (a job id, or a tenant's `events_key`), and a future of its event
    loop that completes when the stream must end."""

    def __init__(self, key: uuid.UUID | str, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.ended: asyncio.Future[None] = loop.create_future()

    def end(self) -> None:
        """Complete `ended` on its own loop (a no-op once done or once the loop is closed)."""
        loop = self.ended.get_loop()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits any more
            loop.call_soon_threadsafe(self._complete)

    def _complete(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


class OpenStreams:
    """The registry of open streams. `stopping` is set once the server shuts down; streams opened after that end
    after their first snapshot."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[OpenStream] = set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    @contextlib.contextmanager
    def track(self, key: uuid.UUID | str) -> Iterator[OpenStream]:
        """Register a stream waiting on `key` on the running loop for as long as the block runs."""
        stream = OpenStream(key, asyncio.get_running_loop())
        with self._lock:
            self._open.add(stream)
        if self.stopping.is_set():
            stream.end()
        try:
            yield stream
        finally:
            with self._lock:
                self._open.discard(stream)

    def end_all(self, live: LiveStatus) -> int:
        """Tell every open stream to end now; returns how many were open.

        Besides completing each stream's future, the live status is notified for each key, so that the threads
        waiting for a change of it return at once instead of at the end of their wait slice (the process cannot
        exit before its threads do).
        """
        self.stopping.set()
        with self._lock:
            streams = list(self._open)
        for stream in streams:
            stream.end()
        for key in {stream.key for stream in streams}:
            try:
                live.notify(key)
            except Exception as exc:  # live status down: the waits end at their slice (they poll a stop flag)
                log.warning("waking the stream of %s for shutdown failed (%s)", key, exc)
        return len(streams)
