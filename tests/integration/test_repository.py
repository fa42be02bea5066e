"""The database operations (shared.db.Database) against real databases: every test runs on SQLite (a migrated temp
file) and PostgreSQL."""

from __future__ import annotations

import hashlib
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared.db import (
    ArtifactRecord,
    Database,
    JobError,
    JobRow,
    NewJob,
    QueueCounts,
    head_revision,
    make_engine,
)
from shared.db.ids import new_id
from shared.errors import Conflict, DatabaseUnavailable, InputError, LeaseLost, NotFound
from shared.states import ALLOWED_TRANSITIONS, JobState
from tests.clock import FakeClock
from tests.databases import attempt_of, in_flight, insert_batch, prepare_database
from tests.dispatch import LEASE_S

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind (PostgreSQL: one database per session keeps the suite fast)."""
    postgres_url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return prepare_database(request.param, tmp_path, postgres_url)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(engine: sa.Engine, clock: FakeClock) -> Database:
    return Database(engine, clock=clock)


def request_of(prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, "steps": 4, "denoising_strength": 0.75}


def hash_of(request: dict[str, Any]) -> str:
    return hashlib.sha256(repr(sorted(request.items())).encode()).hexdigest()


_counter = itertools.count()


def new_job(
    db: Database,
    *,
    tenant: str = "alice",
    task_id: str | None = None,
    priority: int = 0,
    queue: str = "default",
    max_attempts: int = 3,
    batch_id: uuid.UUID | None = None,
) -> JobRow:
    task_id = task_id or f"task({next(_counter)})"
    request = request_of(task_id)
    job, created = db.jobs.create_or_get(
        tenant,
        NewJob(
            task_id, request, hash_of(request), priority=priority, queue=queue, max_attempts=max_attempts, total_steps=4
        ),
        batch_id=batch_id,
    )
    assert created
    return job


def artifact(index: int, kind: str = "result") -> ArtifactRecord:
    return ArtifactRecord(
        kind=kind,
        index=index,
        storage_key=f"alice/t/1/{kind}-{index}.png",
        sha256="ab" * 32,
        bytes=1234,
        width=64,
        height=48,
        seed=2**40 + index,
        infotext="a cat\nSteps: 4",
    )


ERROR = JobError(type="invalid_request", code="invalid", message="bad mask", field="mask")


# ----------------------------------------------------------------------------------------------------------------
# Create or get


def test_create_or_get_returns_the_same_job_for_the_same_request(db: Database) -> None:
    request = request_of("a cat")
    first, created = db.jobs.create_or_get(
        "alice",
        NewJob("task(img2img-1)", request, hash_of(request), queue="q", max_attempts=3, priority=5, model="tiny"),
    )
    assert created
    assert first.state is JobState.QUEUED
    assert (first.attempt, first.seq, first.priority, first.model, first.queue) == (0, 1, 5, "tiny", "q")
    assert first.request == request
    assert first.dispatched_at is None
    assert first.created_at.tzinfo is not None
    assert first.message_id == f"{first.id}:0"

    again, created = db.jobs.create_or_get(
        "alice", NewJob("task(img2img-1)", request, hash_of(request), queue="q", max_attempts=3, priority=5)
    )
    assert not created
    assert again == first


def test_create_or_get_with_a_different_request_is_a_conflict_naming_both_hashes(db: Database) -> None:
    first = new_job(db, task_id="same-id")
    other = request_of("a dog")
    with pytest.raises(Conflict) as caught:
        db.jobs.create_or_get("alice", NewJob("same-id", other, hash_of(other), queue="default", max_attempts=3))
    assert caught.value.code == "task_id_conflict"
    assert first.request_hash in caught.value.message
    assert hash_of(other) in caught.value.message
    assert db.jobs.get("alice", "same-id") == first


def test_concurrent_create_or_get_inserts_one_job(db: Database) -> None:
    request = request_of("race")
    results: list[tuple[JobRow, bool]] = []
    barrier = threading.Barrier(4)

    def submit() -> None:
        barrier.wait()
        results.append(
            db.jobs.create_or_get("alice", NewJob("racy", request, hash_of(request), queue="default", max_attempts=3))
        )

    run_threads(submit, 4)
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1


def test_task_id_longer_than_128_characters_is_refused(db: Database) -> None:
    with pytest.raises(InputError):
        new_job(db, task_id="x" * 129)
    assert new_job(db, task_id="x" * 128).task_id == "x" * 128


# ----------------------------------------------------------------------------------------------------------------
# Transitions


def drive_to(db: Database, state: JobState) -> JobRow:
    """A new job brought into `state` through the database's own operations."""
    job = new_job(db)
    if state is JobState.QUEUED:
        return job
    if state is JobState.CANCELED:
        return db.jobs.request_cancel(job.tenant, job.task_id)
    if state is JobState.FAILED:
        failed = db.leases.fail(job.id, None, ERROR)
        assert failed is not None
        return failed
    claimed = db.leases.claim(job.id, "gpu-0", LEASE_S)
    assert claimed is not None
    attempt = claimed.attempt
    assert attempt == 1
    if state is JobState.RUNNING:
        return db.jobs.get_by_id(job.id)
    assert state is JobState.SUCCEEDED
    return db.leases.succeed(job.id, attempt, [artifact(0)])


