"""The render task through a real Celery worker: the embedded in-process worker on a `memory://` broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.config import Settings
from shared.db import Database, JobRow
from shared.queueing import EMBEDDED_BROKER_URL, make_celery_app, publish_render, queue_name
from shared.states import JobState
from tests.waiting import wait_until
from tests.worker.conftest import Submitter
from worker.deps import WorkerDeps
from worker.embedded import EmbeddedWorker, start_embedded_worker
from worker.tasks import create_worker_app, deps_holder

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE_S = 60.0


def wait_for_state(db: Database, row: JobRow, states: set[JobState]) -> JobRow:
    """Poll the job row until it reaches one of `states`, or fail at the deadline."""

    def reached() -> JobRow | None:
        job = db.jobs.get_by_id(row.id)
        return job if job.state in states else None

    return wait_until(reached, DEADLINE_S, f"job {row.id} to reach {sorted(states)}", max_interval=0.25)


@pytest.fixture
def embedded(settings: Settings, deps: WorkerDeps) -> Iterator[EmbeddedWorker]:
    assert settings.embedded  # no Redis URL: the broker is kombu's in-process memory:// transport
    app = create_worker_app(settings, lambda: deps)
    assert app.conf.broker_url == EMBEDDED_BROKER_URL
    worker = start_embedded_worker(settings, app, deps)
    assert deps_holder(app).current is deps
    yield worker
    worker.stop()
    assert not worker.alive


def test_a_published_job_is_rendered_by_the_embedded_worker(
    embedded: EmbeddedWorker, settings: Settings, db: Database, submit: Submitter
) -> None:
    publisher = make_celery_app(settings)  # the scheduler's own app: a different object, the same in-memory broker
    rows = [submit(seed=1), submit(seed=2, batch_size=2)]
    for row in rows:
        publish_render(publisher, row.id, row.attempt, queue_name(None, batch=False))
    for queue in {row.queue for row in rows}:
        db.outbox.claim_dispatch(queue, 1_000_000)  # marks those the worker has not claimed yet (any window)

    done = [wait_for_state(db, row, {JobState.SUCCEEDED, JobState.FAILED}) for row in rows]

    assert [job.state for job in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert [len(db.jobs.artifacts_of(row.id)) for row in rows] == [1, 2]


def test_a_duplicate_message_is_acked_without_a_second_run(
    embedded: EmbeddedWorker, settings: Settings, db: Database, submit: Submitter
) -> None:
    publisher = make_celery_app(settings)
    row = submit()
    publish_render(publisher, row.id, 0, queue_name(None, batch=True))
    wait_for_state(db, row, {JobState.SUCCEEDED})
    # The same job published again (a reconciler re-publish): the claim finds it finished and the message is acked.
    publisher.send_task(
        "renderfarm.render_job", args=[str(row.id), 0], task_id=f"{row.id}:0-dup", queue=queue_name(None, batch=True)
    )
    marker = submit()
    publish_render(publisher, marker.id, 0, queue_name(None, batch=True))
    wait_for_state(db, marker, {JobState.SUCCEEDED})  # consumed after the duplicate, so it was processed

    job = db.jobs.get_by_id(row.id)
    assert (job.state, job.attempt) == (JobState.SUCCEEDED, 1)
