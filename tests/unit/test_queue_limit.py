"""The per-tenant queued-jobs limit: refusals decided by an exact count, admissions far from the limit estimated."""

from __future__ import annotations

from scheduler.queue_limit import QueueLimit


class FakeQueue:
    """Queued jobs per tenant, a clock, and a record of every count the limit asked for."""

    def __init__(self) -> None:
        self.queued: dict[str, int] = {}
        self.now = 0.0
        self.counts: list[tuple[str, int]] = []

    def count(self, tenant: str, cap: int) -> int:
        self.counts.append((tenant, cap))
        return min(self.queued.get(tenant, 0), cap)

    def limit(self) -> QueueLimit:
        return QueueLimit(self.count, max_age_s=1.0, clock=lambda: self.now)


def admit(fake: FakeQueue, limit: QueueLimit, tenant: str, adding: int, most: int) -> bool:
    """Admit like the scheduler does: on success the jobs are inserted (the fake queue grows)."""
    refused = limit.admit(tenant, adding, most)
    if refused is None:
        fake.queued[tenant] = fake.queued.get(tenant, 0) + adding
    return refused is None


def test_far_from_the_limit_one_count_per_interval() -> None:
    fake = FakeQueue()
    limit = fake.limit()
    assert all(admit(fake, limit, "alice", 1, 1000) for _ in range(500))
    assert fake.counts == [("alice", 1000)]  # one exact count, then the estimate
    fake.now = 1.5  # the estimate is old: counted again
    assert admit(fake, limit, "alice", 1, 1000)
    assert fake.counts == [("alice", 1000), ("alice", 1000)]


def test_near_the_limit_every_admission_is_counted_and_the_limit_is_exact() -> None:
    fake = FakeQueue()
    limit = fake.limit()
    results = [admit(fake, limit, "alice", 1, 20) for _ in range(25)]
    assert results == [True] * 20 + [False] * 5
    assert fake.queued["alice"] == 20
    assert len(fake.counts) > 1 + 5  # the last tenth of the way and every refusal were counted


def test_a_refusal_is_recounted_so_jobs_leaving_the_queue_make_room_at_once() -> None:
    fake = FakeQueue()
    limit = fake.limit()
    assert admit(fake, limit, "alice", 2, 2)
    assert not admit(fake, limit, "alice", 1, 2)
    fake.queued["alice"] = 1  # a worker claimed one (no time passes)
    assert admit(fake, limit, "alice", 1, 2)


def test_the_refusal_reports_the_counted_jobs_and_batches_count_whole() -> None:
    fake = FakeQueue()
    limit = fake.limit()
    fake.queued["alice"] = 3
    assert limit.admit("alice", 3, 5) == 3
    assert limit.admit("alice", 2, 5) is None
    fake.queued["bob"] = 50
    assert limit.admit("bob", 1, 5) == 5  # counted only up to the limit


def test_tenants_are_limited_separately() -> None:
    fake = FakeQueue()
    limit = fake.limit()
    assert admit(fake, limit, "alice", 3, 3)
    assert not admit(fake, limit, "alice", 1, 3)
    assert admit(fake, limit, "bob", 3, 3)


def test_jobs_admitted_by_another_replica_are_seen_at_the_next_count() -> None:
    fake = FakeQueue()
    limit = fake.limit()
    assert admit(fake, limit, "alice", 1, 100)
    fake.queued["alice"] += 95  # another scheduler process admitted these
    fake.now = 1.0
    assert admit(fake, limit, "alice", 4, 100)
    assert not admit(fake, limit, "alice", 1, 100)
