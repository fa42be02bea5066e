"""The delay before the next try after a transient failure: exponential, capped, jittered (reliability.md
"Outages and retries").

Every retry in the farm (a re-queued job's `retry_at`, an upload or a commit retried inside the worker's lease) waits
`backoff_delay(n, base_s, max_s)` before try n + 1: `base_s × 2^(n-1)` capped at `max_s`, times a random factor in
[0.5, 1) ("equal jitter"), so that the workers and jobs an outage stopped together do not all come back in the same
instant, and no try waits less than half its nominal delay.
"""

from __future__ import annotations

import random
from collections.abc import Callable

JITTER_LOW = 0.5  # the shortest delay as a fraction of the nominal one


def nominal_delay(failures: int, base_s: float, max_s: float) -> float:
    """`base_s × 2^(failures-1)`, capped at `max_s`: the delay after the `failures`-th failure in a row (from 1).

    Raises ValueError for `failures` below 1 or a negative base or cap.
    """
    if failures < 1:
        raise ValueError(f"failures counts from 1, not {failures}")
    if base_s < 0 or max_s < 0:
        raise ValueError(f"backoff base and cap must not be negative ({base_s}, {max_s})")
    # 2^60 s is far past any cap; stopping the exponent there keeps the float finite.
    return min(max_s, base_s * 2.0 ** min(failures - 1, 60))


def backoff_delay(failures: int, base_s: float, max_s: float, *, rand: Callable[[], float] = random.random) -> float:
    """The jittered delay after the `failures`-th failure in a row: in [0.5, 1) × `nominal_delay`."""
    return nominal_delay(failures, base_s, max_s) * (JITTER_LOW + (1.0 - JITTER_LOW) * rand())
