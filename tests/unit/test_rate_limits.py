"""The rate limiter's arithmetic (sliding-window estimate, Retry-After), its two counters (memory and a real Redis,
shared by two limiters as by two scheduler replicas) and its behaviour while Redis is away (fail open, log once)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from scheduler.rate_limits import MemoryCounter, RateLimiter, RateLimits, RedisCounter, WindowCounter, WindowCounts
from shared.errors import RateLimited
from tests.services import isolated_redis_database

WINDOW_S = 10.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(counter: WindowCounter, clock: Clock, *, token: int = 0, address: int = 0, auth: int = 0) -> RateLimiter:
    return RateLimiter(RateLimits(WINDOW_S, token, address, auth), counter, clock=clock)


def allowed(limiter: RateLimiter, key: str = "alice#0") -> bool:
    try:
        asyncio.run(limiter.admit(None, key))
    except RateLimited:
        return False
    return True


@pytest.fixture
def redis_url() -> Iterator[str]:
    with isolated_redis_database() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def counter(request: pytest.FixtureRequest) -> Iterator[WindowCounter]:
    if request.param == "memory":
        yield MemoryCounter()
        return
    made = RedisCounter(request.getfixturevalue("redis_url"))
    yield made
    asyncio.run(made.aclose())


def test_the_estimate_weighs_the_previous_window_by_its_overlap() -> None:
    assert WindowCounts(previous=10, current=4, elapsed=0.25).estimate == pytest.approx(11.5)
    assert WindowCounts(previous=10, current=0, elapsed=1.0).estimate == 0


@pytest.mark.parametrize(
    ("previous", "current", "elapsed"), [(0, 11, 0.5), (20, 3, 0.2), (11, 1, 0.1), (0, 30, 0.0), (5, 9, 0.9)]
)
def test_retry_after_is_the_first_moment_one_more_request_fits(previous: int, current: int, elapsed: float) -> None:
    limit = 10
    wait = WindowCounts(previous, current, elapsed).retry_after_s(limit, WINDOW_S)

    def fits_after(t: float) -> bool:
        position = elapsed + t / WINDOW_S
        if position < 1.0:
            return previous * (1.0 - position) + current + 1 <= limit + 1e-9
        return current * (1.0 - (position - 1.0)) + 1 <= limit + 1e-9

    assert fits_after(wait)
    assert wait == 0 or not fits_after(wait - 0.05)


def test_a_token_is_refused_past_its_limit_and_served_again_after_retry_after(counter: WindowCounter) -> None:
    clock = Clock(1_000_005.0)  # half-way through a window
    limits = limiter(counter, clock, token=10)
    assert [allowed(limits) for _ in range(10)] == [True] * 10
    with pytest.raises(RateLimited) as refused:
        asyncio.run(limits.admit(None, "alice#0"))
    assert refused.value.http_status == 429
    assert refused.value.code == "too_many_requests"
    assert allowed(limits, "bob#1")  # counted per token
    clock.now += refused.value.retry_after_s - 1
    assert not allowed(limits)  # still too early (and that try counts as well)
    clock.now += 2 * WINDOW_S
    assert allowed(limits)


def test_failed_authentications_close_the_address_before_its_credentials_are_looked_at(
    counter: WindowCounter,
) -> None:
    clock = Clock()
    limits = limiter(counter, clock, auth=3)
    for _ in range(3):
        asyncio.run(limits.admit("203.0.113.9", None))
        asyncio.run(limits.note_failed_auth("203.0.113.9"))
    with pytest.raises(RateLimited) as refused:
        asyncio.run(limits.admit("203.0.113.9", None))
    assert refused.value.code == "too_many_failed_auth"
    asyncio.run(limits.admit("203.0.113.10", None))  # another address is not concerned
    clock.now += 2 * WINDOW_S
    asyncio.run(limits.admit("203.0.113.9", None))


def test_two_limiters_on_one_redis_share_the_counts(redis_url: str) -> None:
    clock = Clock()
    first, second = RedisCounter(redis_url), RedisCounter(redis_url)
    try:
        replica_a, replica_b = limiter(first, clock, token=4), limiter(second, clock, token=4)
        assert [allowed(replica_a), allowed(replica_b), allowed(replica_a), allowed(replica_b)] == [True] * 4
        assert not allowed(replica_a)
        assert not allowed(replica_b)
    finally:
        asyncio.run(first.aclose())
        asyncio.run(second.aclose())


def test_a_redis_outage_fails_open_counts_in_memory_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    counter = RedisCounter("redis://127.0.0.1:1/0")
    clock = Clock()
    limits = limiter(counter, clock, token=5)
    with caplog.at_level(logging.WARNING, logger="scheduler.rate_limits"):
        answers = [allowed(limits) for _ in range(6)]
    # No request failed because Redis was away; the limit still held, in this process's memory.
    assert answers == [True] * 5 + [False]
    outage_lines = [record for record in caplog.records if "Redis did not answer" in record.getMessage()]
    assert len(outage_lines) == 1
    asyncio.run(counter.aclose())
