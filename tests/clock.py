"""A clock a test sets and advances, for code that takes `clock: Callable[[], float]` (unix seconds)."""

from __future__ import annotations

import time


class ManualClock:
    """Unix seconds that stand still until the test advances them: expiry is exact and instant to test."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
