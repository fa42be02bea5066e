"""The scheduler's HTTP API: `create_app` composes the FastAPI app from the settings and injectable parts.

What it does not do: migrate the database (`renderfarm db upgrade` does; the CLI upgrades first in embedded mode).
At start-up it checks that the schema is at the head revision and refuses to start otherwise, so a scheduler can
never write rows an older schema cannot hold.

Lifespan (with `start_background=True`): a `scheduler.dispatch.Dispatcher`, a `scheduler.reconciler.Reconciler`
and a `scheduler.webhooks.WebhookSender` run in threads of this process; submissions wake the dispatcher. At
shutdown all three are stopped, then the parts this app created itself (not the injected ones) are closed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from scheduler.a1111 import router as a1111_router
from scheduler.auth import TokenTable
from scheduler.dashboard.routes import install_dashboard
from scheduler.deps import PriorityCeiling, Services
from scheduler.errors import BodyLimitMiddleware, InternalErrorMiddleware, install_error_handlers
from scheduler.metrics import install_metrics
from scheduler.model_checks import catalogue_of
from scheduler.openapi import truthful_document
from scheduler.queue_limit import QueueLimit
from scheduler.rate_limits import RateLimiter, open_rate_limiter
from scheduler.routes import assets, events, files, health, jobs, webhooks, workers
from scheduler.routes import batches as batch_routes
from scheduler.wait_estimate import RunTimeEstimator
from shared.config import Settings
from shared.db import Database, head_revision
from shared.errors import ConfigError, DatabaseUnavailable
from shared.job.spec import Img2ImgJob
from shared.live import LiveStatus, open_live_status
from shared.queueing import make_celery_app
from shared.storage import Storage, open_storage

log = logging.getLogger("scheduler.app")

API_VERSION = "1"
STREAM_WAIT_THREADS = 256  # open SSE streams that can wait for changes at once; more wait for a free thread


def require_schema(db: Database) -> None:
    """Raise ConfigError unless the database is at the newest revision. An unreachable database is only logged:
    the process starts and `/readyz` reports it until the database is back."""
    try:
        current = db.schema_revision()
    except DatabaseUnavailable as exc:
        log.warning("cannot check the database schema at start-up: %s", exc.message)
        return
    head = head_revision()
    if current != head:
        raise ConfigError(
            f"the database schema is at revision {current or 'none'}, this scheduler needs {head}; "
            "run `renderfarm db upgrade` first",
            code="schema_out_of_date",
            field="RENDERFARM_DATABASE_URL",
        )


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document, with the job schema (validated by shared.job.spec, not by FastAPI) added and the
    errors, statuses and constraints as the routes really answer them (scheduler/openapi.py)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        job_schema = Img2ImgJob.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(job_schema.pop("$defs", {}))
        schemas["Img2ImgJob"] = job_schema
        app.openapi_schema = truthful_document(document)
        return document

    return build


def _scan_models(services: Services) -> None:
    try:
        catalogue_of(services).checkpoints()
    except Exception:  # a listing or submission scans again and reports what is wrong
        log.exception("scanning the models folder failed")


class _Background:
    """The dispatcher and reconciler loops, imported lazily (the API works without them in tests)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.dispatcher: Any = None
        self.reconciler: Any = None
        self.webhooks: Any = None

    def start(self) -> None:
        from scheduler.dispatch import Dispatcher
        from scheduler.reconciler import Reconciler, reset_dispatch_on_startup
        from scheduler.webhooks import WebhookSender

        s = self.services
        if s.settings.embedded:
            # The in-memory broker starts empty: every queued job must be published again.
            reset_dispatch_on_startup(s.db)
        self.dispatcher = Dispatcher(s.db, s.celery_app, s.live, s.settings)
        # Jobs the reconciler re-queues are published at once, not at the dispatcher's next tick.
        self.reconciler = Reconciler(s.db, s.live, s.settings, on_requeue=self.dispatcher.wake, storage=s.storage)
        self.dispatcher.run_in_thread()
        self.reconciler.run_in_thread()
        # The webhook outbox (scheduler/webhooks.py): sends what transitions wrote, never blocking them.
        self.webhooks = WebhookSender(s.db, s.settings)
        self.webhooks.run_in_thread()
        # Hash the models folder's checkpoints now (P18), not during the first listing or submission: a new 7 GB
        # file takes seconds; known ones come from the hash cache (docs/engine.md "Model files").
        threading.Thread(target=_scan_models, args=(s,), name="rf-model-scan", daemon=True).start()
        s.dispatcher = self.dispatcher

    def stop(self) -> None:
        self.services.dispatcher = None
        for loop in (self.dispatcher, self.reconciler, self.webhooks):
            if loop is not None:
                try:
                    loop.stop()
                except Exception:
                    log.exception("stopping %s failed", type(loop).__name__)


