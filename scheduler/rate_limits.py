"""Rate limits of the API (docs/api.md "Rate limits"): per API token, per source address, and failed
authentications per source address, each over a sliding window; over a limit is a typed 429 with `Retry-After`.

    limiter = open_rate_limiter(settings)          # Redis in cluster mode, this process's memory when embedded
    await limiter.admit(address, token_key)        # every authenticated request: one round trip; token_key None
                                                   #   when its credentials were wrong; raises RateLimited
    await limiter.note_failed_auth(address)        # after a 401

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    """Counters per key and fixed window. One call reads and counts everything one request needs, so a request
    costs one round trip to Redis."""

    @abstractmethod
    async def count(
        self, hits: Sequence[str], peeks: Sequence[str], window: int, ttl_s: float
    ) -> dict[str, tuple[int, int]]:
        """Add one to each key of `hits` in `window`, and read the keys of `peeks` without adding; for every key,
        (count of window − 1, count of window after adding)."""

    async def aclose(self) -> None:  # noqa: B027 - most counters hold nothing to release
        """Release what the counter holds."""


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

    async def count(
        self, hits: Sequence[str], peeks: Sequence[str], window: int, ttl_s: float
    ) -> dict[str, tuple[int, int]]:
        with self._lock:
            self._prune(window)
            for key in hits:
                self._counts[(key, window)] = self._counts.get((key, window), 0) + 1
            return {
                key: (self._counts.get((key, window - 1), 0), self._counts.get((key, window), 0))
                for key in (*hits, *peeks)
            }


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

    def _count_in_redis(
        self, hits: Sequence[str], peeks: Sequence[str], window: int, ttl_s: float
    ) -> dict[str, tuple[int, int]]:
        pipe = self._client.pipeline(transaction=True)
        for key in hits:
            pipe.incr(f"{KEY_PREFIX}{key}:{window}")
            pipe.expire(f"{KEY_PREFIX}{key}:{window}", max(1, math.ceil(ttl_s)))
        for key in (*hits, *peeks):
            pipe.mget(f"{KEY_PREFIX}{key}:{window - 1}", f"{KEY_PREFIX}{key}:{window}")
        answers = pipe.execute()[2 * len(hits) :]
        return {
            key: (int(previous or 0), int(current or 0))
            for key, (previous, current) in zip((*hits, *peeks), answers, strict=True)
        }

    async def count(
        self, hits: Sequence[str], peeks: Sequence[str], window: int, ttl_s: float
    ) -> dict[str, tuple[int, int]]:
        if self._usable():
            try:
                counts = await anyio.to_thread.run_sync(self._count_in_redis, hits, peeks, window, ttl_s)
            except Exception as exc:  # any Redis trouble (connection, timeout, a read-only replica) is a wait
                self._failed(exc)
            else:
                self._recovered()
                return counts
        return await self._fallback.count(hits, peeks, window, ttl_s)

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

    def _refuse(self, counts: WindowCounts, limit: int, message: str, code: str) -> RateLimited:
        retry_after = max(1.0, math.ceil(counts.retry_after_s(limit, self.limits.window_s)))
        return RateLimited(f"{message}; retry after {retry_after:.0f} s", retry_after_s=retry_after, code=code)

    async def admit(self, address: str | None, token_key: str | None) -> None:
        """Count one request from `address` (None: not limited by address) made with the token `token_key` (None:
        no valid token; else `tenant#position`, no secret), and raise RateLimited if it is over a limit: first the
        address's failed-auth limit (a request from an address that keeps failing is refused whatever its
        credentials: a guesser learns nothing), then the address's request limit, then the token's."""
        limits = self.limits
        auth_key = f"auth:{address}" if address is not None and limits.address_failed_auth > 0 else None
        address_key = f"addr:{address}" if address is not None and limits.address_requests > 0 else None
        token = f"token:{token_key}" if token_key is not None and limits.token_requests > 0 else None
        hits = [key for key in (address_key, token) if key is not None]
        peeks = [auth_key] if auth_key is not None else []
        if not hits and not peeks:
            return
        window, elapsed = self._window()
        counts = await self.counter.count(hits, peeks, window, 2 * limits.window_s)
        if auth_key is not None:
            failed = WindowCounts(*counts[auth_key], elapsed)
            if failed.estimate >= limits.address_failed_auth:
                raise self._refuse(
                    failed,
                    limits.address_failed_auth,
                    "too many requests with missing or invalid credentials from your address",
                    "too_many_failed_auth",
                )
        for key, limit, message in (
            (address_key, limits.address_requests, "too many requests from your address"),
            (token, limits.token_requests, "too many requests with your API token"),
        ):
            if key is not None:
                seen = WindowCounts(*counts[key], elapsed)
                if seen.estimate > limit:
                    raise self._refuse(seen, limit, message, "too_many_requests")

    async def note_failed_auth(self, address: str) -> None:
        """Count a request from `address` that failed to authenticate."""
        if self.limits.address_failed_auth > 0:
            window, _ = self._window()
            await self.counter.count([f"auth:{address}"], [], window, 2 * self.limits.window_s)

    async def aclose(self) -> None:
        await self.counter.aclose()


def open_rate_limiter(settings: Settings, *, clock: Clock = time.time) -> RateLimiter:
    """Redis-backed when a Redis URL is configured (cluster mode), else in this process's memory (embedded)."""
    counter: WindowCounter = RedisCounter(settings.redis_url) if settings.redis_url else MemoryCounter()
    return RateLimiter(RateLimits.from_settings(settings), counter, clock=clock)