@pytest.mark.parametrize("source", list(JobState))
def test_every_allowed_transition_works_and_every_other_is_refused(db: Database, source: JobState) -> None:
    for target in JobState:
        job = drive_to(db, source)
        assert job.state is source
        changed = db.leases.transition(job.id, target)
        after = db.jobs.get_by_id(job.id)
        if target in ALLOWED_TRANSITIONS[source]:
            assert changed, f"{source} -> {target} was refused"
            assert after.state is target
            assert after.seq == job.seq + 1
            assert after.updated_at >= job.updated_at
            if target.is_terminal:
                assert after.finished_at is not None
            if target is JobState.QUEUED:
                assert (after.dispatched_at, after.worker, after.lease_until) == (None, None, None)
        else:
            assert not changed, f"{source} -> {target} was allowed"
            assert after == job


def test_the_transition_table_is_covered() -> None:
    pairs = [(s, t) for s, targets in ALLOWED_TRANSITIONS.items() for t in targets]
    assert len(pairs) == 7  # queued -> 3, running -> 4: a change to the table should be noticed here


def test_transition_fenced_by_attempt(db: Database) -> None:
    job = drive_to(db, JobState.RUNNING)
    assert not db.leases.transition(job.id, JobState.FAILED, expected_attempt=2)
    assert db.leases.transition(job.id, JobState.FAILED, expected_attempt=1, error=ERROR)
    failed = db.jobs.get_by_id(job.id)
    assert failed.error == ERROR


def test_transition_refuses_protected_columns_and_wider_sources(db: Database) -> None:
    job = new_job(db)
    with pytest.raises(ValueError, match="seq"):
        db.leases.transition(job.id, JobState.CANCELED, seq=99)
    with pytest.raises(ValueError, match="not an allowed transition"):
        db.leases.transition(job.id, JobState.QUEUED, from_states=frozenset({JobState.SUCCEEDED}))


# ----------------------------------------------------------------------------------------------------------------
# Claim, lease, succeed, fail


def run_threads(target: Callable[[], None], count: int) -> None:
    errors: list[BaseException] = []

    def wrapped() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrapped) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def claim_concurrently(db: Database, job_id: uuid.UUID, workers: int) -> list[int | None]:
    """`workers` threads, each on its own pooled connection, claim the job at the same moment."""
    barrier = threading.Barrier(workers)
    results: list[int | None] = []
    lock = threading.Lock()

    def claim() -> None:
        barrier.wait()
        claimed = db.leases.claim(job_id, f"gpu-{threading.get_ident()}", LEASE_S)
        attempt = None if claimed is None else claimed.attempt
        with lock:
            results.append(attempt)

    run_threads(claim, workers)
    return results


def test_concurrent_claims_have_exactly_one_winner(db: Database) -> None:
    workers = 4
    for _round in range(15):
        job = new_job(db)
        results = claim_concurrently(db, job.id, workers)
        assert sorted(results, key=lambda attempt: attempt or 0) == [None] * (workers - 1) + [1]
        assert db.jobs.get_by_id(job.id).attempt == 1