def create_app(
    settings: Settings,
    *,
    celery_app: Any = None,
    live: LiveStatus | None = None,
    storage: Storage | None = None,
    db: Database | None = None,
    start_background: bool = True,
) -> FastAPI:
    """The API app. Parts not given are built from `settings` (and closed by the app at shutdown):
    the database from RENDERFARM_DATABASE_URL, live status from RENDERFARM_REDIS_URL (in-process without it),
    storage from RENDERFARM_STORAGE_URL, the Celery app (publish only) from the same settings.

    Raises ConfigError for invalid settings (tokens included). Does not touch the network until it serves.

    The API tokens are kept only as digests (`TokenTable`); the settings the app keeps and hands on are
    `settings.without_secrets()`, so no route, log line or background loop can reach a token.
    """
    tokens = TokenTable(settings.tenant_tokens())
    operators = settings.operators()
    metrics_token = settings.metrics_token
    secret_box = settings.secret_box()
    ceilings = settings.priority_ceilings()
    rate_limiter: RateLimiter = open_rate_limiter(settings)
    settings = settings.without_secrets()
    owned: list[Callable[[], None]] = []
    if db is None:
        db = Database.from_url(settings.resolved_database_url)
        owned.append(db.close)
    db.events.box = secret_box  # the tenants' webhook secrets, sealed as stored (RENDERFARM_WEBHOOK_SECRETS_KEY)
    if live is None:
        live = open_live_status(settings.redis_url)
        owned.append(live.close)
    if storage is None:
        storage = open_storage(settings)
        owned.append(storage.close)
    if celery_app is None:
        celery_app = make_celery_app(settings)
        owned.append(celery_app.close)
    stream_waits = ThreadPoolExecutor(max_workers=STREAM_WAIT_THREADS, thread_name_prefix="sse-wait")
    services = Services(
        settings=settings,
        db=db,
        live=live,
        storage=storage,
        celery_app=celery_app,
        estimator=RunTimeEstimator(db),
        queue_limit=QueueLimit(lambda tenant, cap: db.stats.queued_count(tenant, cap=cap)),
        stream_waits=stream_waits,
        priority_ceiling=PriorityCeiling(ceilings, settings.max_priority, unlimited=tokens.dev_mode),
    )
    background = _Background(services)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        require_schema(services.db)
        if start_background:
            background.start()
        try:
            yield
        finally:
            background.stop()
            await rate_limiter.aclose()
            stream_waits.shutdown(wait=False, cancel_futures=True)
            for close in reversed(owned):
                try:
                    close()
                except Exception:
                    log.exception("closing a part of the app failed")

    app = FastAPI(
        title="renderfarm",
        version=API_VERSION,
        description="A distributed img2img / inpainting render farm. Errors: {error: {type, code, message, field?}}.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come with the dashboard, their assets served locally (no CDN)
        redoc_url=None,
    )
    app.state.services = services
    app.state.tokens = tokens
    app.state.rate_limiter = rate_limiter
    install_error_handlers(app)
    # Added last = outermost: the size limit applies before anything reads a body; internal errors of every
    # layer below become a typed 500.
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    for module in (jobs, events, assets, files, health, workers, webhooks):
        app.include_router(module.router)
    owned.append(
        install_metrics(app, services, token=metrics_token)
    )  # GET /metrics, read from the database at scrape time
    app.include_router(batch_routes.router)
    app.include_router(a1111_router)  # /sdapi/v1 and /internal: A1111 webui API clients (scheduler/a1111)
    install_dashboard(app, operators)  # /ui/ (and / redirecting there), /docs, /redoc: scheduler/dashboard
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
