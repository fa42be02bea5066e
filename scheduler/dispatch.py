"""The dispatcher: publishes queued jobs from the jobs table (the outbox) to Celery, a window per queue at a time.

docs/farm-design.md "Queues, dispatch and fairness" is the spec. In short:

- The API inserts a job with `dispatched_at` NULL, commits, then calls `Dispatcher.wake()`. It never publishes.
- Each round, for every queue with undispatched jobs and room in its window (at most `window_per_queue` messages in
  the broker, i.e. queued rows whose `dispatched_at` is set), the dispatcher claims the next jobs in fair order
  (`Database.outbox.claim_dispatch`: priority, then round-robin over tenants), publishes them with
  `shared.queueing.publish_render`, and sets the Redis marker `rf:dispatched:{job_id}` that lets the reconciler
  notice messages Redis lost.
- A publish that fails (the broker is down) hands the unpublished claims back (`release_dispatch`) and ends the
  round; the next round (a tick later) tries again. Nothing is lost: the row is the outbox.
- Several scheduler processes may dispatch at once: the claim is one conditional UPDATE under a per-queue lock, so
  a job is published by one of them only. A duplicate message (for example a reconciler re-publish) is harmless:
  the worker's claim is a conditional UPDATE too.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery

from scheduler.background import BackgroundLoop
from shared.config import Settings
from shared.db import Database, JobRow
from shared.live import KEY_PREFIX, LiveStatus
from shared.queueing import celery_config, message_id, publish_render

log = logging.getLogger(__name__)

# Messages allowed in the broker per queue, waiting for a worker. It should be at least the number of workers that
# serve the queue (an idle worker must find a message), and small beyond that: a short broker queue keeps priority
# and fairness decisions in SQL, where they can still change, and keeps the broker's depth a true backlog signal.
# 2 × an estimated 8 GPUs per queue; a deployment sets it from its worker count (see `Dispatcher`).
DEFAULT_WINDOW_PER_QUEUE = 16
DEFAULT_TICK_S = 1.0  # seconds between rounds when nobody wakes the dispatcher (workers free window slots)
# Seconds between rounds while jobs wait behind a full window. Workers free window slots by claiming, and nothing
# wakes the dispatcher then; with only the 1 s tick a farm whose jobs take less than a second per window's worth
# would run at most `window` jobs per second, whatever the render time (bench/scaling.py shows it with 2 workers and
# a window of 4). A round with nothing to publish is one indexed GROUP BY, so this costs little.
BUSY_TICK_S = 0.05
MAX_CLAIM_PER_ROUND = 256  # jobs claimed per queue in one transaction; a bigger backlog takes further rounds
DEFAULT_STOP_TIMEOUT_S = 10.0  # seconds `stop()` waits for the loop's current round to finish
DISPATCHED_MARKER_PREFIX = f"{KEY_PREFIX}dispatched:"


def dispatched_marker(job_id: object) -> str:
    """The Redis key that says the job's message was published: `rf:dispatched:{job_id}`."""
    return f"{DISPATCHED_MARKER_PREFIX}{job_id}"


def marker_store(redis_url: str | None) -> Any:
    """The Redis client of the dispatch markers, or None without a Redis URL (the embedded farm sets none).

    Short timeouts: a hung Redis must not stall a dispatch or reconcile round; a failed marker only costs a
    duplicate message later."""
    if not redis_url:
        return None
    import redis

    return redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)


def marker_ttl_s(settings: Settings) -> int:
    """Seconds a dispatch marker lives: the broker's visibility timeout (an unacked message lives that long)."""
    return int(celery_config(settings)["visibility_timeout"])


class MarkerLoop(BackgroundLoop):
    """A scheduler loop over the database and live status that uses the dispatch markers (the dispatcher sets them,
    the reconciler looks for them): it opens the marker store (None without a Redis URL) and closes it on `stop()`.
    """

    def __init__(
        self,
        name: str,
        stop_timeout_s: float,
        db: Database,
        live: LiveStatus,
        settings: Settings,
        redis_url: str | None,
    ) -> None:
        super().__init__(name, stop_timeout_s)
        self._db = db
        self._live = live
        self._settings = settings
        self._redis = marker_store(redis_url or settings.redis_url)

    def _close(self) -> None:
        if self._redis is not None:
            # redis-py reconnects on next use, so a later direct round (`dispatch_once()`, `run_once()`) still works.
            self._redis.close()