def test_claim_sets_lease_worker_and_attempt(db: Database, clock: FakeClock) -> None:
    job = new_job(db)
    assert attempt_of(db.leases.claim(job.id, "gpu-7", 30.0)) == 1
    running = db.jobs.get_by_id(job.id)
    assert running.state is JobState.RUNNING
    assert running.worker == "gpu-7"
    assert running.started_at == clock.now
    assert running.lease_until == clock.now + timedelta(seconds=30)
    assert running.message_id == f"{job.id}:1"
    assert db.leases.claim(job.id, "gpu-8", 30.0) is None  # a duplicate delivery
    assert db.leases.claim(uuid.uuid4(), "gpu-8", 30.0) is None


def test_renew_lease_is_fenced_and_reports_cancel(db: Database, clock: FakeClock) -> None:
    job = drive_to(db, JobState.RUNNING)
    clock.advance(10)
    status = db.leases.renew_lease(job.id, 1, 120.0)
    assert (status.held, status.cancel_requested) == (True, False)
    assert db.jobs.get_by_id(job.id).lease_until == clock.now + timedelta(seconds=120)
    assert not db.leases.renew_lease(job.id, 2, 120.0).held
    db.jobs.request_cancel(job.tenant, job.task_id)
    status = db.leases.renew_lease(job.id, 1, 120.0)
    assert (status.held, status.cancel_requested) == (True, True)


def test_succeed_writes_artifacts_and_appends_warnings(db: Database) -> None:
    job = new_job(db)
    claimed = db.leases.claim(job.id, "gpu-0", LEASE_S)
    assert claimed is not None
    attempt = claimed.attempt
    assert attempt == 1
    records = [artifact(1), artifact(0), artifact(0, "mask"), artifact(0, "overlay")]
    done = db.leases.succeed(job.id, attempt, records, [{"code": "blank_mask", "message": "the mask was blank"}])
    assert done.state is JobState.SUCCEEDED
    assert done.finished_at is not None
    assert done.warnings == ({"code": "blank_mask", "message": "the mask was blank"},)
    stored = db.jobs.artifacts_of(job.id)
    assert [(a.kind, a.index) for a in stored] == [("result", 0), ("result", 1), ("overlay", 0), ("mask", 0)]
    first = stored[0]
    assert (first.attempt, first.seed, first.bytes, first.width, first.height) == (1, 2**40, 1234, 64, 48)
    assert first.infotext == "a cat\nSteps: 4"
    assert db.jobs.get_by_id(job.id) == done


def test_fenced_succeed_rejects_a_stale_attempt_and_writes_nothing(db: Database, clock: FakeClock) -> None:
    job = new_job(db)
    assert attempt_of(db.leases.claim(job.id, "gpu-old", LEASE_S)) == 1
    clock.advance(LEASE_S + 1)
    assert [j.state for j in db.leases.requeue_expired()] == [JobState.QUEUED]
    assert attempt_of(db.leases.claim(job.id, "gpu-new", LEASE_S)) == 2

    before = db.jobs.get_by_id(job.id)
    with pytest.raises(LeaseLost):
        db.leases.succeed(job.id, 1, [artifact(0), artifact(1)], [{"code": "w", "message": "m"}])
    assert db.jobs.artifacts_of(job.id) == []
    assert db.jobs.get_by_id(job.id) == before

    assert db.leases.succeed(job.id, 2, [artifact(0)]).state is JobState.SUCCEEDED
    assert [a.attempt for a in db.jobs.artifacts_of(job.id)] == [2]
    done = db.jobs.get_by_id(job.id)
    # A second commit of the same attempt (a retry after a reply lost in a database blip) is a no-op...
    assert db.leases.succeed(job.id, 2, [artifact(5)]) == done
    assert len(db.jobs.artifacts_of(job.id)) == 1
    with pytest.raises(LeaseLost):  # ...while the older attempt stays refused after the success too
        db.leases.succeed(job.id, 1, [artifact(0)])


def test_succeed_of_a_requeued_job_with_the_same_attempt_is_refused(db: Database, clock: FakeClock) -> None:
    job = drive_to(db, JobState.RUNNING)
    clock.advance(LEASE_S + 1)
    db.leases.requeue_expired()
    with pytest.raises(LeaseLost):
        db.leases.succeed(job.id, 1, [artifact(0)])
    assert db.leases.fail(job.id, 1, ERROR) is None
    assert db.jobs.get_by_id(job.id).state is JobState.QUEUED


def test_fail_with_and_without_attempt(db: Database) -> None:
    queued = new_job(db)
    failed = db.leases.fail(queued.id, None, {"type": "invalid_request", "code": "bad", "message": "no"})
    assert failed is not None
    assert failed.state is JobState.FAILED
    assert failed.error == JobError("invalid_request", "bad", "no")
    assert db.leases.fail(queued.id, None, ERROR) is None  # terminal stays terminal

    running = drive_to(db, JobState.RUNNING)
    assert db.leases.fail(running.id, 2, ERROR) is None
    failed = db.leases.fail(running.id, 1, ERROR)
    assert failed is not None
    assert failed.error == ERROR


# ----------------------------------------------------------------------------------------------------------------
# Cancel


def test_request_cancel_in_every_state(db: Database) -> None:
    queued = new_job(db)
    canceled = db.jobs.request_cancel("alice", queued.task_id)
    assert canceled.state is JobState.CANCELED
    assert canceled.finished_at is not None
    assert db.leases.claim(queued.id, "gpu-0", LEASE_S) is None

    running = drive_to(db, JobState.RUNNING)
    flagged = db.jobs.request_cancel("alice", running.task_id)
    assert flagged.state is JobState.RUNNING
    assert flagged.cancel_requested
    assert db.jobs.request_cancel("alice", running.task_id) == flagged  # asking twice changes nothing more
    assert db.leases.cancel_running(running.id, 2) is None
    honoured = db.leases.cancel_running(running.id, 1)
    assert honoured is not None
    assert honoured.state is JobState.CANCELED

    not_flagged = drive_to(db, JobState.RUNNING)
    assert db.leases.cancel_running(not_flagged.id, 1) is None  # no request, no cancel

    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED):
        finished = drive_to(db, state)
        assert db.jobs.request_cancel("alice", finished.task_id) == finished

    with pytest.raises(NotFound):
        db.jobs.request_cancel("alice", "no-such-task")
    with pytest.raises(NotFound):
        db.jobs.request_cancel("bob", running.task_id)


# ----------------------------------------------------------------------------------------------------------------
# The reconciler


def test_requeue_expired_and_fail_exhausted(db: Database, clock: FakeClock) -> None:
    job = new_job(db, max_attempts=2)
    assert [claimed.id for claimed in db.outbox.claim_dispatch(job.queue, 1)] == [job.id]
    assert attempt_of(db.leases.claim(job.id, "gpu-0", LEASE_S)) == 1

    clock.advance(LEASE_S - 1)
    assert db.leases.requeue_expired() == []
    assert db.leases.fail_exhausted() == []

    clock.advance(2)
    (requeued,) = db.leases.requeue_expired()
    assert requeued.state is JobState.QUEUED
    assert (requeued.attempt, requeued.worker, requeued.lease_until, requeued.dispatched_at) == (1, None, None, None)
    assert db.outbox.outbox_by_queue() == {job.queue: (True, 0)}  # waits to be published again

    assert attempt_of(db.leases.claim(job.id, "gpu-1", LEASE_S)) == 2
    clock.advance(LEASE_S + 1)
    assert db.leases.requeue_expired() == []  # no attempts left
    (failed,) = db.leases.fail_exhausted()
    assert failed.state is JobState.FAILED
    assert failed.error is not None
    assert failed.error.code == "attempts_exhausted"
    # The message reaches the tenant: no worker name (worker names carry the operator's host names).
    assert "gpu-1" not in failed.error.message
    assert "2" in failed.error.message
    assert db.leases.fail_exhausted() == []


