"""The dashboard's routes under `/ui/` (docs/dashboard.md), `/` redirecting there, and `/docs` and `/redoc` with
their assets served from this package (no CDN).

`install_dashboard(app, operators)` mounts all of it; `create_app` calls it. Pages answer HTML; a request with the
`X-Dashboard-Fragment` header (dashboard.js, refreshing) gets only the page's refreshed part.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from scheduler.auth import TokenTable
from scheduler.dashboard import pages
from scheduler.dashboard.access import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    Viewer,
    cookie_value,
    csrf_ok,
    viewer_of,
)
from scheduler.dashboard.html import STATIC, esc, frame
from scheduler.deps import Services, ServicesDep
from scheduler.rate_limits import RateLimiter
from scheduler.routes import checked_task_id
from scheduler.routes.jobs import cancel_job
from scheduler.submission import submit_job
from shared.errors import Gone, InputError, NotFound
from shared.states import JobState

STATIC_DIR: Final = Path(__file__).parent / "static"
FRAGMENT_HEADER: Final = "x-dashboard-fragment"
MAX_FORM_BYTES: Final = 16 * 1024
# Pages may load only this origin's scripts, styles and pictures (data: for live previews); no frames.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob: http: https:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def _page(request: Request, title: str, viewer: Viewer, main: str, *, live: bool = True) -> HTMLResponse:
    if request.headers.get(FRAGMENT_HEADER):
        return _html(main)
    return _html(frame(title, viewer, main, live=live))


def _to_sign_in() -> RedirectResponse:
    return RedirectResponse("/ui/signin", status_code=303)


def _not_found(viewer: Viewer, what: str) -> HTMLResponse:
    return _html(frame("Not found", viewer, f'<h1>Not found</h1><p data-testid="not-found">{esc(what)}</p>'), 404)


def _purged(viewer: Viewer, gone: Gone) -> HTMLResponse:
    """A job or batch the retention purge deleted: 410, saying when (docs/api.md "Retention")."""
    when = gone.purged_at.isoformat(timespec="seconds").replace("+00:00", "Z")
    text = f'<h1>Purged</h1><p data-testid="purged">{esc(gone.message)} ({esc(when)}).</p>'
    return _html(frame("Purged", viewer, text), 410)


def _tenant_of(viewer: Viewer, asked: str | None) -> str | None:
    """The tenant whose job or batch a page shows: the viewer's own, or (operators) the one asked for."""
    if asked is None or asked == viewer.tenant:
        return viewer.tenant
    return asked if viewer.may_see(asked) else None


async def _form(request: Request) -> dict[str, str]:
    """The url-encoded form of a POST (the dashboard's forms are tiny; no multipart)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def _forbidden(viewer: Viewer | None, message: str) -> HTMLResponse:
    return _html(frame("Forbidden", viewer, f'<h1>Forbidden</h1><p data-testid="forbidden">{esc(message)}</p>'), 403)


CROSS_SITE_MESSAGE: Final = "a page of another site sent this form; use the dashboard's own pages"


def _cross_site(request: Request) -> bool:
    """Whether the browser says a page of another origin made this POST: `Sec-Fetch-Site: cross-site`, or an
    `Origin` (sent with every cross-origin form post) naming another host. The sign-in form has no session to tie
    a CSRF token to, so this is what keeps another site from signing a browser in with the attacker's token; the
    buttons check it besides their token. Requests without either header (non-browser clients) pass."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    # The host only: behind a TLS-terminating proxy the scheme this process sees differs from the browser's.
    return origin == "null" or urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/signin")
async def sign_in_form(request: Request) -> Response:
    if viewer_of(request) is not None:
        return RedirectResponse("/ui/", status_code=303)
    return _html(frame("Sign in", None, pages.sign_in_page()))


