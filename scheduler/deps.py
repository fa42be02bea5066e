"""The parts a request handler works with, bundled once per app and handed to routes as a dependency.

`create_app` builds one `Services` and keeps it on `app.state.services`; routes take `ServicesDep` and pass it to
plain functions (submission, snapshots), which is what keeps the routes thin and the logic testable.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import Depends, Request

from scheduler.open_streams import OpenStreams
from scheduler.worker_registry import WorkerRegistry
from shared.config import Settings
from shared.db import Database
from shared.live import LiveStatus
from shared.storage import Storage

if TYPE_CHECKING:
    from scheduler.queue_limit import QueueLimit
    from scheduler.wait_estimate import RunTimeEstimator


class Wakeable(Protocol):
    """What the API needs of the dispatcher: a nudge that new work was committed."""

    def wake(self) -> None: ...


@dataclass(frozen=True)
class PriorityCeiling:
    """The highest job priority each tenant may ask for (docs/api.md "Priority"): `ceilings` per tenant, `default`
    for the others; `unlimited` in development mode, where one tenant has nobody to outrank."""

    ceilings: dict[str, int] = field(default_factory=dict)
    default: int = 0
    unlimited: bool = False

    def of(self, tenant: str) -> int | None:
        """The tenant's ceiling, or None for none."""
        return None if self.unlimited else self.ceilings.get(tenant, self.default)


@dataclass
class Services:
    """Everything the routes use. `dispatcher` is None until the background loops start (or when they are off)."""

    settings: Settings
    db: Database
    live: LiveStatus
    storage: Storage
    celery_app: Any
    estimator: RunTimeEstimator
    queue_limit: QueueLimit
    # SSE streams wait for changes in threads of their own, so that many open streams cannot use up the worker
    # threads that every other (synchronous) route runs in.
    stream_waits: ThreadPoolExecutor
    dispatcher: Wakeable | None = None
    priority_ceiling: PriorityCeiling = field(default_factory=lambda: PriorityCeiling(unlimited=True))
    # The open SSE streams, which a graceful shutdown ends at once (scheduler/open_streams.py).
    streams: OpenStreams = field(default_factory=OpenStreams)
    # What the live workers serve (scheduler/worker_registry.py), read from `db`.
    workers: WorkerRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.workers = WorkerRegistry(self.db)


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
