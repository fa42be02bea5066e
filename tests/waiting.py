"""Waiting for a condition in tests and benchmarks: poll it, never sleep in its place."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_INTERVAL_S = 0.01
MAX_INTERVAL_S = 0.1


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str],
    *,
    max_interval: float = MAX_INTERVAL_S,
) -> T:
    """Call `predicate` until it returns something truthy and return that; after `timeout` seconds, raise an
    AssertionError that names `what` and the predicate's last value. `what` may be a callable, for a description
    that is only worth building on failure (a process's log).

    The pause between calls starts at 10 ms and doubles up to `max_interval`, so a quick condition is seen at once
    and a slow one is not polled in a busy loop. An exception from `predicate` ends the wait at once: a predicate
    that finds the thing it waits for can never come (a process that died) says so by raising.
    """
    deadline = time.monotonic() + timeout
    interval = FIRST_INTERVAL_S
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            description = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {description}; last value: {value!r}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 2, max_interval)
