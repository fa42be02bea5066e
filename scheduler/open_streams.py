"""The open event streams of one API process, and the signal that ends them when the server shuts down.

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

__all__ = ["OpenStream", "OpenStreams"]

log = logging.getLogger("scheduler.open_streams")


class OpenStream:
    """One open stream: its job, and a future of its event loop that completes when the stream must end."""

    def __init__(self, job_id: uuid.UUID, loop: asyncio.AbstractEventLoop) -> None:
        self.job_id = job_id
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
    def track(self, job_id: uuid.UUID) -> Iterator[OpenStream]:
        """Register a stream of `job_id` on the running loop for as long as the block runs."""
        stream = OpenStream(job_id, asyncio.get_running_loop())
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

        Besides completing each stream's future, the live status is notified for each job, so that the threads
        waiting for a change of it return at once instead of at the end of their wait slice (the process cannot
        exit before its threads do).
        """
        self.stopping.set()
        with self._lock:
            streams = list(self._open)
        for stream in streams:
            stream.end()
        for job_id in {stream.job_id for stream in streams}:
            try:
                live.notify(job_id)
            except Exception as exc:  # live status down: the waits end at their slice (they poll a stop flag)
                log.warning("waking the stream of job %s for shutdown failed (%s)", job_id, exc)
        return len(streams)
