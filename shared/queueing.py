"""The Celery contract between scheduler and worker: the app's settings, queue names and the render message.

The scheduler never imports the worker: it publishes a message naming `RENDER_TASK` with the job's database id and
attempt; the worker registers a task under that name. Settings follow docs/reliability.md, each with its reason.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from celery import Celery

from shared.config import Settings

RENDER_TASK = "renderfarm.render_job"
QUEUE_PREFIX = "rf"
INTERACTIVE_TIER = "interactive"  # single jobs: a person or a program is waiting
BATCH_TIER = "batch"  # children of POST /v1/batches
DEFAULT_FAMILY = "default"  # jobs for the farm's default model
EMBEDDED_BROKER_URL = "memory://"  # kombu's in-process transport: the embedded worker lives in the API process
VISIBILITY_TIMEOUT_FACTOR = 3  # reliability.md: about 3 × the longest job deadline

_FAMILY_RE = re.compile(r"[^a-z0-9]+")


def model_family(model: str | None) -> str:
    """A queue-safe name for the model a job needs (workers subscribe to the families they can serve)."""
    if not model:
        return DEFAULT_FAMILY
    slug = _FAMILY_RE.sub("-", model.rsplit("/", 1)[-1].lower()).strip("-")
    return slug[:48] or DEFAULT_FAMILY


def queue_name(model: str | None, *, batch: bool) -> str:
    """`rf.<family>.<tier>`: one queue per model family and priority tier (architecture.md)."""
    return f"{QUEUE_PREFIX}.{model_family(model)}.{BATCH_TIER if batch else INTERACTIVE_TIER}"


def message_id(job_id: uuid.UUID, attempt: int) -> str:
    """The Celery task id of one delivery: `{uuid}:{attempt}` (deduplication is the jobs row's job, not Celery's)."""
    return f"{job_id}:{attempt}"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings of reliability.md, for both sides."""
    visibility_timeout = int(VISIBILITY_TIMEOUT_FACTOR * settings.job_deadline_max_s)
    transport_options = {"visibility_timeout": visibility_timeout}
    return {
        "broker_url": settings.redis_url or EMBEDDED_BROKER_URL,
        # Ack after the task returns: a worker that dies mid-render gets its job redelivered; the conditional claim
        # and the fenced commit make the task idempotent.
        "task_acks_late": True,
        # Otherwise a killed worker's message is acked on purpose; loops are stopped by the attempt counter.
        "task_reject_on_worker_lost": True,
        # A worker holds only the job it runs, so queue depth is real for the autoscaler.
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        # kombu re-queues unacked messages older than this even if the worker is alive: about 3 × the longest job.
        "broker_transport_options": transport_options,
        "result_backend_transport_options": transport_options,
        "visibility_timeout": visibility_timeout,
        # A broker reconnect must not run a job twice: cancel what runs, let the redelivery decide.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_s,
        # The farm's state lives in the database; Celery's result backend is never used for status.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_default_queue": queue_name(None, batch=False),
        "task_create_missing_queues": True,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def make_celery_app(settings: Settings, *, name: str = "renderfarm") -> Celery:
    """A Celery app configured for the farm. The worker adds its task; the scheduler only publishes."""
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def publish_render(app: Celery, job_id: uuid.UUID, attempt: int, queue: str) -> None:
    """Send one render message. Raises kombu/redis errors when the broker is unreachable (the caller keeps the job
    undispatched and the reconciler publishes it later)."""
    app.send_task(
        RENDER_TASK,
        args=[str(job_id), attempt],
        task_id=message_id(job_id, attempt),
        queue=queue,
        ignore_result=True,
        retry=False,  # a failed publish is the outbox's problem, not a blocking retry loop in the request
    )