def test_expired_job_with_a_cancel_request_is_canceled_not_requeued(db: Database, clock: FakeClock) -> None:
    job = drive_to(db, JobState.RUNNING)
    db.jobs.request_cancel(job.tenant, job.task_id)
    clock.advance(LEASE_S + 1)
    assert db.leases.fail_exhausted() == []
    (canceled,) = db.leases.requeue_expired()
    assert canceled.state is JobState.CANCELED


def test_renewed_lease_is_not_expired(db: Database, clock: FakeClock) -> None:
    job = drive_to(db, JobState.RUNNING)
    clock.advance(LEASE_S - 1)
    assert db.leases.renew_lease(job.id, 1, LEASE_S).held
    clock.advance(LEASE_S - 1)
    assert db.leases.requeue_expired() == []


def test_outbox(db: Database, clock: FakeClock) -> None:
    low = new_job(db, priority=0)
    high = new_job(db, priority=9)
    assert db.outbox.outbox_by_queue() == {"default": (True, 0)}
    clock.advance(10)
    assert [j.id for j in db.outbox.claim_dispatch("default", 1)] == [high.id]  # highest priority first
    assert db.outbox.outbox_by_queue() == {"default": (True, 1)}  # low still waits
    assert db.jobs.get_by_id(high.id).dispatched_at == clock.now

    assert db.outbox.stale_dispatched_jobs(older_than_s=60) == []
    clock.advance(61)
    assert [j.id for j in db.outbox.stale_dispatched_jobs(older_than_s=60)] == [high.id]

    db.leases.claim(low.id, "gpu-0", LEASE_S)
    assert db.outbox.claim_dispatch("default", 10) == []  # claimed before the publisher got to it
    assert db.outbox.outbox_by_queue() == {"default": (False, 1)}


# ----------------------------------------------------------------------------------------------------------------
# Reads


def test_list_jobs_pagination_covers_every_job_exactly_once(db: Database, clock: FakeClock) -> None:
    made: list[uuid.UUID] = []
    for _ in range(13):
        made.append(new_job(db).id)
        clock.advance(0.001)
    # Many jobs sharing one created_at (a batch): the id breaks the tie.
    items = [NewJob(task_id=f"bulk-{i}", request={"i": i}, request_hash=f"{i:064x}") for i in range(17)]
    assert insert_batch(db, "alice", items).created == 17
    bulk_ids = [db.jobs.get("alice", f"bulk-{i}").id for i in range(17)]
    new_job(db, tenant="bob")

    for oldest_first in (False, True):
        seen: list[uuid.UUID] = []
        cursor: str | None = None
        pages = 0
        while True:
            rows, cursor = db.jobs.list_jobs("alice", cursor=cursor, limit=4, oldest_first=oldest_first)
            seen += [row.id for row in rows]
            pages += 1
            if cursor is None:
                break
        assert pages == 8
        expected = made + bulk_ids
        assert seen == (expected if oldest_first else expected[::-1])

    rows, cursor = db.jobs.list_jobs("alice", limit=30)
    assert len(rows) == 30
    assert cursor is None


def test_list_jobs_filters_and_bad_cursor(db: Database) -> None:
    queued = new_job(db)
    running = drive_to(db, JobState.RUNNING)
    rows, _ = db.jobs.list_jobs("alice", state=JobState.RUNNING)
    assert [r.id for r in rows] == [running.id]
    rows, _ = db.jobs.list_jobs("alice", state=JobState.QUEUED)
    assert [r.id for r in rows] == [queued.id]
    assert db.jobs.list_jobs("bob") == ([], None)
    with pytest.raises(InputError):
        db.jobs.list_jobs("alice", cursor="not-a-cursor")
    _, cursor = db.jobs.list_jobs("alice", limit=1)
    assert cursor is not None
    with pytest.raises(InputError):
        db.jobs.list_jobs("alice", cursor=cursor, oldest_first=True)
    with pytest.raises(InputError):
        db.jobs.list_jobs("alice", limit=0)


def test_queue_position(db: Database, clock: FakeClock) -> None:
    first = new_job(db)
    clock.advance(1)
    second = new_job(db)
    clock.advance(1)
    urgent = new_job(db, priority=10)
    other_queue = new_job(db, queue="sdxl")
    same_time = new_job(db)  # same created_at as other_queue/urgent: the id decides

    assert db.stats.queue_position(urgent) == 0
    assert db.stats.queue_position(first) == 1
    assert db.stats.queue_position(second) == 2
    assert db.stats.queue_position(same_time) == 3
    assert db.stats.queue_position(other_queue) == 0
    # Capped: exact below the cap, the cap itself at or beyond it (both the priority and the age part count).
    assert [db.stats.queue_position(same_time, cap=cap) for cap in (1, 2, 3, 4, 100)] == [1, 2, 3, 3, 3]
    assert db.stats.queue_position(second, cap=1) == 1

    db.leases.claim(urgent.id, "gpu-0", LEASE_S)
    assert db.stats.queue_position(db.jobs.get_by_id(urgent.id)) is None
    assert db.stats.queue_position(second) == 1
    assert {queue: counts.queued for queue, counts in db.stats.queue_counts().items()} == {"default": 3, "sdxl": 1}
    assert [db.stats.queue_depth("default", cap=cap) for cap in (None, 2, 5)] == [3, 2, 3]
    assert db.stats.queued_count("alice") == 4
    assert [db.stats.queued_count("alice", cap=cap) for cap in (1, 3, 4, 5)] == [1, 3, 4, 4]
    assert db.stats.queued_count("bob", cap=3) == 0


def test_get_is_isolated_per_tenant(db: Database) -> None:
    alices = new_job(db, tenant="alice", task_id="shared-name")
    with pytest.raises(NotFound):
        db.jobs.get("bob", "shared-name")
    bobs = new_job(db, tenant="bob", task_id="shared-name")
    assert bobs.id != alices.id
    assert db.jobs.get("alice", "shared-name") == alices
    assert db.jobs.get("bob", "shared-name") == bobs
    with pytest.raises(NotFound):
        db.jobs.get("alice", "unknown")
    with pytest.raises(NotFound):
        db.jobs.get_by_id(uuid.uuid4())


# ----------------------------------------------------------------------------------------------------------------
# Batches and bulk insert


def bulk_items(count: int, prefix: str = "item") -> list[NewJob]:
    return [
        NewJob(
            task_id=f"{prefix}-{i}",
            request={"prompt": f"p{i}", "seed": i},
            request_hash=hashlib.sha256(f"{prefix}{i}".encode()).hexdigest(),
            priority=i % 3,
            queue="default",
            total_steps=20,
        )
        for i in range(count)
    ]


def test_bulk_create_10000_jobs(db: Database) -> None:
    items = bulk_items(10_000)
    result = insert_batch(db, "alice", items)
    assert (result.created, result.existing) == (10_000, 0)
    assert db.stats.counts_by_state()[JobState.QUEUED] == 10_000
    again = insert_batch(db, "alice", items)
    assert (again.created, again.existing) == (0, 10_000)
    assert db.jobs.get("alice", "item-9999").request == {"prompt": "p9999", "seed": 9999}


def test_bulk_create_conflict_inserts_nothing(db: Database) -> None:
    insert_batch(db, "alice", bulk_items(3))
    changed = [*bulk_items(5)[3:], NewJob(task_id="item-1", request={}, request_hash="f" * 64)]
    with pytest.raises(Conflict) as caught:
        insert_batch(db, "alice", changed)
    assert caught.value.code == "task_id_conflict"
    assert db.stats.queued_count("alice") == 3
    with pytest.raises(InputError):
        insert_batch(db, "alice", [*bulk_items(2, "dup"), *bulk_items(1, "dup")])


