"""Clocks a test sets and advances: for code that takes `clock: Callable[[], float]` (unix seconds), and for the
repository's `clock: Callable[[], datetime]` (aware UTC)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class ManualClock:
    """Unix seconds that stand still until the test advances them: expiry is exact and instant to test."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class FakeClock:
    """A settable UTC clock, so lease expiry, grace periods and ordering by time are exact and instant."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now
