"""The Celery task when the database is down at the claim: the message goes back, after a pause that grows with each
failure in a row (issue 15, finding 1: an outage must not become a hot redelivery loop). A real Celery app and a
database URL whose port nobody listens on; the pauses are recorded instead of slept."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from celery.exceptions import Reject

from shared.backoff import JITTER_LOW, nominal_delay
from shared.config import Settings
from shared.db import Database
from shared.queueing import RENDER_TASK
from tests.processes import free_loopback_port
from worker import tasks
from worker.deps import WorkerDeps

pytestmark = pytest.mark.integration


def test_a_claim_during_a_database_outage_hands_the_message_back_after_a_growing_pause(
    deps: WorkerDeps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreachable = Database.from_url(f"postgresql+psycopg://postgres@127.0.0.1:{free_loopback_port()}/none")
    down = replace(deps, db=unreachable)
    pauses: list[float] = []
    monkeypatch.setattr(tasks.time, "sleep", pauses.append)
    app = tasks.create_worker_app(Settings(_env_file=None, data_dir=tmp_path), lambda: down, warm=False)
    try:
        task = app.tasks[RENDER_TASK]
        for _ in range(4):
            with pytest.raises(Reject):
                task.run(str(uuid.uuid4()), 0)
    finally:
        app.close()
        unreachable.close()

    for failures, pause in enumerate(pauses, start=1):
        nominal = nominal_delay(failures, tasks.CLAIM_RETRY_DELAY_S, tasks.CLAIM_RETRY_MAX_S)
        assert JITTER_LOW * nominal <= pause <= nominal
    assert len(pauses) == 4
    assert pauses[3] > pauses[0]  # 2 s then 16 s nominal: at least 8 s against at most 2 s
