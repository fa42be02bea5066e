"""Retention and purge (docs/api.md "Retention"), in both configurations (SQLite + local folder; PostgreSQL + S3).

Two tenants with different retention settings: alice keeps results 1 day, inputs 1 day and job rows 5 days; bob,
at the farm's defaults, keeps results and inputs 30 days and job rows 60. The purge is run as of a moment days
ahead (its `now`), so nothing waits for a real clock. It removes exactly the right stored objects and rows and
nothing else: not a queued job, not a job of a batch that still runs, not an asset a queued job names, nothing of
bob's. A purged job answers 410 with when it was purged; a dry run changes nothing and reports what it would do.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scheduler.purge import PurgeReport, purge_once
from shared.db import Database
from shared.db.tables import artifacts, assets, jobs, purged_jobs
from shared.states import JobState
from shared.storage import Storage
from tests.api.conftest import ALICE, ALICE_TOKEN, BOB, Farm, FarmFactory, job_body, png_bytes, put_job, upload

RETENTION = {
    "tenant_retention": "alice:results=1:inputs=1:jobs=5",
    "retention_results_days": 30,
    "retention_inputs_days": 30,
    "retention_jobs_days": 60,
}


def everything(db: Database, storage: Storage) -> dict[str, Any]:
    """Every stored key and every row of the tables the purge touches, to compare before and after."""
    engine = db._tx.engine
    with engine.connect() as conn:
        rows = {
            table.name: sorted(tuple(str(value) for value in row) for row in conn.execute(sa.select(table)))
            for table in (jobs, artifacts, assets, purged_jobs)
        }
    return {"keys": sorted(storage.list("")), **rows}


def stored_keys(storage: Storage, prefix: str) -> set[str]:
    return set(storage.list(prefix))


def setup_jobs(farm: Farm) -> dict[str, Any]:
    kept_input = upload(farm, png_bytes(color=(1, 2, 3)))
    old_input = upload(farm, png_bytes(color=(4, 5, 6)))
    bob_input = upload(farm, png_bytes(color=(7, 8, 9)), BOB)
    for task_id, headers, image in (("a-done", ALICE, old_input), ("b-done", BOB, bob_input)):
        assert put_job(farm, task_id, job_body(image["asset_id"]), headers).status_code == 201
    # alice's queued job names `kept_input`: neither it nor the asset may go.
    assert put_job(farm, "a-queued", job_body(kept_input["asset_id"])).status_code == 201
    farm.succeed_with_artifacts("alice", "a-done")
    farm.succeed_with_artifacts("bob", "b-done")
    # A batch of two: one finished, one still queued. The finished one waits for its batch.
    batch = farm.client.post(
        "/v1/batches",
        json={"jobs": [job_body(kept_input["asset_id"], seed=1), job_body(kept_input["asset_id"], seed=2)]},
        headers=ALICE,
    )
    assert batch.status_code == 201, batch.text
    first, second = batch.json()["task_ids"]
    farm.succeed_with_artifacts("alice", first)
    return {"kept": kept_input, "old": old_input, "bob": bob_input, "batch": (first, second)}


def feed_events(farm: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The tenant's event feed from the start (`GET /v1/events`)."""
    feed = farm.client.get("/v1/events", params={"limit": 500}, headers=headers)
    assert feed.status_code == 200, feed.text
    events: list[dict[str, Any]] = feed.json()["events"]
    return events


def event_task_ids(farm: Any, headers: dict[str, str]) -> set[str]:
    """The task ids the tenant's event feed names (`GET /v1/events`, from the start)."""
    return {event["data"].get("task_id") for event in feed_events(farm, headers)}


