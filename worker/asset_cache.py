"""A worker's cache of uploaded assets' bytes, so that a batch over one init image fetches it once per worker.

Assets are content-addressed (`asset:<sha256>`) and never rewritten, so bytes that were fetched and matched their
sha256 stay right for good: no invalidation is needed. A batch render (a grid of seeds, prompts or strengths over
the same picture) otherwise reads the same object from S3 for every job: a round trip and a hash per job, 6 ms of
a 64×64 job's farm time here (bench/RESULTS.md). URLs of the farm's storage are not cached: their objects may be
written again.

Bounded by bytes (least recently used first out); an object larger than a quarter of the bound is not kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class AssetCache:
    """Verified asset bytes by (tenant, sha256). Thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, tenant: str, sha256: str) -> bytes | None:
        with self._lock:
            data = self._entries.get((tenant, sha256))
            if data is None:
                self.misses += 1
                return None
            self._entries.move_to_end((tenant, sha256))
            self.hits += 1
            return data

    def put(self, tenant: str, sha256: str, data: bytes) -> None:
        """Keep `data`, which the caller has checked hashes to `sha256`."""
        if len(data) > self._max_bytes // 4:
            return
        with self._lock:
            key = (tenant, sha256)
            if key in self._entries:
                return
            self._entries[key] = data
            self._bytes += len(data)
            while self._bytes > self._max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes
