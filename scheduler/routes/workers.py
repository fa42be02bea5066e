"""`GET /v1/workers`: the live workers and what they serve (docs/api.md "Workers"; docs/architecture.md "Routing").

Farm-wide operations information, no tenant's data: any valid token may read it. Worker names are shown as job
snapshots show them (`gpu0@<8 hex digits>`, `scheduler.snapshots.public_worker_name`), so the operator's host names
stay inside the farm (docs/reliability.md "Secrets"). Read through the scheduler's registry, so the answer may be
up to `scheduler.worker_registry.CACHE_S` seconds old.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from scheduler.auth import TenantDep
from scheduler.deps import ServicesDep
from scheduler.snapshots import public_worker_name

router = APIRouter(prefix="/v1/workers", tags=["workers"])


class WorkerOut(BaseModel):
    worker: str  # as job snapshots name it: `gpu0@<8 hex digits>`
    device: str  # cuda, cpu, mps
    queues: list[str]  # the queues it consumes, interactive first
    models: list[str]  # the models it can load
    started_at: str  # its first announcement (ISO 8601, UTC)
    seen_at: str  # its latest heartbeat
    expires_at: str  # when it is forgotten unless it announces itself again
    # What it is doing now (worker/status.py; null or empty from a worker that announces no status). Its current
    # job's task id is not here: it is another tenant's (the operators' dashboard shows it).
    gpu: str | None = None  # the CUDA device's name, or the device
    loaded_models: list[str] = []  # the models it has in memory now
    busy: bool | None = None  # whether it is rendering a job
    steps_per_s: float | None = None  # step speed of its current or last job
    oom_count: int | None = None  # out-of-GPU-memory errors since it started


class WorkersOut(BaseModel):
    workers: list[WorkerOut]
    queues: list[str]  # every queue some live worker consumes
    models: list[str]  # every model some live worker can load


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _public_status(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The announced status without the current job's task id (any tenant reads this listing)."""
    if not status:
        return {}
    return {
        "gpu": status.get("gpu"),
        "loaded_models": list(status.get("loaded_models") or ()),
        "busy": status.get("current_job") is not None,
        "steps_per_s": status.get("steps_per_s"),
        "oom_count": status.get("oom_count"),
    }


@router.get("", summary="The live workers and the queues and models they serve", response_model=WorkersOut)
async def list_workers(services: ServicesDep, tenant: TenantDep) -> WorkersOut:
    rows = await run_in_threadpool(services.workers.workers)
    return WorkersOut(
        workers=[
            WorkerOut(
                worker=public_worker_name(row.hostname) or "",
                device=row.device,
                queues=list(row.queues),
                models=list(row.models),
                started_at=_iso(row.started_at),
                seen_at=_iso(row.seen_at),
                expires_at=_iso(row.expires_at),
                **_public_status(row.status),
            )
            for row in rows
        ],
        queues=sorted({queue for row in rows for queue in row.queues}),
        models=sorted({model for row in rows for model in row.models}),
    )
