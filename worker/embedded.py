"""An in-process Celery worker on a daemon thread: the embedded default's worker (no servers, `memory://` broker).

kombu's `memory://` transport keeps its queues in the process, so the worker must live in the process that
publishes: the API process of the embedded default, or a test. This starts a real `celery.worker.WorkController`
(solo pool, concurrency 1, prefetch 1, no heartbeat, mingle or gossip) on a daemon thread, exactly as a
`celery worker` process would consume, and without the command line's signal handlers (a thread cannot install
them; the owning process handles its own signals and calls `stop()`).

Readiness is an event set by the consumer's ready callback (after it started consuming), never a sleep.

Without `queues` it consumes the queues of every model this process can load (`worker.servable`: the embedded farm
serves `tiny-inpaint` and `tiny-edit` as well as its default), follows models that appear while it runs, and
announces itself in the database like any worker (`worker.announcer`), so the API knows what it serves.

Stopping uses Celery's process-wide warm-shutdown flag (`celery.worker.state.should_stop`), the same mechanism
its own test helper uses, so run at most one embedded worker per process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Final

from celery import Celery
from celery.worker import WorkController
from celery.worker import state as worker_state

from shared.config import Settings
from worker.announcer import Announcer, consumer_queue_adder
from worker.deps import WorkerDeps
from worker.engine.models import pick_device
from worker.servable import queues_for_models, servable_model_names
from worker.status import status_provider
from worker.tasks import deps_holder, warm_up

__all__ = ["EMBEDDED_POLLING_INTERVAL_S", "EmbeddedWorker", "start_embedded_worker"]

logger = logging.getLogger(__name__)

EMBEDDED_POLLING_INTERVAL_S: Final = 0.05  # how often the worker looks at the in-memory queues (kombu's default: 1 s)
START_TIMEOUT_S: Final = 30.0  # seconds to wait for the consumer to be ready
STOP_TIMEOUT_S: Final = 30.0  # seconds to wait for the thread after asking for a warm shutdown


@dataclass
class EmbeddedWorker:
    """A running in-process worker. `stop()` asks for a warm shutdown (the job in progress finishes) and joins."""

    controller: WorkController
    thread: threading.Thread
    queues: tuple[str, ...]
    announcer: Announcer | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop consuming and wait up to `timeout_s` seconds for the thread. Raises RuntimeError if it does not end
        in time (a render longer than that is still running). Idempotent."""
        if self._stopped:
            return
        if self.announcer is not None:
            self.announcer.stop()  # it takes no new job from here on
        # The consumer loop checks this flag between messages (raising WorkerShutdown, a warm shutdown).
        worker_state.should_stop = 0
        try:
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                raise RuntimeError(f"the embedded worker did not stop within {timeout_s} s")
        finally:
            worker_state.should_stop = None
        self._stopped = True


def start_embedded_worker(
    settings: Settings,
    celery_app: Celery,
    deps: WorkerDeps,
    *,
    queues: list[str] | None = None,
    warm: bool = True,
    hostname: str = "embedded@localhost",
    start_timeout_s: float = START_TIMEOUT_S,
    announce: bool = True,
) -> EmbeddedWorker:
    """Start a worker thread consuming `queues` (default: those of every servable model, followed as models
    appear), announced in `deps.db` while it runs unless `announce` is False.

    `celery_app` must come from `worker.tasks.create_worker_app`; `deps` are used as they are (no factory call).
    With `warm`, the default model is loaded before the consumer starts. Returns once the consumer is ready.
    Raises RuntimeError when the worker does not start within `start_timeout_s` seconds (or dies starting).
    """
    deps_holder(celery_app).set(deps)
    if warm:
        warm_up(deps)
    chosen = tuple(queues or queues_for_models(servable_model_names(settings), settings))
    if str(settings.redis_url or celery_app.conf.broker_url).startswith("memory://"):
        # The in-memory transport polls; a short interval keeps interactive jobs from waiting up to a second.
        options = dict(celery_app.conf.broker_transport_options or {})
        options.setdefault("polling_interval", EMBEDDED_POLLING_INTERVAL_S)
        celery_app.conf.broker_transport_options = options
    celery_app.finalize()
    ready = threading.Event()
    failure: list[BaseException] = []
    consumers: list[Any] = []

    def on_ready(consumer: Any) -> None:
        consumers.append(consumer)
        ready.set()

    controller = WorkController(
        app=celery_app,
        hostname=hostname,
        pool="solo",
        concurrency=1,
        prefetch_multiplier=1,
        queues=list(chosen),
        ready_callback=on_ready,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel=logging.WARNING,
    )

    def run() -> None:
        try:
            # The solo pool looks tasks up in the current app, which Celery keeps per thread: make it ours here
            # (and only here, so the caller's thread keeps its own).
            celery_app.set_current()
            controller.start()
        except BaseException as exc:  # report a failed start to the waiting caller, then end the thread
            failure.append(exc)
        finally:
            ready.set()  # wakes the caller if the worker ended before it was ready

    thread = threading.Thread(target=run, name="rf-embedded-worker", daemon=True)
    thread.start()
    if not ready.wait(start_timeout_s) or not thread.is_alive():
        worker_state.should_stop = 0
        thread.join(5.0)
        worker_state.should_stop = None
        raise RuntimeError(f"the embedded worker did not start: {failure[0] if failure else 'timed out'}")
    logger.info("embedded worker consuming %s", ", ".join(chosen))
    announcer = None
    if announce:
        device = pick_device(None).type
        announcer = Announcer(
            deps.db,
            settings,
            hostname=hostname,
            device=device,
            consuming=chosen,
            add_queue=None if queues else consumer_queue_adder(consumers[0]),
            status=status_provider(lambda: deps, device),
        )
        announcer.start()
    return EmbeddedWorker(controller=controller, thread=thread, queues=chosen, announcer=announcer)
