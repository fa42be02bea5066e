"""Probes: `/healthz` (the process answers) and `/readyz` (database, live status and storage all reachable)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from scheduler.deps import Services, ServicesDep
from shared.errors import Unavailable

log = logging.getLogger("scheduler.routes.health")

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 5.0  # seconds each dependency gets to answer a readiness probe
NOT_READY_RETRY_AFTER_S = 5.0


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def run_checks(services: Services, timeout_s: float = CHECK_TIMEOUT_S) -> dict[str, str]:
    """Each dependency's state: "ok", "unreachable" or "timeout". All run at once, each bounded by `timeout_s`."""
    checks: dict[str, Callable[[], None]] = {
        "database": services.db.ping,
        "live_status": services.live.ping,
        "storage": services.storage.check,
    }
    results: dict[str, str] = {}
    # A private pool: a hanging dependency must not hold a probe's answer or the shared worker threads.
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="readyz")
    try:
        futures = {name: pool.submit(check) for name, check in checks.items()}
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                results[name] = "ok"
            except FutureTimeout:
                log.warning("readiness: %s gave no answer within %g s", name, timeout_s)
                results[name] = "timeout"
            except Exception as exc:
                # The details (hosts, ports, driver messages) go to the log, not to an unauthenticated probe.
                log.warning("readiness: %s failed: %s: %s", name, type(exc).__name__, exc)
                results[name] = "unreachable"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


@router.get(
    "/readyz",
    summary="Database, live status and storage are reachable",
    responses={503: {"description": "a dependency is unreachable; the body names it"}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    results = await run_in_threadpool(run_checks, services)
    failing = [name for name, result in results.items() if result != "ok"]
    if not failing:
        return JSONResponse({"status": "ready", "checks": results})
    error = Unavailable(
        f"not ready: {', '.join(failing)} unreachable", retry_after_s=NOT_READY_RETRY_AFTER_S, code="not_ready"
    )
    body = error.to_body()
    body["error"]["field"] = failing[0]
    body["error"]["failing"] = failing
    body["checks"] = results
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(int(NOT_READY_RETRY_AFTER_S))})
