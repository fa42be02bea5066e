"""The thin Celery side of the worker: one task, `renderfarm.render_job`, that calls `worker.job_runner.run_job`.

- The task is `acks_late` (from `shared.queueing.celery_config`): the message is acked after the job's outcome is in
  the database, so a worker that dies mid-render gets the job delivered again (the claim makes that safe).
- It never raises for a job-level failure (that is recorded in the job row; raising would only make Celery log
  it). It raises `Reject(requeue=True)` only when the database could not be reached for the claim: nothing
  changed, and another delivery is right.
- Dependencies (database engine, storage client, Redis, the model cache) are built once per worker process,
  after any fork (reliability.md: CUDA and sockets do not survive a fork): when the worker starts
  (`worker_init` for pools that do not fork, `worker_process_init` in each forked child), including a warm load of
  the default model, so the first job does not pay for it. A build that fails there is retried at the first task.
- On SIGTERM (`worker_shutting_down`) the running render stops early and is re-queued if it could not finish within
  the soft shutdown time; after repeated out-of-memory jobs the worker shuts itself down (a fresh process has a
  clean CUDA context).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import torch
from celery import Celery, Task, signals
from celery.exceptions import Reject, WorkerShutdown

from shared.backoff import backoff_delay
from shared.config import Settings
from shared.db import Database
from shared.errors import DatabaseUnavailable
from shared.live import open_live_status
from shared.queueing import RENDER_TASK, make_celery_app
from shared.storage import open_storage
from worker.deps import Engine, WorkerDeps
from worker.engine.models import LoadedModel, pick_device
from worker.engine.processing import process_images
from worker.job_runner import run_job
from worker.metrics import WORKER_METRICS
from worker.model_cache import ModelCache
from worker.model_files import load_named_model
from worker.standin import standin_from_env

__all__ = [
    "CLAIM_RETRY_DELAY_S",
    "DepsHolder",
    "build_worker_deps",
    "create_worker_app",
    "default_cache_bytes",
    "deps_holder",
    "warm_up",
]

logger = logging.getLogger(__name__)

CLAIM_RETRY_DELAY_S: Final = 2.0  # first pause before handing back a message whose claim hit a database outage (s)
CLAIM_RETRY_MAX_S: Final = 30.0  # the pause doubles (jittered) with each claim in a row that fails, up to this (s)
CPU_CACHE_BYTES: Final = 8 * 1024**3  # model weights kept loaded on a CPU worker (bytes)
GPU_CACHE_SHARE: Final = 0.6  # share of GPU memory for kept weights; the rest is for activations


def default_cache_bytes(device: torch.device) -> int:
    """How many bytes of model weights a worker keeps loaded on `device`."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return max(1, int(total * GPU_CACHE_SHARE))
    return CPU_CACHE_BYTES


def build_worker_deps(
    settings: Settings,
    *,
    device: str | None = None,
    worker_name: str | None = None,
    engine: Engine | None = None,
) -> WorkerDeps:
    """The production dependencies from the settings: database, storage, live status, a model cache on `device`.

    The engine is the real `process_images`, or the stand-in when RENDERFARM_STANDIN_STEP_S is set. Raises
    ConfigError for unusable settings.
    """
    target = pick_device(device)
    models_dir = settings.models_dir
    tiny_dir = settings.data_dir / "models"

    def loader(name: str) -> LoadedModel:
        # Any prompts-and-models.md §8.2 alias, in the webui's models folder layout or the flat one
        # (worker/model_files.py).
        return load_named_model(
            name, device=target, models_dir=models_dir, data_dir=settings.data_dir, tiny_dir=tiny_dir
        )

    return WorkerDeps(
        settings=settings,
        db=Database.from_url(settings.resolved_database_url),
        storage=open_storage(settings),
        live=open_live_status(settings.redis_url),
        models=ModelCache(default_cache_bytes(target), loader=WORKER_METRICS.instrument_loader(loader)),
        worker_name=worker_name or f"{os.getpid()}@{socket.gethostname()}",
        engine=engine or standin_from_env() or process_images,
    )


def warm_up(deps: WorkerDeps) -> None:
    """Load the farm's default model now, so the first job does not pay for it. Logs (never raises) on failure:
    the job that needs the model will record the error."""
    start = time.perf_counter()
    try:
        deps.models.get(deps.settings.model)
    except Exception as exc:  # a broken default model must not stop the worker from serving other models
        logger.error("warm-up of model %r failed: %s", deps.settings.model, exc)
        return
    logger.info("model %r loaded in %.2f s", deps.settings.model, time.perf_counter() - start)


