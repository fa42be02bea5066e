"""What `worker.job_runner.run_job` needs, built once per worker process: `WorkerDeps`, and the one mutable part of
it, the worker's counters (`WorkerStats`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from shared.config import Settings
from shared.db import Database
from shared.images import ImageLimits
from shared.live import LiveStatus
from shared.storage import Storage
from worker.asset_cache import AssetCache
from worker.embedding_catalogs import EmbeddingCatalogs
from worker.engine.models import LoadedModel
from worker.engine.processing import Processed, StableDiffusionProcessingImg2Img, process_images
from worker.preview_publisher import RendererFactory, default_renderer
from worker.status import JobStatus

OOM_UNHEALTHY_AFTER: Final = 3  # consecutive out-of-memory jobs after which a worker should stop taking work

Engine = Callable[[StableDiffusionProcessingImg2Img], Processed]


class ModelSource(Protocol):
    """Where models come from (a `worker.engine.models.ModelCache`): `get(name)` returns a loaded model or raises."""

    def get(self, name: str) -> LoadedModel: ...


@dataclass
class WorkerStats:
    """Per-worker counters (mutable, shared by the jobs of one worker process). Thread-safe."""

    jobs: int = 0
    ooms: int = 0
    consecutive_ooms: int = 0
    draining_since: float | None = None  # monotonic seconds when a warm shutdown began (SIGTERM)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_job(self, out_of_memory: bool) -> None:
        with self._lock:
            self.jobs += 1
            self.consecutive_ooms = self.consecutive_ooms + 1 if out_of_memory else 0

    def record_oom(self) -> None:
        with self._lock:
            self.ooms += 1

    def start_draining(self, now: float) -> None:
        with self._lock:
            if self.draining_since is None:
                self.draining_since = now

    @property
    def unhealthy(self) -> bool:
        """True after OOM_UNHEALTHY_AFTER jobs in a row ran out of GPU memory: the worker should stop taking work."""
        return self.consecutive_ooms >= OOM_UNHEALTHY_AFTER


@dataclass(frozen=True)
class WorkerDeps:
    """Everything `run_job` needs, built once per worker process (after fork). `stats` and `status` are mutable.

    `clock` is monotonic seconds (throttling, lease renewal, retry deadlines); `wall_clock` Unix seconds (live
    progress times); `sleep` waits between the retries of an upload or a commit (tests pass one that advances
    their clock).
    `engine` renders a processing object: `process_images`, or `worker.standin.StandinEngine` for benchmarks.
    """

    settings: Settings
    db: Database
    storage: Storage
    live: LiveStatus
    models: ModelSource
    worker_name: str
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep  # the waits between retries of an upload or a commit
    engine: Engine = process_images
    stats: WorkerStats = field(default_factory=WorkerStats)
    status: JobStatus = field(default_factory=JobStatus)  # the job it renders now, for its announcement
    assets: AssetCache = field(default_factory=AssetCache)  # verified input assets, kept between jobs
    embeddings: EmbeddingCatalogs = field(default_factory=EmbeddingCatalogs)  # each loaded model's embeddings
    previews: RendererFactory = default_renderer  # what draws live previews (tests count its calls)

    @property
    def image_limits(self) -> ImageLimits:
        # Stored inputs were admitted by the API (uploads up to a request body); the worker only guards against
        # decompression bombs and absurd files, so its byte limit is the request limit, not the inline one.
        return ImageLimits(max_pixels=self.settings.max_image_pixels, max_bytes=self.settings.max_request_bytes)