def test_batch_create_counts_and_cancel(db: Database) -> None:
    batch, result = db.batches.create_if_absent(
        "alice", bulk_items(6, "b"), mode="product", manifest={"prompts": ["a"]}, batch_id=new_id()
    )
    assert result is not None
    assert (batch.requested, result.created) == (6, 6)
    assert db.batches.get("alice", batch.id) == batch
    with pytest.raises(NotFound):
        db.batches.get("bob", batch.id)

    rows, _ = db.jobs.list_jobs("alice", batch_id=batch.id, limit=100, oldest_first=True)
    assert [r.task_id for r in rows] == [f"b-{i}" for i in range(6)]
    db.leases.claim(rows[0].id, "gpu-0", LEASE_S)
    db.leases.claim(rows[1].id, "gpu-1", LEASE_S)
    assert db.leases.succeed(rows[1].id, 1, []).state is JobState.SUCCEEDED

    canceled = db.batches.cancel("alice", batch.id)
    assert canceled.canceled_at is not None
    counts = db.batches.counts(batch.tenant, batch.id)
    assert counts == {
        JobState.QUEUED: 0,
        JobState.RUNNING: 1,
        JobState.SUCCEEDED: 1,
        JobState.FAILED: 0,
        JobState.CANCELED: 4,
    }
    assert db.jobs.get_by_id(rows[0].id).cancel_requested
    with pytest.raises(NotFound):
        db.batches.cancel("bob", batch.id)


def test_assets_are_content_addressed_per_tenant(db: Database) -> None:
    digest = "cd" * 32
    asset, created = db.assets.add(
        "alice", digest, storage_key="alice/assets/cd.png", size_bytes=10, mime="image/png", width=8, height=8
    )
    assert created
    again, created = db.assets.add(
        "alice", digest, storage_key="alice/assets/cd.png", size_bytes=10, mime="image/png", width=8, height=8
    )
    assert (again, created) == (asset, False)
    assert db.assets.get("alice", digest) == asset
    with pytest.raises(NotFound):
        db.assets.get("bob", digest)


# ----------------------------------------------------------------------------------------------------------------
# Failure of the database itself


def test_unreachable_database_is_database_unavailable() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing")  # nothing listens on port 1
    try:
        with pytest.raises(DatabaseUnavailable):
            Database(engine).jobs.get("alice", "x")
    finally:
        engine.dispose()


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new-folder' / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 1000
    finally:
        engine.dispose()
    assert (tmp_path / "new-folder" / "x.db").exists()


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        new_job(db, batch_id=uuid.uuid4())


# ----------------------------------------------------------------------------------------------------------------
# The dispatcher's side: fair claims of a window, hand-backs and resets


def test_claim_dispatch_fills_the_window_in_fair_order(db: Database, clock: FakeClock) -> None:
    alice = [new_job(db, tenant="alice", queue="q") for _ in range(4)]
    clock.advance(1)
    bob = [new_job(db, tenant="bob", queue="q") for _ in range(2)]
    urgent = new_job(db, tenant="carol", queue="q", priority=5)
    elsewhere = new_job(db, queue="other")

    claimed = db.outbox.claim_dispatch("q", 4)
    assert [job.id for job in claimed] == [urgent.id, alice[0].id, bob[0].id, alice[1].id]
    assert all(job.dispatched_at == clock.now for job in claimed)
    assert db.outbox.claim_dispatch("q", 4) == []  # the window is full
    assert db.outbox.outbox_by_queue() == {"q": (True, 4), "other": (True, 0)}
    assert in_flight(db) == {"q": 4}

    db.leases.claim(alice[0].id, "gpu-0", LEASE_S)  # running counts as alice's active job: bob's turn comes first
    (next_job,) = db.outbox.claim_dispatch("q", 4)
    assert next_job.id == bob[1].id
    assert [job.id for job in db.outbox.claim_dispatch("q", 10, max_jobs=1)] == [alice[2].id]
    assert db.jobs.get_by_id(elsewhere.id).dispatched_at is None
    assert [job.id for job in db.outbox.claim_dispatch("other", 4)] == [elsewhere.id]
    assert db.outbox.outbox_by_queue() == {"q": (True, 5), "other": (False, 1)}  # nothing left to publish in "other"
    with pytest.raises(ValueError, match="window"):
        db.outbox.claim_dispatch("q", -1)


def test_concurrent_claim_dispatch_never_claims_a_job_twice(db: Database) -> None:
    for _ in range(30):
        new_job(db, queue="q")
    claims: list[uuid.UUID] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        for _ in range(5):
            claims.extend(job.id for job in db.outbox.claim_dispatch("q", 12))

    run_threads(claim, 4)
    assert len(claims) == len(set(claims)) == 12
    assert in_flight(db) == {"q": 12}