class DepsHolder:
    """The worker process's dependencies, built once per process (a fork gets its own), thread-safe."""

    def __init__(self, factory: Callable[[], WorkerDeps], *, warm: bool = True) -> None:
        self._factory = factory
        self._warm = warm
        self._deps: WorkerDeps | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.started_in_worker = False  # set by worker_init: this app is being run as a worker here

    def set(self, deps: WorkerDeps) -> None:
        """Use these dependencies in this process (the embedded worker passes its own)."""
        with self._lock:
            self._deps, self._pid = deps, os.getpid()

    def get(self) -> WorkerDeps:
        """This process's dependencies, built (and warmed up) on first use. Raises what the factory raises."""
        with self._lock:
            if self._deps is None or self._pid != os.getpid():
                deps = self._factory()
                if self._warm:
                    warm_up(deps)
                self._deps, self._pid = deps, os.getpid()
            return self._deps

    @property
    def current(self) -> WorkerDeps | None:
        """The dependencies if built in this process, else None (never builds)."""
        return self._deps if self._deps is not None and self._pid == os.getpid() else None


_HOLDER_ATTR = "_renderfarm_deps"


def deps_holder(app: Celery) -> DepsHolder:
    """The DepsHolder of an app made by `create_worker_app`. Raises LookupError for any other app."""
    holder = getattr(app, _HOLDER_ATTR, None)
    if not isinstance(holder, DepsHolder):
        raise LookupError(f"{app!r} was not made by worker.tasks.create_worker_app")
    return holder


def create_worker_app(settings: Settings, deps_factory: Callable[[], WorkerDeps], *, warm: bool = True) -> Celery:
    """A Celery app with the render task registered and the process-start hooks that build its dependencies.

    `deps_factory` is called once per worker process (after fork); with `warm`, the default model is loaded then.
    """
    app = make_celery_app(settings, name="renderfarm-worker")
    holder = DepsHolder(deps_factory, warm=warm)
    setattr(app, _HOLDER_ATTR, holder)
    claim_failures = [0]  # claims in a row that met a database outage (one task at a time per process)

    # shared=False: otherwise Celery registers the task on every app made later in this process (the scheduler's too).
    @app.task(name=RENDER_TASK, bind=True, acks_late=app.conf.task_acks_late, ignore_result=True, shared=False)
    def render_job(self: Task, job_id: str, attempt: int) -> str:
        try:
            job_uuid = uuid.UUID(str(job_id))
            delivered = int(attempt)
        except (TypeError, ValueError):
            # A message no scheduler of ours sends: redelivering it cannot help.
            logger.error("render message with a malformed job id %r / attempt %r; dropped", job_id, attempt)
            return "skipped"
        try:
            deps = holder.get()
            outcome = run_job(job_uuid, delivered, deps)
        except DatabaseUnavailable as exc:
            # Nothing was claimed (not an attempt); pause, longer with each failure in a row, so that a database
            # outage does not become a hot redelivery loop.
            claim_failures[0] += 1
            pause = backoff_delay(claim_failures[0], CLAIM_RETRY_DELAY_S, CLAIM_RETRY_MAX_S)
            logger.warning(
                "job %s: database unavailable at claim (%s); handing the message back in %.1f s", job_id, exc, pause
            )
            time.sleep(pause)
            raise Reject(str(exc), requeue=True) from exc
        claim_failures[0] = 0
        logger.info("%s", outcome.summary())
        if deps.stats.unhealthy and torch.cuda.is_available():
            logger.critical("%d jobs in a row ran out of GPU memory; stopping this worker", deps.stats.consecutive_ooms)
            raise WorkerShutdown(1)
        return outcome.state

    # Signal receivers are kept alive by the app (signals hold weak references), and act only for this app.
    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        holder.started_in_worker = True
        pool = getattr(sender, "pool_cls", "")
        pool_name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
        if not str(pool_name).endswith(("prefork", "processes")):
            # No fork follows: build now, in the process that will run the tasks.
            _build_quietly(holder)

    def on_process_init(**_: Any) -> None:
        if holder.started_in_worker and holder.current is None:
            _build_quietly(holder)

    def on_shutting_down(**_: Any) -> None:
        deps = holder.current
        if deps is not None:
            deps.stats.start_draining(deps.clock())

    app._renderfarm_receivers = (on_worker_init, on_process_init, on_shutting_down)
    signals.worker_init.connect(on_worker_init)
    signals.worker_process_init.connect(on_process_init)
    signals.worker_shutting_down.connect(on_shutting_down)
    return app


def _build_quietly(holder: DepsHolder) -> None:
    try:
        holder.get()
    except Exception:  # logged here; the first task builds again and then fails loudly
        logger.exception("building the worker's dependencies failed; retrying at the first task")
