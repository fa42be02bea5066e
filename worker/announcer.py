"""A worker's announcement: what it consumes and can load, written to the database on start, every heartbeat, and
withdrawn when it stops (docs/architecture.md "Routing", docs/reliability.md "Who moves each job on").

    announcer = Announcer(db, settings, hostname="gpu0@host", device="cuda", add_queue=consumer_adds_queue)
    announcer.start()    # announces at once, then every `worker_heartbeat_s` on a daemon thread
    announcer.stop()     # stops the heartbeat and deletes the row

Every heartbeat rescans the models the worker can serve (`worker.servable`, a directory listing). Unless its queues
were pinned (`--queues`), a model that appeared gets its queues consumed at once (`add_queue`, which must be safe to
call from this thread: Celery's consumer is asked through `call_soon`, see `consumer_queue_adder`) and the new
queues are announced. Queues are never dropped at runtime: a model file removed while jobs for it may be queued is
the loader's error to report, not a reason to strand those jobs.

Every heartbeat also writes what the worker is doing now, from its `status` provider (`worker.status`: GPU, loaded
models, current job, step speed, OOM count). A provider that raises costs the status (announced as null, logged
once), never the heartbeat.

A database that cannot be reached costs the heartbeat, never the worker: the error is logged and the announcement is
retried with backoff (`shared.backoff`), at most one heartbeat apart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from shared.backoff import backoff_delay
from shared.config import Settings
from shared.db import Database
from worker.servable import Tier, queues_for_models, servable_model_names

__all__ = ["Announcer", "consumer_queue_adder"]

logger = logging.getLogger(__name__)

RETRY_BASE_S: Final = 0.5  # first pause before re-announcing after a failed write (s); capped at one heartbeat
STOP_JOIN_S: Final = 10.0  # seconds to wait for the heartbeat thread when stopping


def consumer_queue_adder(consumer: Any) -> Callable[[str], None]:
    """`add_queue` for a running Celery consumer: the queue is added on the consumer's own loop (`call_soon`), as
    Celery's `add_consumer` control command does, since its broker connection is not shared across threads."""

    def add(queue: str) -> None:
        consumer.call_soon(consumer.add_task_queue, queue)

    return add


class Announcer:
    """The heartbeat of one worker process's announcement (see the module text). Thread-safe start and stop."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        hostname: str,
        device: str,
        consuming: Sequence[str],
        add_queue: Callable[[str], None] | None = None,
        list_models: Callable[[Settings], list[str]] = servable_model_names,
        status: Callable[[], Mapping[str, Any]] | None = None,
        tier: Tier | None = None,
    ) -> None:
        """`consuming`: the queues the worker consumes now. `add_queue`: how to consume one more at runtime; None
        pins the queues (`--queues` was given): models are still rescanned and announced, queues are not added.
        `status`: what the worker is doing now (`worker.status.status_provider`), read on every heartbeat.
        `tier`: a new model's queues of that tier only are added (`--tier`)."""
        self.db = db
        self.settings = settings
        self.hostname = hostname
        self.device = device
        self._consuming = list(dict.fromkeys(consuming))
        self._add_queue = add_queue
        self._list_models = list_models
        self._status = status
        self._tier = tier
        self._status_failed = False  # a raising provider is logged once, not every heartbeat
        self._models: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards `_consuming` (read by other threads)
        self._start_lock = threading.Lock()
        self.announced = threading.Event()  # set after the first announcement that reached the database

    @property
    def consuming(self) -> list[str]:
        with self._lock:
            return list(self._consuming)

    def start(self) -> None:
        """Announce now (in the caller's thread, so the worker is known when this returns, unless the database is
        down: then the thread retries), then start the heartbeat thread. Idempotent."""
        with self._start_lock:
            if self._thread is not None:
                return
            failures = self._try_beat(0)
            self._thread = threading.Thread(target=self._run, args=(failures,), name="rf-worker-announcer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat and delete this worker's row (logged, never raised, if the database is down: the row
        then expires on its own). Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_JOIN_S)
        try:
            self.db.workers.withdraw(self.hostname)
        except Exception as exc:  # the row expires after a few heartbeats anyway
            logger.warning(
                "worker %s: could not withdraw its announcement (%s); it expires on its own", self.hostname, exc
            )

    def beat(self) -> None:
        """One heartbeat: rescan the models, consume new models' queues (unless pinned), write the announcement.
        Raises what the database raises (the loop logs it and retries)."""
        models = self._list_models(self.settings)
        self._consume_queues_of(models)
        self._models = models
        self.db.workers.announce(
            self.hostname,
            device=self.device,
            queues=self.consuming,
            models=models,
            ttl_s=self.settings.worker_announcement_ttl_s,
            status=self._read_status(),
        )
        self.announced.set()

    def _read_status(self) -> Mapping[str, Any] | None:
        """The provider's status, or None (without one, or when it raises: logged the first time)."""
        if self._status is None:
            return None
        try:
            return self._status()
        except Exception as exc:  # the status is a nicety; the heartbeat is what keeps the worker's jobs routed
            if not self._status_failed:
                self._status_failed = True
                logger.warning(
                    "worker %s: its status could not be read (%s: %s); announcing none (logged once)",
                    self.hostname,
                    type(exc).__name__,
                    exc,
                )
            return None

    def _consume_queues_of(self, models: list[str]) -> None:
        if self._add_queue is None:
            return
        wanted = queues_for_models(models, self.settings, self._tier)
        new = [queue for queue in wanted if queue not in self._consuming]
        for queue in new:
            self._add_queue(queue)
            with self._lock:
                self._consuming.append(queue)
        if new:
            logger.info("worker %s: new models; now also consuming %s", self.hostname, ", ".join(new))

    def _run(self, failures: int) -> None:
        """Wait a heartbeat (less, with backoff, after `failures` failed beats in a row), beat, until stopped."""
        heartbeat = self.settings.worker_heartbeat_s
        while True:
            pause = backoff_delay(failures, min(RETRY_BASE_S, heartbeat), heartbeat) if failures else heartbeat
            if self._stop.wait(pause):
                return
            failures = self._try_beat(failures)

    def _try_beat(self, failures: int) -> int:
        """One beat; the failures in a row after it (0 after a success). Logs, never raises."""
        try:
            self.beat()
        except Exception as exc:  # a heartbeat lost to a database blip must not end the worker
            logger.warning(
                "worker %s: announcing failed (%s: %s); retrying (failure %d in a row)",
                self.hostname,
                type(exc).__name__,
                exc,
                failures + 1,
            )
            return failures + 1
        return 0