class Dispatcher(MarkerLoop):
    """Publishes undispatched queued jobs, keeping at most `window_per_queue` messages in flight per queue.

    Args:
        db: the farm's database (its clock stamps `dispatched_at`).
        celery_app: the app to publish with (`shared.queueing.make_celery_app`).
        live: live status; watchers of a job are notified when it is published (its `seq` changed).
        settings: the farm's settings (the visibility timeout for the marker's TTL; `redis_url`).
        window_per_queue: messages per queue in the broker at most; None means the setting
            `RENDERFARM_DISPATCH_WINDOW_PER_QUEUE` (default `DEFAULT_WINDOW_PER_QUEUE`).
        redis_url: where to set the `rf:dispatched:{id}` markers; None means `settings.redis_url` (the embedded
            default has none and sets no markers: its in-memory broker cannot lose messages while it runs).
        tick_s: seconds the loop waits for a `wake()` before it runs a round anyway.

    Raises `ValueError` for a window below 1 or a tick that is not positive.
    """

    def __init__(
        self,
        db: Database,
        celery_app: Celery,
        live: LiveStatus,
        settings: Settings,
        *,
        window_per_queue: int | None = None,
        redis_url: str | None = None,
        tick_s: float = DEFAULT_TICK_S,
    ) -> None:
        window = settings.dispatch_window_per_queue if window_per_queue is None else window_per_queue
        if window < 1:
            raise ValueError(f"window_per_queue must be at least 1, not {window}")
        if tick_s <= 0:
            raise ValueError(f"tick_s must be positive, not {tick_s}")
        super().__init__("dispatcher", DEFAULT_STOP_TIMEOUT_S, db, live, settings, redis_url)
        self._app = celery_app
        self._window = window
        self._tick_s = tick_s
        self._marker_ttl_s = marker_ttl_s(settings)
        self._backlog = False  # the last round left undispatched jobs behind a full window
        # One round at a time per process: the loop and a direct `dispatch_once()` call must not interleave.
        self._round_lock = threading.Lock()

    @property
    def window_per_queue(self) -> int:
        return self._window

    # --------------------------------------------------------------------------------------------------------------

    def dispatch_once(self) -> int:
        """Run one round: fill every queue's window from its undispatched jobs. Returns the messages published.

        A publish failure ends the round early (the broker is down): the job and the rest of its claim are handed
        back undispatched and the count so far is returned. Raises `DatabaseUnavailable` when the database cannot
        be reached (nothing was published in that case for the queue at hand).
        """
        with self._round_lock:
            published = 0
            outbox = sorted(self._db.outbox.outbox_by_queue().items())
            broker_ok = True
            for queue, counts in outbox:
                if not counts.waiting or counts.in_flight >= self._window:
                    continue  # nothing to publish, or the window is full: skip without taking the queue's lock
                sent, broker_ok = self._dispatch_queue(queue)
                published += sent
                if not broker_ok:
                    break
            # Jobs left waiting behind a window: the loop comes back after BUSY_TICK_S (not while the broker is
            # down: then the normal tick paces the retries).
            self._backlog = broker_ok and any(counts.waiting for _, counts in outbox)
            return published

    def _dispatch_queue(self, queue: str) -> tuple[int, bool]:
        """Claim, publish and mark one queue's next jobs. Returns (published, broker_ok)."""
        claimed = self._db.outbox.claim_dispatch(queue, self._window, max_jobs=MAX_CLAIM_PER_ROUND)
        if len(claimed) == MAX_CLAIM_PER_ROUND:
            self._wake.set()  # a big window: the loop comes straight back for the rest
        published: list[JobRow] = []
        try:
            for index, job in enumerate(claimed):
                try:
                    publish_render(self._app, job.id, job.attempt, job.queue)
                except Exception as exc:
                    # Any error of the publish (kombu's OperationalError, a Redis error, a timeout) means the
                    # message may not be in the broker: hand back this job and the rest of the claim.
                    self._release(claimed[index:], exc)
                    return len(published), False
                published.append(job)
                log.debug("published %s to %s", message_id(job.id, job.attempt), queue)
        finally:
            # Markers and notifications for what did go out, also when the loop above ended early.
            self._mark(published)
            self._notify(published)
        if published:
            log.info("dispatched %d job(s) to %s", len(published), queue)
        return len(published), True

    def _release(self, unpublished: list[JobRow], exc: BaseException) -> None:
        first = unpublished[0]
        log.warning(
            "publishing %s to %s failed (%s: %s); %d job(s) left undispatched, retrying in a later round",
            message_id(first.id, first.attempt),
            first.queue,
            type(exc).__name__,
            exc,
            len(unpublished),
        )
        try:
            self._db.outbox.release_dispatch(unpublished)
        except Exception:
            # The rows keep dispatched_at without a message or marker; the reconciler's lost-message check makes
            # them undispatched after its grace period (cluster mode), the embedded start-up reset otherwise.
            log.exception("could not hand back %d undispatched job(s) of %s", len(unpublished), first.queue)

    def _mark(self, published: list[JobRow]) -> None:
        if self._redis is None or not published:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for job in published:
                pipe.set(dispatched_marker(job.id), message_id(job.id, job.attempt), ex=self._marker_ttl_s)
            pipe.execute()
        except Exception:
            # Without a marker the reconciler re-publishes the job after its grace period: a harmless duplicate.
            log.warning("could not set the dispatch markers of %d job(s)", len(published), exc_info=True)

    def _notify(self, published: list[JobRow]) -> None:
        for job in published:
            try:
                self._live.notify(job.id)
            except Exception:
                log.debug("could not notify the watchers of %s", job.id, exc_info=True)
                return  # the live store is down: do not pay a timeout per job

    # --------------------------------------------------------------------------------------------------------------
    # The loop

    def _loop(self) -> None:
        """A round at start (jobs left from before), then whenever woken (the API calls `wake()` after committing
        new jobs) or every `tick_s` seconds (every `BUSY_TICK_S` while jobs wait behind a full window, so slots
        freed by workers are refilled at once). An exception in a round is logged and the loop goes on."""
        last_round = float("-inf")
        while not self._stopping.is_set():
            busy = min(self._tick_s, BUSY_TICK_S)
            self._wake.wait(busy if self._backlog else self._tick_s)
            if self._backlog:
                # Rounds at most every BUSY_TICK_S while jobs wait: a submission's wake cannot make room in a full
                # window, and each round reads the whole outbox, so a flood of submissions must not run them back to
                # back (bench/throughput.py: database time per submission grew with the backlog).
                self._stopping.wait(max(0.0, last_round + busy - time.monotonic()))
            # Cleared before the round: a wake that arrives during the round triggers the next one.
            self._wake.clear()
            if self._stopping.is_set():
                break
            last_round = time.monotonic()
            try:
                self.dispatch_once()
            except Exception:
                log.exception("dispatch round failed; retrying in %.1f s", self._tick_s)
