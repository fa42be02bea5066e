"""Rate limits of the API (docs/api.md "Rate limits"): per API token, per source address, and failed
authentications per source address, each over a sliding window; over a limit is a typed 429 with `Retry-After`.

    limiter = open_rate_limiter(settings)          # Redis in cluster mode, this process's memory when embedded
    await limiter.check_address(address)           # before authenticating: refused while the address is over
                                                   #   its failed-auth limit or its request limit
    await limiter.note_failed_auth(address)        # after a 401
    await limiter.check_token(token_key)           # after authenticating

Counting: each limit keeps one counter per fixed window of `rate_limit_window_s` seconds, and the rate is the
sliding-window estimate `previous × (1 − elapsed/window) + current` (the previous window's count weighted by how
much of it still overlaps the sliding window). A request that is refused counts too, so a client that keeps
flooding stays refused. Two counters per key are all that is stored, in Redis `INCR` + `EXPIRE` in one
transaction (atomic across scheduler replicas).

Redis trouble never fails a request: while Redis does not answer, each scheduler counts in its own memory (the
limits then hold per replica), logs the outage once, and tries Redis again after `REDIS_RETRY_S`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from shared.config import Settings
from shared.errors import RateLimited

log = logging.getLogger("scheduler.rate_limits")

KEY_PREFIX = "rf:rl:"
REDIS_TIMEOUT_S = 0.25  # a rate-limit lookup that takes longer is skipped (counted in memory) rather than waited for
REDIS_RETRY_S = 5.0  # after a Redis failure, count in memory this long before trying Redis again

Clock = Callable[[], float]


@dataclass(frozen=True)
class RateLimits:
    """The limits, in requests per `window_s`; 0 turns one off."""

    window_s: float
    token_requests: int
    address_requests: int
    address_failed_auth: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        return cls(
            window_s=settings.rate_limit_window_s,
            token_requests=settings.rate_limit_token_requests,
            address_requests=settings.rate_limit_address_requests,
            address_failed_auth=settings.rate_limit_address_failed_auth,
        )


@dataclass(frozen=True)
class WindowCounts:
    """One key's counts: the previous fixed window's and the current one's, and how far into the current one we
    are (0..1)."""

    previous: int
    current: int
    elapsed: float

    @property
    def estimate(self) -> float:
        return self.previous * (1.0 - self.elapsed) + self.current

    def retry_after_s(self, limit: int, window_s: float) -> float:
        """Seconds from now until one more request would be within `limit` (`estimate + 1 <= limit`), if nothing
        else arrives meanwhile."""
        rest_of_window = (1.0 - self.elapsed) * window_s
        room = limit - self.current - 1
        if room >= 0:
            # Still in this window, once enough of the previous one has slid out.
            if self.previous <= 0:
                return 0.0
            wait = window_s * (1.0 - self.elapsed - room / self.previous)
            if wait <= rest_of_window:
                return max(0.0, wait)
        # In the next window, where this window's count is the previous one and nothing is counted yet.
        if self.current <= 0:
            return rest_of_window
        return rest_of_window + window_s * max(0.0, 1.0 - (limit - 1) / self.current)


class WindowCounter(ABC):
    """Counters per key and fixed window."""

    @abstractmethod
    async def hit(self, key: str, window: int, ttl_s: float) -> tuple[int, int]:
        """Add one to `key`'s count in `window`; return (count of window − 1, count of window after adding)."""

    @abstractmethod
    async def peek(self, key: str, window: int) -> tuple[int, int]:
        """(count of window − 1, count of window), adding nothing."""

    async def aclose(self) -> None:  # noqa: B027 - most counters hold nothing to release
        """Release what the counter holds (from the event loop that used it)."""