def test_purge_follows_each_tenants_retention(make_farm: FarmFactory) -> None:
    farm = make_farm(**RETENTION)
    made = setup_jobs(farm)
    batch_done, batch_queued = made["batch"]
    policy = farm.settings.retention_policy()
    now = datetime.now(UTC)

    # A day and a half on: alice's results and her unused input are due; nothing of bob's.
    later = now + timedelta(days=1.5)
    before = everything(farm.db, farm.storage)
    dry = purge_once(farm.db, farm.storage, policy, limit=100, dry_run=True, now=lambda: later)
    assert dry.dry_run
    assert dry.results == ["alice/a-done"]
    assert dry.jobs == []
    assert dry.inputs == [f"alice/{made['old']['sha256']}"]
    assert dry.objects == 3  # result and mask of a-done, and the input
    assert everything(farm.db, farm.storage) == before  # a dry run changes nothing

    report = purge_once(farm.db, farm.storage, policy, limit=100, now=lambda: later)
    assert dataclasses.replace(report, dry_run=True) == dry  # it did what the dry run said
    assert stored_keys(farm.storage, "alice/a-done/") == set()
    assert farm.db.jobs.artifacts_of(farm.db.jobs.get("alice", "a-done").id) == []
    assert farm.db.jobs.get("alice", "a-done").results_purged_at is not None
    snapshot = farm.client.get("/v1/jobs/a-done", headers=ALICE)
    assert snapshot.status_code == 200  # the row stays until its own retention passes
    assert snapshot.json()["artifacts"] == []
    assert snapshot.json()["results_purged_at"] is not None
    assert farm.client.get(f"/v1/assets/{made['old']['asset_id']}", headers=ALICE).status_code == 404
    assert not farm.storage.exists(f"alice/~assets/{made['old']['sha256']}")
    # Everything else is as it was: bob's job, results and input; alice's queued job, its input, the batch.
    after = everything(farm.db, farm.storage)
    gone_keys = set(before["keys"]) - set(after["keys"])
    assert gone_keys == {key for key in before["keys"] if key.startswith("alice/a-done/")} | {
        f"alice/~assets/{made['old']['sha256']}"
    }
    assert set(after["keys"]) <= set(before["keys"])
    assert farm.client.get("/v1/jobs/b-done", headers=BOB).json()["artifacts"] != []
    assert farm.storage.exists(f"alice/~assets/{made['kept']['sha256']}")
    assert farm.db.jobs.get("alice", "a-queued").state is JobState.QUEUED
    assert len(farm.db.jobs.artifacts_of(farm.db.jobs.get("alice", batch_done).id)) == 2
    assert stored_keys(farm.storage, f"alice/{batch_done}/")
    # A pass with nothing due does nothing.
    assert purge_once(farm.db, farm.storage, policy, limit=100, now=lambda: later).empty

    # Six days on: alice's finished job row goes (a tombstone answers 410); bob's stays; the batch still waits.
    much_later = now + timedelta(days=6)
    assert "a-done" in event_task_ids(farm, ALICE)
    report = purge_once(farm.db, farm.storage, policy, limit=100, now=lambda: much_later)
    assert report.jobs == ["alice/a-done"]
    assert "a-done" not in event_task_ids(farm, ALICE)  # its events go with its row
    assert "b-done" in event_task_ids(farm, BOB)
    assert report.results == []
    gone = farm.client.get("/v1/jobs/a-done", headers=ALICE)
    assert gone.status_code == 410
    error = gone.json()["error"]
    assert (error["type"], error["code"]) == ("gone", "job_purged")
    purged_at = datetime.fromisoformat(error["purged_at"].replace("Z", "+00:00"))
    assert abs((purged_at - datetime.now(UTC)).total_seconds()) < 60  # when it was purged (the database's clock)
    assert farm.client.post("/v1/jobs/a-done/cancel", headers=ALICE).status_code == 410
    # UIs poll the A1111 progress of their task: a purged one reads as an unknown task there, as the webui's does.
    progress = farm.client.post("/internal/progress", json={"id_task": "a-done"}, headers=ALICE)
    assert progress.status_code == 200
    assert progress.json()["active"] is False
    assert farm.client.get("/v1/jobs/a-done", headers=BOB).status_code == 404  # another tenant's: not even 410
    assert farm.client.get("/v1/jobs/never-was", headers=ALICE).status_code == 404
    assert farm.client.get("/v1/jobs/b-done", headers=BOB).status_code == 200
    assert farm.db.jobs.get("alice", batch_done).state is JobState.SUCCEEDED

    # Once the batch has finished, its jobs follow the retention like any other, and the batch goes with its last
    # jobs: its batch.finished event too, and reading it answers 410 (a dry run says so first).
    farm.db.jobs.request_cancel("alice", batch_queued)
    batch_id = farm.db.jobs.get("alice", batch_done).batch_id
    assert farm.client.get(f"/v1/batches/{batch_id}", headers=ALICE).status_code == 200
    assert any(e["type"] == "batch.finished" for e in feed_events(farm, ALICE))
    dry = purge_once(farm.db, farm.storage, policy, limit=100, dry_run=True, now=lambda: much_later)
    assert dry.batches == [f"alice/{batch_id}"]
    report = purge_once(farm.db, farm.storage, policy, limit=100, now=lambda: much_later)
    assert dataclasses.replace(report, dry_run=True) == dry
    assert set(report.jobs) == {f"alice/{batch_done}", f"alice/{batch_queued}"}
    assert stored_keys(farm.storage, f"alice/{batch_done}/") == set()
    gone_batch = farm.client.get(f"/v1/batches/{batch_id}", headers=ALICE)
    assert gone_batch.status_code == 410
    assert gone_batch.json()["error"]["code"] == "batch_purged"
    assert farm.client.get(f"/v1/batches/{batch_id}", headers=BOB).status_code == 404
    assert not any(e["type"] == "batch.finished" for e in feed_events(farm, ALICE))
    # The dashboard says so too, rather than "not found".
    assert farm.client.post("/ui/signin", data={"token": ALICE_TOKEN}, follow_redirects=False).status_code == 303
    for page in (f"/ui/batches/{batch_id}", "/ui/jobs/a-done"):
        shown = farm.client.get(page)
        assert shown.status_code == 410, page
        assert 'data-testid="purged"' in shown.text
    farm.client.cookies.clear()
    # A purged task id can be used again: the new job is served, not the tombstone.
    again = put_job(farm, "a-done", job_body(made["kept"]["asset_id"]))
    assert again.status_code == 201, again.text
    assert farm.client.get("/v1/jobs/a-done", headers=ALICE).status_code == 200


def test_no_retention_purges_nothing_and_the_reconciler_purges_in_bounded_passes(make_farm: FarmFactory) -> None:
    plain = make_farm()
    assert not plain.settings.retention_policy().enabled
    assert purge_once(plain.db, plain.storage, plain.settings.retention_policy(), limit=100) == PurgeReport(
        dry_run=False
    )

    farm = make_farm(retention_results_days=0, purge_batch_size=2)
    for index in range(3):
        assert put_job(farm, f"j{index}", job_body(upload(farm, png_bytes())["asset_id"])).status_code in (200, 201)
        farm.succeed_with_artifacts("alice", f"j{index}")
    from scheduler.reconciler import Reconciler

    reconciler = Reconciler(farm.db, farm.live, farm.settings, storage=farm.storage)
    first = reconciler.run_once().purge
    assert first is not None
    assert len(first.results) == 2
    second = reconciler.run_once().purge
    assert second is not None
    assert len(second.results) == 1
    assert not any(key.startswith("alice/j") for key in farm.storage.list("alice/"))