@router.post("/ui/signin")
async def sign_in(request: Request) -> Response:
    """Check the posted token (within the rate limits of the API's authentication) and set the session cookie."""
    table: TokenTable = request.app.state.tokens
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    address = request.client.host if request.client and request.client.host else "unix-socket"
    if table.dev_mode:
        return RedirectResponse("/ui/", status_code=303)
    if _cross_site(request):
        return _forbidden(None, CROSS_SITE_MESSAGE)
    if limiter is not None:
        await limiter.admit(address, None)
    token = (await _form(request)).get("token", "").strip()
    identity = table.identify(token) if token else None
    if identity is None:
        if limiter is not None:
            await limiter.note_failed_auth(address)
        return _html(frame("Sign in", None, pages.sign_in_page("That token is not valid.")), 401)
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie_value(token),
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/ui/signout")
async def sign_out(request: Request) -> Response:
    viewer = viewer_of(request)
    if viewer is not None and not csrf_ok(viewer, (await _form(request)).get(CSRF_FIELD)):
        return _forbidden(viewer, "the form's CSRF token is missing or wrong; reload the page and try again")
    response = _to_sign_in()
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/ui/")
async def queue(
    request: Request,
    services: ServicesDep,
    state: Annotated[JobState | None, Query()] = None,
    tenant: Annotated[str | None, Query()] = None,
    before: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    viewer = viewer_of(request)
    if viewer is None:
        return _to_sign_in()
    owner = _tenant_of(viewer, tenant) if tenant is not None else None
    if tenant is not None and owner is None:
        return _not_found(viewer, f"no tenant {tenant}")
    if before is not None and owner is None and len(viewer.tenants_shown()) > 1:
        owner = viewer.tenant  # pages are of one tenant's list
    try:
        main = await run_in_threadpool(pages.queue_page, services, viewer, state, owner, before)
    except InputError:  # a cursor this server did not make
        return _html(frame("Bad request", viewer, '<h1>Bad request</h1><p>That page of the queue does not exist; '
                           '<a href="/ui/">start from the newest jobs</a>.</p>'), 400)  # fmt: skip
    return _page(request, "Queue", viewer, main)


@router.get("/ui/jobs/{task_id}")
async def job(
    request: Request, task_id: str, services: ServicesDep, tenant: Annotated[str | None, Query()] = None
) -> Response:
    viewer = viewer_of(request)
    if viewer is None:
        return _to_sign_in()
    owner = _tenant_of(viewer, tenant)
    if owner is None:
        return _not_found(viewer, f"no job {task_id}")

    def read() -> str:
        row = services.db.jobs.get(owner, checked_task_id(task_id))
        live = pages.job_live_part(services, viewer, row)
        if request.headers.get(FRAGMENT_HEADER):
            return live
        return pages.job_page_head(viewer, row) + f'<div id="job-live" data-refresh-ms="1000">{live}</div>'

    try:
        body = await run_in_threadpool(read)
    except NotFound:
        return _not_found(viewer, f"no job {task_id}")
    except Gone as gone:
        return _purged(viewer, gone)
    if request.headers.get(FRAGMENT_HEADER):
        return _html(body)
    return _html(frame(f"Job {task_id}", viewer, body))


async def _job_action(
    request: Request, task_id: str, tenant: str | None, action: Callable[[Services, str, str], str]
) -> Response:
    """Run a button's action on a job after checking the session and the CSRF token; back to a job page."""
    viewer = viewer_of(request)
    if viewer is None:
        return _to_sign_in()
    if _cross_site(request):
        return _forbidden(viewer, CROSS_SITE_MESSAGE)
    if not csrf_ok(viewer, (await _form(request)).get(CSRF_FIELD)):
        return _forbidden(viewer, "the form's CSRF token is missing or wrong; reload the page and try again")
    owner = _tenant_of(viewer, tenant)
    if owner is None:
        return _not_found(viewer, f"no job {task_id}")
    services: Services = request.app.state.services
    try:
        shown = await run_in_threadpool(action, services, owner, checked_task_id(task_id))
    except NotFound:
        return _not_found(viewer, f"no job {task_id}")
    query = f"?tenant={owner}" if owner != viewer.tenant else ""
    return RedirectResponse(f"/ui/jobs/{shown}{query}", status_code=303)


def _cancel(services: Services, tenant: str, task_id: str) -> str:
    cancel_job(task_id, services, tenant)  # the API's own cancel: durable flag, then the worker's fast one
    return task_id


def _retry(services: Services, tenant: str, task_id: str) -> str:
    """Submit the job's stored request again under a new task id (its pictures are the tenant's assets already)."""
    row = services.db.jobs.get(tenant, task_id)
    body = dict(row.request) if isinstance(row.request, dict) else {}
    body.pop("force_task_id", None)
    new_id = f"{task_id[:40]}-retry-{uuid.uuid4().hex[:8]}"
    return submit_job(services, tenant, body, task_id=checked_task_id(new_id)).row.task_id


@router.post("/ui/jobs/{task_id}/cancel")
async def cancel(request: Request, task_id: str, tenant: Annotated[str | None, Query()] = None) -> Response:
    return await _job_action(request, task_id, tenant, _cancel)


@router.post("/ui/jobs/{task_id}/retry")
async def retry(request: Request, task_id: str, tenant: Annotated[str | None, Query()] = None) -> Response:
    return await _job_action(request, task_id, tenant, _retry)


@router.get("/ui/batches/{batch_id}")
async def batch(
    request: Request, batch_id: uuid.UUID, services: ServicesDep, tenant: Annotated[str | None, Query()] = None
) -> Response:
    viewer = viewer_of(request)
    if viewer is None:
        return _to_sign_in()
    owner = _tenant_of(viewer, tenant)
    if owner is None:
        return _not_found(viewer, f"no batch {batch_id}")
    try:
        main = await run_in_threadpool(pages.batch_page, services, viewer, owner, batch_id)
    except NotFound:
        return _not_found(viewer, f"no batch {batch_id}")
    except Gone as gone:
        return _purged(viewer, gone)
    return _page(request, f"Batch {batch_id}", viewer, main)


@router.get("/ui/workers")
async def workers(request: Request, services: ServicesDep) -> Response:
    viewer = viewer_of(request)
    if viewer is None:
        return _to_sign_in()
    if not viewer.operator:
        return _forbidden(viewer, "the workers page is for operators (RENDERFARM_OPERATOR_TENANTS)")
    memory: pages.WorkerMemory = request.app.state.dashboard_workers
    main = await run_in_threadpool(pages.workers_page, services, viewer, memory)
    return _page(request, "Workers", viewer, main)


# The viewers' pages have inline scripts and styles (FastAPI's); this only keeps their pictures on this origin, so
# nothing is fetched from the internet (ReDoc's footer logo would come from its CDN).
DOCS_POLICY: Final = {"Content-Security-Policy": "img-src 'self' data: blob:"}


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="renderfarm API",
        swagger_js_url=f"{STATIC}/vendor/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC}/vendor/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{STATIC}/favicon.svg",
    )
    page.headers.update(DOCS_POLICY)
    return page


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title="renderfarm API",
        redoc_js_url=f"{STATIC}/vendor/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{STATIC}/favicon.svg",
        with_google_fonts=False,
    )
    page.headers.update(DOCS_POLICY)
    return page


def install_dashboard(app: FastAPI, operators: frozenset[str]) -> None:
    """Mount the dashboard, its static files and the local API docs on `app` (created with `docs_url=None` and
    `redoc_url=None`, so FastAPI's CDN-loading pages are not there)."""
    app.state.dashboard_operators = operators
    app.state.dashboard_workers = pages.WorkerMemory({})
    app.include_router(router)
    app.mount(STATIC, StaticFiles(directory=STATIC_DIR), name="dashboard-static")
