"""Time-ordered UUIDs (the version 7 layout of RFC 9562) for database keys.

Why not uuid4: ids that grow with time keep PostgreSQL's primary-key index append-mostly (random keys touch a random
index page per insert, which shows on a 10,000-row batch), and ids made in one process sort in the order they were
made, so the jobs of one batch, which share a `created_at`, list in the order of the manifest.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid

_RAND_A_MAX = 0xFFF  # 12 bits of per-millisecond counter
_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> uuid.UUID:
    """A new UUIDv7: 48 bits of Unix milliseconds, a 12-bit counter (monotonic within this process), 62 random bits."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            # Start low in the counter's range, so many ids in one millisecond do not run out of counter.
            _counter = secrets.randbelow(_RAND_A_MAX // 2)
        else:
            # Same millisecond (or the clock stepped back): keep increasing, borrowing the next millisecond if
            # the counter is full, so ids from this process never go backwards.
            _counter += 1
            if _counter > _RAND_A_MAX:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= counter << 64
    value |= 0b10 << 62  # the RFC 4122/9562 variant
    value |= secrets.randbits(62)
    return uuid.UUID(int=value)