class MemoryCounter(WindowCounter):
    """Counts in this process's memory (the embedded farm, and any scheduler while Redis is away)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}
        self._newest = 0

    def _prune(self, window: int) -> None:
        # Keep only the windows a lookup can still read; runs once per new window.
        if window > self._newest:
            self._newest = window
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window - 1}

    async def hit(self, key: str, window: int, ttl_s: float) -> tuple[int, int]:
        with self._lock:
            self._prune(window)
            current = self._counts.get((key, window), 0) + 1
            self._counts[(key, window)] = current
            return self._counts.get((key, window - 1), 0), current

    async def peek(self, key: str, window: int) -> tuple[int, int]:
        with self._lock:
            self._prune(window)
            return self._counts.get((key, window - 1), 0), self._counts.get((key, window), 0)


class RedisCounter(WindowCounter):
    """Counts in Redis, shared by every scheduler replica; falls back to `MemoryCounter` while Redis is away.

    The client is redis-py's synchronous one (a thread-safe connection pool), called in a worker thread: an asyncio
    client's connections belong to one event loop, and a test client starts a loop per request.
    """

    def __init__(self, redis_url: str, *, clock: Clock = time.monotonic) -> None:
        import redis

        self._client = redis.Redis.from_url(
            redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._fallback = MemoryCounter()
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until: float | None = None  # while set, Redis is skipped until this moment

    def _usable(self) -> bool:
        with self._lock:
            return self._down_until is None or self._clock() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            first = self._down_until is None
            self._down_until = self._clock() + REDIS_RETRY_S
        if first:
            log.warning(
                "rate limits: Redis did not answer (%s); counting in this process's memory until it does",
                type(exc).__name__,
            )

    def _recovered(self) -> None:
        with self._lock:
            was_down, self._down_until = self._down_until is not None, None
        if was_down:
            log.info("rate limits: Redis answers again; counting there")

    def _hit_in_redis(self, key: str, window: int, ttl_s: float) -> tuple[int, int]:
        pipe = self._client.pipeline(transaction=True)
        pipe.incr(f"{KEY_PREFIX}{key}:{window}")
        pipe.expire(f"{KEY_PREFIX}{key}:{window}", max(1, math.ceil(ttl_s)))
        pipe.get(f"{KEY_PREFIX}{key}:{window - 1}")
        current, _, previous = pipe.execute()
        return int(previous or 0), int(current)

    def _peek_in_redis(self, key: str, window: int) -> tuple[int, int]:
        values: list[Any] = self._client.mget(  # type: ignore[assignment]  # redis-py's sync/async union
            f"{KEY_PREFIX}{key}:{window - 1}", f"{KEY_PREFIX}{key}:{window}"
        )
        previous, current = values
        return int(previous or 0), int(current or 0)

    async def hit(self, key: str, window: int, ttl_s: float) -> tuple[int, int]:
        if self._usable():
            try:
                counts = await anyio.to_thread.run_sync(self._hit_in_redis, key, window, ttl_s)
            except Exception as exc:  # any Redis trouble (connection, timeout, a read-only replica) is a wait
                self._failed(exc)
            else:
                self._recovered()
                return counts
        return await self._fallback.hit(key, window, ttl_s)

    async def peek(self, key: str, window: int) -> tuple[int, int]:
        if self._usable():
            try:
                counts = await anyio.to_thread.run_sync(self._peek_in_redis, key, window)
            except Exception as exc:
                self._failed(exc)
            else:
                self._recovered()
                return counts
        return await self._fallback.peek(key, window)

    async def aclose(self) -> None:
        self._client.close()


class RateLimiter:
    """The farm's limits over one `WindowCounter`. Raises `RateLimited` (429) with `retry_after_s`."""

    def __init__(self, limits: RateLimits, counter: WindowCounter, *, clock: Clock = time.time) -> None:
        self.limits = limits
        self.counter = counter
        self._clock = clock

    def _window(self) -> tuple[int, float]:
        now = self._clock() / self.limits.window_s
        window = math.floor(now)
        return window, now - window

    async def _hit(self, key: str, limit: int) -> WindowCounts | None:
        """Count one request under `key`; the counts when that puts it over `limit`, else None."""
        if limit <= 0:
            return None
        window, elapsed = self._window()
        previous, current = await self.counter.hit(key, window, 2 * self.limits.window_s)
        counts = WindowCounts(previous, current, elapsed)
        return counts if counts.estimate > limit else None

    def _refuse(self, counts: WindowCounts, limit: int, message: str, code: str) -> RateLimited:
        retry_after = max(1.0, math.ceil(counts.retry_after_s(limit, self.limits.window_s)))
        return RateLimited(f"{message}; retry after {retry_after:.0f} s", retry_after_s=retry_after, code=code)

    async def check_address(self, address: str) -> None:
        """Before authenticating a request from `address`: refused while the address is over its failed-auth limit
        (without looking at its credentials: a password guesser learns nothing more) or its request limit."""
        limits = self.limits
        if limits.address_failed_auth > 0:
            window, elapsed = self._window()
            previous, current = await self.counter.peek(f"auth:{address}", window)
            counts = WindowCounts(previous, current, elapsed)
            if counts.estimate >= limits.address_failed_auth:
                raise self._refuse(
                    counts,
                    limits.address_failed_auth,
                    "too many requests with missing or invalid credentials from your address",
                    "too_many_failed_auth",
                )
        over = await self._hit(f"addr:{address}", limits.address_requests)
        if over is not None:
            raise self._refuse(
                over, limits.address_requests, "too many requests from your address", "too_many_requests"
            )

    async def note_failed_auth(self, address: str) -> None:
        """Count a request from `address` that failed to authenticate."""
        if self.limits.address_failed_auth > 0:
            window, _ = self._window()
            await self.counter.hit(f"auth:{address}", window, 2 * self.limits.window_s)

    async def check_token(self, token_key: str) -> None:
        """After authenticating: count a request of the token `token_key` (no secret: `tenant#index`)."""
        over = await self._hit(f"token:{token_key}", self.limits.token_requests)
        if over is not None:
            raise self._refuse(
                over, self.limits.token_requests, "too many requests with your API token", "too_many_requests"
            )

    async def aclose(self) -> None:
        await self.counter.aclose()


def open_rate_limiter(settings: Settings, *, clock: Clock = time.time) -> RateLimiter:
    """Redis-backed when a Redis URL is configured (cluster mode), else in this process's memory (embedded)."""
    counter: WindowCounter = RedisCounter(settings.redis_url) if settings.redis_url else MemoryCounter()
    return RateLimiter(RateLimits.from_settings(settings), counter, clock=clock)
