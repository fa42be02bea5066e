"""The job repository against real databases: every test runs on SQLite (a migrated temp file) and PostgreSQL."""

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
    JobError,
    JobRepository,
    JobRow,
    NewJob,
    make_engine,
    upgrade,
)
from shared.errors import Conflict, DatabaseUnavailable, InputError, LeaseLost, NotFound
from shared.states import ALLOWED_TRANSITIONS, JobState
from tests.clock import FakeClock
from tests.services import empty_all_tables

pytestmark = pytest.mark.integration

LEASE_S = 60.0


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'renderfarm.db'}"
        upgrade(url)
        yield url
        return
    url = request.getfixturevalue("migrated_postgres_url")
    empty_all_tables(url)  # empty tables for each test; one database per session keeps the suite fast
    yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def repo(engine: sa.Engine, clock: FakeClock) -> JobRepository:
    return JobRepository(engine, clock=clock)


def request_of(prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, "steps": 4, "denoising_strength": 0.75}


def hash_of(request: dict[str, Any]) -> str:
    return hashlib.sha256(repr(sorted(request.items())).encode()).hexdigest()


_counter = itertools.count()


def new_job(
    repo: JobRepository,
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
    job, created = repo.create_or_get(
        tenant,
        task_id,
        request,
        hash_of(request),
        queue=queue,
        max_attempts=max_attempts,
        priority=priority,
        batch_id=batch_id,
        total_steps=4,
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


def test_create_or_get_returns_the_same_job_for_the_same_request(repo: JobRepository) -> None:
    request = request_of("a cat")
    first, created = repo.create_or_get(
        "alice", "task(img2img-1)", request, hash_of(request), queue="q", max_attempts=3, priority=5, model="tiny"
    )
    assert created
    assert first.state is JobState.QUEUED
    assert (first.attempt, first.seq, first.priority, first.model, first.queue) == (0, 1, 5, "tiny", "q")
    assert first.request == request
    assert first.dispatched_at is None
    assert first.created_at.tzinfo is not None
    assert first.message_id == f"{first.id}:0"

    again, created = repo.create_or_get(
        "alice", "task(img2img-1)", request, hash_of(request), queue="q", max_attempts=3, priority=5
    )
    assert not created
    assert again == first


def test_create_or_get_with_a_different_request_is_a_conflict_naming_both_hashes(repo: JobRepository) -> None:
    first = new_job(repo, task_id="same-id")
    other = request_of("a dog")
    with pytest.raises(Conflict) as caught:
        repo.create_or_get("alice", "same-id", other, hash_of(other), queue="default", max_attempts=3)
    assert caught.value.code == "task_id_conflict"
    assert first.request_hash in caught.value.message
    assert hash_of(other) in caught.value.message
    assert repo.get("alice", "same-id") == first


def test_concurrent_create_or_get_inserts_one_job(repo: JobRepository) -> None:
    request = request_of("race")
    results: list[tuple[JobRow, bool]] = []
    barrier = threading.Barrier(4)

    def submit() -> None:
        barrier.wait()
        results.append(repo.create_or_get("alice", "racy", request, hash_of(request), queue="default", max_attempts=3))

    run_threads(submit, 4)
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1


def test_task_id_longer_than_128_characters_is_refused(repo: JobRepository) -> None:
    with pytest.raises(InputError):
        new_job(repo, task_id="x" * 129)
    assert new_job(repo, task_id="x" * 128).task_id == "x" * 128


# ----------------------------------------------------------------------------------------------------------------
# Transitions


def drive_to(repo: JobRepository, state: JobState) -> JobRow:
    """A new job brought into `state` through the repository's own operations."""
    job = new_job(repo)
    if state is JobState.QUEUED:
        return job
    if state is JobState.CANCELED:
        return repo.request_cancel(job.tenant, job.task_id)
    if state is JobState.FAILED:
        failed = repo.fail(job.id, None, ERROR)
        assert failed is not None
        return failed
    attempt = repo.claim(job.id, "gpu-0", LEASE_S)
    assert attempt == 1
    if state is JobState.RUNNING:
        return repo.get_by_id(job.id)
    assert state is JobState.SUCCEEDED
    return repo.succeed(job.id, attempt, [artifact(0)])


@pytest.mark.parametrize("source", list(JobState))
def test_every_allowed_transition_works_and_every_other_is_refused(repo: JobRepository, source: JobState) -> None:
    for target in JobState:
        job = drive_to(repo, source)
        assert job.state is source
        changed = repo.transition(job.id, target)
        after = repo.get_by_id(job.id)
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


def test_transition_fenced_by_attempt(repo: JobRepository) -> None:
    job = drive_to(repo, JobState.RUNNING)
    assert not repo.transition(job.id, JobState.FAILED, expected_attempt=2)
    assert repo.transition(job.id, JobState.FAILED, expected_attempt=1, error=ERROR)
    failed = repo.get_by_id(job.id)
    assert failed.error == ERROR


def test_transition_refuses_protected_columns_and_wider_sources(repo: JobRepository) -> None:
    job = new_job(repo)
    with pytest.raises(ValueError, match="seq"):
        repo.transition(job.id, JobState.CANCELED, seq=99)
    with pytest.raises(ValueError, match="not an allowed transition"):
        repo.transition(job.id, JobState.QUEUED, from_states=frozenset({JobState.SUCCEEDED}))


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


def claim_concurrently(repo: JobRepository, job_id: uuid.UUID, workers: int) -> list[int | None]:
    """`workers` threads, each on its own pooled connection, claim the job at the same moment."""
    barrier = threading.Barrier(workers)
    results: list[int | None] = []
    lock = threading.Lock()

    def claim() -> None:
        barrier.wait()
        attempt = repo.claim(job_id, f"gpu-{threading.get_ident()}", LEASE_S)
        with lock:
            results.append(attempt)

    run_threads(claim, workers)
    return results


def test_concurrent_claims_have_exactly_one_winner(repo: JobRepository) -> None:
    workers = 4
    for _round in range(15):
        job = new_job(repo)
        results = claim_concurrently(repo, job.id, workers)
        assert sorted(results, key=lambda attempt: attempt or 0) == [None] * (workers - 1) + [1]
        assert repo.get_by_id(job.id).attempt == 1


def test_claim_sets_lease_worker_and_attempt(repo: JobRepository, clock: FakeClock) -> None:
    job = new_job(repo)
    assert repo.claim(job.id, "gpu-7", 30.0) == 1
    running = repo.get_by_id(job.id)
    assert running.state is JobState.RUNNING
    assert running.worker == "gpu-7"
    assert running.started_at == clock.now
    assert running.lease_until == clock.now + timedelta(seconds=30)
    assert running.message_id == f"{job.id}:1"
    assert repo.claim(job.id, "gpu-8", 30.0) is None  # a duplicate delivery
    assert repo.claim(uuid.uuid4(), "gpu-8", 30.0) is None


def test_renew_lease_is_fenced_and_reports_cancel(repo: JobRepository, clock: FakeClock) -> None:
    job = drive_to(repo, JobState.RUNNING)
    clock.advance(10)
    status = repo.renew_lease(job.id, 1, 120.0)
    assert (status.held, status.cancel_requested) == (True, False)
    assert repo.get_by_id(job.id).lease_until == clock.now + timedelta(seconds=120)
    assert not repo.renew_lease(job.id, 2, 120.0).held
    repo.request_cancel(job.tenant, job.task_id)
    status = repo.renew_lease(job.id, 1, 120.0)
    assert (status.held, status.cancel_requested) == (True, True)


def test_succeed_writes_artifacts_and_appends_warnings(repo: JobRepository) -> None:
    job = new_job(repo)
    attempt = repo.claim(job.id, "gpu-0", LEASE_S)
    assert attempt == 1
    records = [artifact(1), artifact(0), artifact(0, "mask"), artifact(0, "overlay")]
    done = repo.succeed(job.id, attempt, records, [{"code": "blank_mask", "message": "the mask was blank"}])
    assert done.state is JobState.SUCCEEDED
    assert done.finished_at is not None
    assert done.warnings == ({"code": "blank_mask", "message": "the mask was blank"},)
    stored = repo.artifacts_of(job.id)
    assert [(a.kind, a.index) for a in stored] == [("result", 0), ("result", 1), ("overlay", 0), ("mask", 0)]
    first = stored[0]
    assert (first.attempt, first.seed, first.bytes, first.width, first.height) == (1, 2**40, 1234, 64, 48)
    assert first.infotext == "a cat\nSteps: 4"
    assert repo.get_by_id(job.id) == done


def test_fenced_succeed_rejects_a_stale_attempt_and_writes_nothing(repo: JobRepository, clock: FakeClock) -> None:
    job = new_job(repo)
    assert repo.claim(job.id, "gpu-old", LEASE_S) == 1
    clock.advance(LEASE_S + 1)
    assert [j.state for j in repo.requeue_expired()] == [JobState.QUEUED]
    assert repo.claim(job.id, "gpu-new", LEASE_S) == 2

    before = repo.get_by_id(job.id)
    with pytest.raises(LeaseLost):
        repo.succeed(job.id, 1, [artifact(0), artifact(1)], [{"code": "w", "message": "m"}])
    assert repo.artifacts_of(job.id) == []
    assert repo.get_by_id(job.id) == before

    assert repo.succeed(job.id, 2, [artifact(0)]).state is JobState.SUCCEEDED
    assert [a.attempt for a in repo.artifacts_of(job.id)] == [2]
    with pytest.raises(LeaseLost):
        repo.succeed(job.id, 2, [artifact(5)])  # a second commit of the same attempt
    assert len(repo.artifacts_of(job.id)) == 1


def test_succeed_of_a_requeued_job_with_the_same_attempt_is_refused(repo: JobRepository, clock: FakeClock) -> None:
    job = drive_to(repo, JobState.RUNNING)
    clock.advance(LEASE_S + 1)
    repo.requeue_expired()
    with pytest.raises(LeaseLost):
        repo.succeed(job.id, 1, [artifact(0)])
    assert repo.fail(job.id, 1, ERROR) is None
    assert repo.get_by_id(job.id).state is JobState.QUEUED


def test_fail_with_and_without_attempt(repo: JobRepository) -> None:
    queued = new_job(repo)
    failed = repo.fail(queued.id, None, {"type": "invalid_request", "code": "bad", "message": "no"})
    assert failed is not None
    assert failed.state is JobState.FAILED
    assert failed.error == JobError("invalid_request", "bad", "no")
    assert repo.fail(queued.id, None, ERROR) is None  # terminal stays terminal

    running = drive_to(repo, JobState.RUNNING)
    assert repo.fail(running.id, 2, ERROR) is None
    failed = repo.fail(running.id, 1, ERROR)
    assert failed is not None
    assert failed.error == ERROR


# ----------------------------------------------------------------------------------------------------------------
# Cancel


def test_request_cancel_in_every_state(repo: JobRepository) -> None:
    queued = new_job(repo)
    canceled = repo.request_cancel("alice", queued.task_id)
    assert canceled.state is JobState.CANCELED
    assert canceled.finished_at is not None
    assert repo.claim(queued.id, "gpu-0", LEASE_S) is None

    running = drive_to(repo, JobState.RUNNING)
    flagged = repo.request_cancel("alice", running.task_id)
    assert flagged.state is JobState.RUNNING
    assert flagged.cancel_requested
    assert repo.request_cancel("alice", running.task_id) == flagged  # asking twice changes nothing more
    assert repo.cancel_running(running.id, 2) is None
    honoured = repo.cancel_running(running.id, 1)
    assert honoured is not None
    assert honoured.state is JobState.CANCELED

    not_flagged = drive_to(repo, JobState.RUNNING)
    assert repo.cancel_running(not_flagged.id, 1) is None  # no request, no cancel

    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED):
        finished = drive_to(repo, state)
        assert repo.request_cancel("alice", finished.task_id) == finished

    with pytest.raises(NotFound):
        repo.request_cancel("alice", "no-such-task")
    with pytest.raises(NotFound):
        repo.request_cancel("bob", running.task_id)


# ----------------------------------------------------------------------------------------------------------------
# The reconciler


def test_requeue_expired_and_fail_exhausted(repo: JobRepository, clock: FakeClock) -> None:
    job = new_job(repo, max_attempts=2)
    repo.mark_dispatched(job.id)
    assert repo.claim(job.id, "gpu-0", LEASE_S) == 1

    clock.advance(LEASE_S - 1)
    assert repo.requeue_expired() == []
    assert repo.fail_exhausted() == []

    clock.advance(2)
    (requeued,) = repo.requeue_expired()
    assert requeued.state is JobState.QUEUED
    assert (requeued.attempt, requeued.worker, requeued.lease_until, requeued.dispatched_at) == (1, None, None, None)
    assert [j.id for j in repo.undispatched_jobs()] == [job.id]

    assert repo.claim(job.id, "gpu-1", LEASE_S) == 2
    clock.advance(LEASE_S + 1)
    assert repo.requeue_expired() == []  # no attempts left
    (failed,) = repo.fail_exhausted()
    assert failed.state is JobState.FAILED
    assert failed.error is not None
    assert failed.error.code == "attempts_exhausted"
    assert "gpu-1" in failed.error.message
    assert "2" in failed.error.message
    assert repo.fail_exhausted() == []


def test_expired_job_with_a_cancel_request_is_canceled_not_requeued(repo: JobRepository, clock: FakeClock) -> None:
    job = drive_to(repo, JobState.RUNNING)
    repo.request_cancel(job.tenant, job.task_id)
    clock.advance(LEASE_S + 1)
    assert repo.fail_exhausted() == []
    (canceled,) = repo.requeue_expired()
    assert canceled.state is JobState.CANCELED


def test_renewed_lease_is_not_expired(repo: JobRepository, clock: FakeClock) -> None:
    job = drive_to(repo, JobState.RUNNING)
    clock.advance(LEASE_S - 1)
    assert repo.renew_lease(job.id, 1, LEASE_S).held
    clock.advance(LEASE_S - 1)
    assert repo.requeue_expired() == []


def test_outbox(repo: JobRepository, clock: FakeClock) -> None:
    low = new_job(repo, priority=0)
    high = new_job(repo, priority=9)
    assert repo.undispatched_jobs(older_than_s=5) == []  # too fresh: the API publishes these itself
    clock.advance(10)
    assert [j.id for j in repo.undispatched_jobs(older_than_s=5)] == [high.id, low.id]
    assert repo.mark_dispatched(high.id)
    assert [j.id for j in repo.undispatched_jobs()] == [low.id]
    assert repo.get_by_id(high.id).dispatched_at == clock.now

    assert repo.stale_dispatched_jobs(older_than_s=60) == []
    clock.advance(61)
    assert [j.id for j in repo.stale_dispatched_jobs(older_than_s=60)] == [high.id]

    repo.claim(low.id, "gpu-0", LEASE_S)
    assert not repo.mark_dispatched(low.id)  # claimed before the publisher got to mark it
    assert repo.undispatched_jobs() == []


# ----------------------------------------------------------------------------------------------------------------
# Reads


def test_list_jobs_pagination_covers_every_job_exactly_once(repo: JobRepository, clock: FakeClock) -> None:
    made: list[uuid.UUID] = []
    for _ in range(13):
        made.append(new_job(repo).id)
        clock.advance(0.001)
    # Many jobs sharing one created_at (a batch): the id breaks the tie.
    items = [NewJob(task_id=f"bulk-{i}", request={"i": i}, request_hash=f"{i:064x}") for i in range(17)]
    assert repo.bulk_create("alice", items).created == 17
    bulk_ids = [repo.get("alice", f"bulk-{i}").id for i in range(17)]
    new_job(repo, tenant="bob")

    for oldest_first in (False, True):
        seen: list[uuid.UUID] = []
        cursor: str | None = None
        pages = 0
        while True:
            rows, cursor = repo.list_jobs("alice", cursor=cursor, limit=4, oldest_first=oldest_first)
            seen += [row.id for row in rows]
            pages += 1
            if cursor is None:
                break
        assert pages == 8
        expected = made + bulk_ids
        assert seen == (expected if oldest_first else expected[::-1])

    rows, cursor = repo.list_jobs("alice", limit=30)
    assert len(rows) == 30
    assert cursor is None


def test_list_jobs_filters_and_bad_cursor(repo: JobRepository) -> None:
    queued = new_job(repo)
    running = drive_to(repo, JobState.RUNNING)
    rows, _ = repo.list_jobs("alice", state=JobState.RUNNING)
    assert [r.id for r in rows] == [running.id]
    rows, _ = repo.list_jobs("alice", state=JobState.QUEUED)
    assert [r.id for r in rows] == [queued.id]
    assert repo.list_jobs("bob") == ([], None)
    with pytest.raises(InputError):
        repo.list_jobs("alice", cursor="not-a-cursor")
    _, cursor = repo.list_jobs("alice", limit=1)
    assert cursor is not None
    with pytest.raises(InputError):
        repo.list_jobs("alice", cursor=cursor, oldest_first=True)
    with pytest.raises(InputError):
        repo.list_jobs("alice", limit=0)


def test_queue_position(repo: JobRepository, clock: FakeClock) -> None:
    first = new_job(repo)
    clock.advance(1)
    second = new_job(repo)
    clock.advance(1)
    urgent = new_job(repo, priority=10)
    other_queue = new_job(repo, queue="sdxl")
    same_time = new_job(repo)  # same created_at as other_queue/urgent: the id decides

    assert repo.queue_position(urgent) == 0
    assert repo.queue_position(first) == 1
    assert repo.queue_position(second) == 2
    assert repo.queue_position(same_time) == 3
    assert repo.queue_position(other_queue) == 0
    # Capped: exact below the cap, the cap itself at or beyond it (both the priority and the age part count).
    assert [repo.queue_position(same_time, cap=cap) for cap in (1, 2, 3, 4, 100)] == [1, 2, 3, 3, 3]
    assert repo.queue_position(second, cap=1) == 1

    repo.claim(urgent.id, "gpu-0", LEASE_S)
    assert repo.queue_position(repo.get_by_id(urgent.id)) is None
    assert repo.queue_position(second) == 1
    assert repo.queue_depths() == {"default": 3, "sdxl": 1}
    assert [repo.queue_depth("default", cap=cap) for cap in (None, 2, 5)] == [3, 2, 3]
    assert repo.queued_count("alice") == 4
    assert [repo.queued_count("alice", cap=cap) for cap in (1, 3, 4, 5)] == [1, 3, 4, 4]
    assert repo.queued_count("bob", cap=3) == 0


def test_get_is_isolated_per_tenant(repo: JobRepository) -> None:
    alices = new_job(repo, tenant="alice", task_id="shared-name")
    with pytest.raises(NotFound):
        repo.get("bob", "shared-name")
    bobs = new_job(repo, tenant="bob", task_id="shared-name")
    assert bobs.id != alices.id
    assert repo.get("alice", "shared-name") == alices
    assert repo.get("bob", "shared-name") == bobs
    with pytest.raises(NotFound):
        repo.get("alice", "unknown")
    with pytest.raises(NotFound):
        repo.get_by_id(uuid.uuid4())


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


def test_bulk_create_10000_jobs(repo: JobRepository) -> None:
    items = bulk_items(10_000)
    result = repo.bulk_create("alice", items)
    assert (result.created, result.existing) == (10_000, 0)
    assert repo.counts_by_state()[JobState.QUEUED] == 10_000
    again = repo.bulk_create("alice", items)
    assert (again.created, again.existing) == (0, 10_000)
    assert repo.get("alice", "item-9999").request == {"prompt": "p9999", "seed": 9999}


def test_bulk_create_conflict_inserts_nothing(repo: JobRepository) -> None:
    repo.bulk_create("alice", bulk_items(3))
    changed = [*bulk_items(5)[3:], NewJob(task_id="item-1", request={}, request_hash="f" * 64)]
    with pytest.raises(Conflict) as caught:
        repo.bulk_create("alice", changed)
    assert caught.value.code == "task_id_conflict"
    assert repo.queued_count("alice") == 3
    with pytest.raises(InputError):
        repo.bulk_create("alice", [*bulk_items(2, "dup"), *bulk_items(1, "dup")])


def test_batch_create_counts_and_cancel(repo: JobRepository) -> None:
    batch, result = repo.create_batch("alice", bulk_items(6, "b"), mode="product", manifest={"prompts": ["a"]})
    assert (batch.requested, result.created) == (6, 6)
    assert repo.get_batch("alice", batch.id) == batch
    with pytest.raises(NotFound):
        repo.get_batch("bob", batch.id)

    rows, _ = repo.list_jobs("alice", batch_id=batch.id, limit=100, oldest_first=True)
    assert [r.task_id for r in rows] == [f"b-{i}" for i in range(6)]
    repo.claim(rows[0].id, "gpu-0", LEASE_S)
    repo.claim(rows[1].id, "gpu-1", LEASE_S)
    assert repo.succeed(rows[1].id, 1, []).state is JobState.SUCCEEDED

    canceled = repo.cancel_batch("alice", batch.id)
    assert canceled.canceled_at is not None
    counts = repo.batch_counts(batch.id)
    assert counts == {
        JobState.QUEUED: 0,
        JobState.RUNNING: 1,
        JobState.SUCCEEDED: 1,
        JobState.FAILED: 0,
        JobState.CANCELED: 4,
    }
    assert repo.get_by_id(rows[0].id).cancel_requested
    with pytest.raises(NotFound):
        repo.cancel_batch("bob", batch.id)


def test_assets_are_content_addressed_per_tenant(repo: JobRepository) -> None:
    digest = "cd" * 32
    asset, created = repo.add_asset(
        "alice", digest, storage_key="alice/assets/cd.png", size_bytes=10, mime="image/png", width=8, height=8
    )
    assert created
    again, created = repo.add_asset(
        "alice", digest, storage_key="alice/assets/cd.png", size_bytes=10, mime="image/png", width=8, height=8
    )
    assert (again, created) == (asset, False)
    assert repo.get_asset("alice", digest) == asset
    with pytest.raises(NotFound):
        repo.get_asset("bob", digest)


# ----------------------------------------------------------------------------------------------------------------
# Failure of the database itself


def test_unreachable_database_is_database_unavailable() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing")  # nothing listens on port 1
    try:
        with pytest.raises(DatabaseUnavailable):
            JobRepository(engine).get("alice", "x")
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


def test_foreign_keys_are_enforced(repo: JobRepository) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        new_job(repo, batch_id=uuid.uuid4())


# ----------------------------------------------------------------------------------------------------------------
# The dispatcher's side: fair claims of a window, hand-backs and resets


def test_claim_dispatch_fills_the_window_in_fair_order(repo: JobRepository, clock: FakeClock) -> None:
    alice = [new_job(repo, tenant="alice", queue="q") for _ in range(4)]
    clock.advance(1)
    bob = [new_job(repo, tenant="bob", queue="q") for _ in range(2)]
    urgent = new_job(repo, tenant="carol", queue="q", priority=5)
    elsewhere = new_job(repo, queue="other")

    claimed = repo.claim_dispatch("q", 4)
    assert [job.id for job in claimed] == [urgent.id, alice[0].id, bob[0].id, alice[1].id]
    assert all(job.dispatched_at == clock.now for job in claimed)
    assert repo.claim_dispatch("q", 4) == []  # the window is full
    assert repo.outbox_by_queue() == {"q": (True, 4), "other": (True, 0)}
    assert repo.in_flight_counts() == {"q": 4}

    repo.claim(alice[0].id, "gpu-0", LEASE_S)  # running counts as alice's active job: bob's turn comes first
    (next_job,) = repo.claim_dispatch("q", 4)
    assert next_job.id == bob[1].id
    assert [job.id for job in repo.claim_dispatch("q", 10, max_jobs=1)] == [alice[2].id]
    assert repo.get_by_id(elsewhere.id).dispatched_at is None
    assert [job.id for job in repo.claim_dispatch("other", 4)] == [elsewhere.id]
    assert repo.outbox_by_queue() == {"q": (True, 5), "other": (False, 1)}  # nothing left to publish in "other"
    with pytest.raises(ValueError, match="window"):
        repo.claim_dispatch("q", -1)


def test_concurrent_claim_dispatch_never_claims_a_job_twice(repo: JobRepository) -> None:
    for _ in range(30):
        new_job(repo, queue="q")
    claims: list[uuid.UUID] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        for _ in range(5):
            claims.extend(job.id for job in repo.claim_dispatch("q", 12))

    run_threads(claim, 4)
    assert len(claims) == len(set(claims)) == 12
    assert repo.in_flight_counts() == {"q": 12}


def test_release_dispatch_is_fenced_by_the_dispatch_it_hands_back(repo: JobRepository, clock: FakeClock) -> None:
    first, second, third = (new_job(repo, queue="q") for _ in range(3))
    claimed = repo.claim_dispatch("q", 3)
    repo.claim(second.id, "gpu-0", LEASE_S)  # a worker took it through an older message
    assert repo.release_dispatch(claimed[:2]) == [first.id]
    assert repo.get_by_id(first.id).dispatched_at is None

    clock.advance(1)
    (again,) = repo.claim_dispatch("q", 3)  # first, dispatched anew
    assert again.id == first.id
    stale = next(job for job in claimed if job.id == first.id)
    assert repo.release_dispatch([stale]) == []  # an old hand-back does not undo the new dispatch
    assert repo.release_dispatch([job for job in claimed if job.id == third.id]) == [third.id]


def test_reset_lost_dispatch_and_reset_all_dispatch(repo: JobRepository, clock: FakeClock) -> None:
    old, fresh, running = (new_job(repo, queue="q") for _ in range(3))
    repo.claim_dispatch("q", 1)
    clock.advance(60)
    repo.claim_dispatch("q", 3)
    repo.claim(running.id, "gpu-0", LEASE_S)
    clock.advance(1)

    changed = repo.reset_lost_dispatch([old.id, fresh.id, running.id], older_than_s=30)
    assert [job.id for job in changed] == [old.id]
    assert changed[0].dispatched_at is None
    assert repo.reset_all_dispatch() == 1  # fresh; the running job is not queued
    assert repo.in_flight_counts() == {}
    assert repo.get_by_id(running.id).state is JobState.RUNNING
