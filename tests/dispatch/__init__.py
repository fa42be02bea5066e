"""Helpers of the dispatcher and reconciler tests: jobs the way the API makes them and the broker's view (the
databases and the clock are tests.databases').

The broker is real Redis: kombu's Redis transport keeps a queue as a Redis list named like the queue (LPUSH to
publish, BRPOP to consume, so the oldest message is at the right end), each item a JSON message whose
`headers.id` is the Celery task id. Reading that list shows exactly what was published, with no worker running.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import redis

from shared.config import Settings
from shared.db import Database, JobRow, NewJob
from shared.queueing import queue_name

LEASE_S = 60.0
QUEUE = queue_name("tiny", batch=False)
OTHER_QUEUE = queue_name("tiny", batch=True)
EVENT_TIMEOUT_S = 30.0  # generous: only reached when the behaviour under test is broken


def cluster_settings(redis_url: str, database_url: str | None = None, **overrides: Any) -> Settings:
    """Settings whose broker and live status are the test's isolated Redis database."""
    return Settings(redis_url=redis_url, database_url=database_url, _env_file=None, **overrides)


_counter = itertools.count()


def submit(
    db: Database,
    count: int = 1,
    *,
    tenant: str = "alice",
    priority: int = 0,
    queue: str = QUEUE,
    max_attempts: int = 3,
) -> list[JobRow]:
    """Insert `count` queued jobs the way the API does (undispatched)."""
    created: list[JobRow] = []
    for _ in range(count):
        task_id = f"task({next(_counter)})"
        request = {"prompt": task_id, "steps": 4}
        request_hash = hashlib.sha256(task_id.encode()).hexdigest()
        job, was_created = db.jobs.create_or_get(
            tenant,
            NewJob(
                task_id,
                request,
                request_hash,
                priority=priority,
                queue=queue,
                model="tiny",
                max_attempts=max_attempts,
                total_steps=4,
            ),
        )
        assert was_created
        created.append(job)
    return created


def broker_messages(client: redis.Redis, queue: str = QUEUE) -> list[dict[str, Any]]:
    """The messages waiting in `queue`, oldest (first published) first."""
    raw = client.lrange(queue, 0, -1)
    return [json.loads(item) for item in reversed(raw)]  # type: ignore[arg-type]


def broker_ids(client: redis.Redis, queue: str = QUEUE) -> list[str]:
    """The Celery task ids waiting in `queue`, first published first."""
    return [message["headers"]["id"] for message in broker_messages(client, queue)]


def take_message(client: redis.Redis, queue: str = QUEUE) -> str | None:
    """Consume the oldest message of `queue` like a worker would; returns its task id (None: queue empty)."""
    raw = client.rpop(queue)
    return None if raw is None else str(json.loads(raw)["headers"]["id"])  # type: ignore[arg-type]