def test_release_dispatch_is_fenced_by_the_dispatch_it_hands_back(db: Database, clock: FakeClock) -> None:
    first, second, third = (new_job(db, queue="q") for _ in range(3))
    claimed = db.outbox.claim_dispatch("q", 3)
    db.leases.claim(second.id, "gpu-0", LEASE_S)  # a worker took it through an older message
    assert db.outbox.release_dispatch(claimed[:2]) == [first.id]
    assert db.jobs.get_by_id(first.id).dispatched_at is None

    clock.advance(1)
    (again,) = db.outbox.claim_dispatch("q", 3)  # first, dispatched anew
    assert again.id == first.id
    stale = next(job for job in claimed if job.id == first.id)
    assert db.outbox.release_dispatch([stale]) == []  # an old hand-back does not undo the new dispatch
    assert db.outbox.release_dispatch([job for job in claimed if job.id == third.id]) == [third.id]


def test_reset_lost_dispatch_and_reset_all_dispatch(db: Database, clock: FakeClock) -> None:
    old, fresh, running = (new_job(db, queue="q") for _ in range(3))
    db.outbox.claim_dispatch("q", 1)
    clock.advance(60)
    db.outbox.claim_dispatch("q", 3)
    db.leases.claim(running.id, "gpu-0", LEASE_S)
    clock.advance(1)

    changed = db.outbox.reset_lost_dispatch([old.id, fresh.id, running.id], older_than_s=30)
    assert [job.id for job in changed] == [old.id]
    assert changed[0].dispatched_at is None
    assert db.outbox.reset_all_dispatch() == 1  # fresh; the running job is not queued
    assert in_flight(db) == {}
    assert db.jobs.get_by_id(running.id).state is JobState.RUNNING


# ----------------------------------------------------------------------------------------------------------------
# The door's own reads: ping, schema revision, run times, queue counts, finished jobs


def test_ping_and_schema_revision(db: Database) -> None:
    db.ping()
    assert db.schema_revision() == head_revision()


def test_ping_of_an_unreachable_database_is_database_unavailable() -> None:
    db = Database.from_url("postgresql+psycopg://postgres@127.0.0.1:1/nothing")  # nothing listens on port 1
    try:
        with pytest.raises(DatabaseUnavailable):
            db.ping()
        with pytest.raises(DatabaseUnavailable):
            db.schema_revision()
    finally:
        db.close()


def test_run_times_queue_counts_and_finished_jobs(db: Database, clock: FakeClock) -> None:
    assert db.stats.recent_runs("default", 10) == []
    assert db.stats.queue_counts() == {}
    quick, slow = drive_to(db, JobState.RUNNING), drive_to(db, JobState.RUNNING)
    waiting = new_job(db)
    clock.advance(2)
    db.leases.succeed(quick.id, 1, [])
    clock.advance(10)
    db.leases.succeed(slow.id, 1, [])
    runs = db.stats.recent_runs("default", 10)
    assert [seconds for seconds, _steps, _request in runs] == [12.0, 2.0]  # the most recent first
    assert [(steps, request) for _seconds, steps, request in runs] == [
        (slow.total_steps, slow.request),
        (quick.total_steps, quick.request),
    ]
    assert [seconds for seconds, _steps, _request in db.stats.recent_runs("default", 1)] == [12.0]
    assert db.stats.queue_counts() == {"default": QueueCounts(queued=1, oldest_queued=waiting.created_at)}

    failed = db.leases.fail(waiting.id, None, ERROR)
    assert failed is not None
    finished = list(db.stats.finished_since(None))
    assert [(job.id, job.state, job.error_code) for job in finished] == [
        (quick.id, JobState.SUCCEEDED, None),
        (slow.id, JobState.SUCCEEDED, None),
        (waiting.id, JobState.FAILED, ERROR.code),
    ]
    assert [job.id for job in db.stats.finished_since(clock.now)] == [slow.id, waiting.id]
