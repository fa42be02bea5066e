"""The dashboard's pages (docs/dashboard.md): the queue, a job, a batch, the workers, sign-in.

Each function reads what its page shows (blocking: database, storage, live status; the routes call them from a
worker thread) and returns the HTML of the page's `<main>`. The data are the API's own: job snapshots
(`scheduler.snapshots.read_snapshot`, with the waiting reason and ETA), batch status (`scheduler.batches.read_batch`)
and the worker registry, so the dashboard never shows anything the API would answer differently.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from scheduler.batches import read_batch
from scheduler.dashboard.access import Viewer
from scheduler.dashboard.html import between, clock, esc, eta, join, post_button, seconds
from scheduler.deps import Services
from scheduler.snapshots import read_snapshot, safe_live_many
from shared.db import JobRow, WorkerRow
from shared.errors import NotFound
from shared.states import JobState

QUEUE_ROWS_PER_TENANT: Final = 100  # newest jobs shown per tenant on the queue page (one tenant's: per page)
TOTALS_CAP: Final = 10_000  # the counts by state stop here per tenant ("10000+")
BATCH_ITEMS: Final = 1000  # items of a batch laid out on its page
ASSET_URL_EXPIRES_S: Final = 3600
# The order of the queue page: what is moving first, then what waits, then what is done.
STATE_ORDER: Final = {
    JobState.RUNNING: 0,
    JobState.QUEUED: 1,
    JobState.FAILED: 2,
    JobState.CANCELED: 3,
    JobState.SUCCEEDED: 4,
}


def job_href(tenant: str, task_id: str, viewer: Viewer) -> str:
    suffix = f"?tenant={tenant}" if tenant != viewer.tenant else ""
    return f"/ui/jobs/{task_id}{suffix}"


def state_badge(state: str) -> str:
    return f'<span class="state state-{esc(state)}" data-testid="state">{esc(state)}</span>'


def progress_bar(snapshot: Mapping[str, Any]) -> str:
    fraction = float(snapshot.get("progress") or 0.0)
    steps = f"{snapshot.get('step', 0)}/{snapshot.get('total_steps') or '?'}"
    return f'<progress max="1" value="{fraction:.3f}"></progress> <span class="steps">{esc(steps)}</span>'


# --------------------------------------------------------------------------------------------------------------
# The queue


def queue_href(state: JobState | None = None, tenant: str | None = None, before: str | None = None) -> str:
    """The queue page's address: one state, one tenant (operators), a page of older jobs; each only when given."""
    asked = {"state": state.value if state is not None else None, "tenant": tenant, "before": before}
    query = urlencode({name: value for name, value in asked.items() if value})
    return f"/ui/?{query}" if query else "/ui/"


def queue_page(
    services: Services, viewer: Viewer, state: JobState | None, tenant: str | None = None, before: str | None = None
) -> str:
    """The newest jobs of every tenant shown, or of `tenant` alone (running, then queued, then finished; higher
    priority first), the waiting reason and ETA of each unfinished job, and the tenants' counts by state (each
    counted up to TOTALS_CAP per tenant). One tenant's list pages on: `before` is the cursor of its next page
    (`JobsRepo.list_jobs`; raises InputError for a cursor this server did not make)."""
    tenants = (tenant,) if tenant is not None else viewer.tenants_shown()
    paged = len(tenants) == 1
    entries: list[tuple[JobRow, dict[str, Any]]] = []
    older: str | None = None
    for shown_tenant in tenants:
        rows, older = services.db.jobs.list_jobs(
            shown_tenant, state=state, limit=QUEUE_ROWS_PER_TENANT, cursor=before if paged else None
        )
        live = safe_live_many(services, rows)
        entries += [(row, read_snapshot(services, row, live=live)) for row in rows]
    entries.sort(key=lambda entry: (STATE_ORDER[entry[0].state], -entry[0].priority, entry[0].created_at))
    counts = {
        job_state: f"{total}+" if capped else str(total)
        for job_state, (total, capped) in services.db.stats.tenant_counts(tenants, cap=TOTALS_CAP).items()
    }
    only = tenant if tenant != viewer.tenant else None
    filters = join(
        f'<a href="{esc(queue_href(job_state, only))}" class="count" data-testid="count-{job_state.value}">'
        f"{esc(job_state.value)} <b>{counts[job_state]}</b></a>"
        for job_state in STATE_ORDER
    )
    shown = f" · only {esc(state.value)} (<a href='{esc(queue_href(None, only))}'>all</a>)" if state else ""
    whose = f" of {esc(tenant)} (<a href='/ui/'>every tenant</a>)" if only is not None else ""
    listed = (
        f"Jobs{whose}, newest first, {QUEUE_ROWS_PER_TENANT} a page"
        if paged
        else f"Newest {QUEUE_ROWS_PER_TENANT} jobs per tenant (a tenant's name lists all of its jobs)"
    )
    counted = f"every job of the tenants shown, up to {TOTALS_CAP:,} of a state per tenant"
    pager = join(
        link
        for link in (
            f'<a href="{esc(queue_href(state, only))}" data-testid="newest">newest</a>' if before else "",
            f'<a href="{esc(queue_href(state, only, older))}" data-testid="older">older jobs →</a>' if older else "",
        )
        if link
    )
    tenant_column = viewer.operator
    head = join(
        f"<th>{name}</th>"
        for name in (
            "Task",
            *(["Tenant"] if tenant_column else []),
            "State",
            "Priority",
            "Progress",
            "Waiting",
            "ETA",
            "Batch",
            "Created",
        )
    )
    body_rows = []
    for row, snapshot in entries:
        waiting = snapshot.get("waiting") or {}
        batch = (
            f'<a href="/ui/batches/{row.batch_id}{"?tenant=" + row.tenant if row.tenant != viewer.tenant else ""}">'
            f"{str(row.batch_id)[:8]}</a>"
            if row.batch_id
            else ""
        )
        cells = [
            f'<td><a href="{esc(job_href(row.tenant, row.task_id, viewer))}">{esc(row.task_id)}</a></td>',
            *(
                [f'<td><a href="{esc(queue_href(None, row.tenant))}">{esc(row.tenant)}</a></td>']
                if tenant_column
                else []
            ),
            f"<td>{state_badge(row.state.value)}</td>",
            f"<td>{row.priority}</td>",
            f"<td>{progress_bar(snapshot)}</td>",
            f'<td class="waiting" title="{esc(waiting.get("reason"))}">{esc(waiting.get("message", ""))}</td>',
            f'<td data-testid="eta">{esc(eta(snapshot.get("eta_s"), snapshot.get("eta_range_s")))}</td>',
            f"<td>{batch}</td>",
            f"<td>{esc(clock(snapshot.get('created_at')))}</td>",
        ]
        body_rows.append(f'<tr data-task-id="{esc(row.task_id)}" data-state="{row.state.value}">{join(cells)}</tr>')
    table = (
        f'<table class="jobs" data-testid="jobs"><thead><tr>{head}</tr></thead><tbody>{join(body_rows)}</tbody></table>'
        if body_rows
        else '<p class="empty">No jobs yet.</p>'
    )
    return (
        f'<h1>Queue</h1><div class="counts" title="{counted}">{filters}</div>'
        f'<p class="muted">{listed}{shown}. Counts: {counted}.</p>{table}'
        + (f'<p class="pager">{pager}</p>' if pager else "")
    )


# --------------------------------------------------------------------------------------------------------------
# A job


def _asset_url(services: Services, tenant: str, reference: object) -> str | None:
    """The download URL of an `asset:<sha256>` reference of the job's request (its input or mask), or None."""
    if not isinstance(reference, str) or not reference.startswith("asset:"):
        return None
    try:
        asset = services.db.assets.get(tenant, reference.removeprefix("asset:"))
    except NotFound:
        return None
    return services.storage.download_url(asset.storage_key, ASSET_URL_EXPIRES_S)


def _picture(label: str, url: str | None) -> str:
    testid = label.lower()
    if url is None:
        return (
            f'<figure data-testid="picture-{testid}" class="missing"><div class="none">none</div>'
            f"<figcaption>{esc(label)}</figcaption></figure>"
        )
    return (
        f'<figure data-testid="picture-{testid}"><a href="{esc(url)}"><img src="{esc(url)}" alt="{esc(label)}"></a>'
        f"<figcaption>{esc(label)}</figcaption></figure>"
    )


def job_live_part(services: Services, viewer: Viewer, row: JobRow) -> str:
    """What changes while a job runs: state, progress, ETA, waiting reason, preview; then its pictures and facts."""
    snapshot = read_snapshot(services, row, previews=True)
    request: Mapping[str, Any] = row.request if isinstance(row.request, Mapping) else {}
    final = row.is_terminal
    waiting = snapshot.get("waiting") or {}
    status = [
        f"<dt>State</dt><dd>{state_badge(row.state.value)}"
        f"{' (cancel requested)' if snapshot.get('cancel_requested') else ''}</dd>",
        f"<dt>Progress</dt><dd>{progress_bar(snapshot)}</dd>",
        f'<dt>ETA</dt><dd data-testid="eta">{esc(eta(snapshot.get("eta_s"), snapshot.get("eta_range_s")))}</dd>',
        f'<dt>Waiting</dt><dd data-testid="waiting">{esc(waiting.get("message", "–"))}</dd>',
        f"<dt>Worker</dt><dd>{esc(snapshot.get('worker') or '–')}</dd>",
        f"<dt>Attempt</dt><dd>{row.attempt} of {row.max_attempts}</dd>",
        f"<dt>Priority</dt><dd>{row.priority}</dd>",
    ]
    error = snapshot.get("error")
    if error:
        status.append(f'<dt>Error</dt><dd class="error">{esc(error["code"])}: {esc(error["message"])}</dd>')
    preview = snapshot.get("preview")
    preview_html = (
        f'<figure data-testid="preview"><img src="{esc(preview["image"])}" alt="live preview">'
        f"<figcaption>preview, step {preview['step']}</figcaption></figure>"
        if preview
        else ""
    )
    inputs = request.get("init_images") or []
    artifacts: Sequence[Mapping[str, Any]] = snapshot.get("artifacts") or []
    results = [a for a in artifacts if a["kind"] == "result"]
    overlays = [a for a in artifacts if a["kind"] == "overlay"]
    masks = [a for a in artifacts if a["kind"] == "mask"]
    mask_url = _asset_url(services, row.tenant, request.get("mask")) or (masks[0]["url"] if masks else None)
    pictures = join(
        [
            _picture("Input", _asset_url(services, row.tenant, inputs[0] if inputs else None)),
            _picture("Mask", mask_url),
            _picture("Overlay", overlays[0]["url"] if overlays else None),
            _picture("Result", results[0]["url"] if results else None),
        ]
    )
    more_results = join(_picture(f"Result {a['index']}", a["url"]) for a in results[1:])
    first = results[0] if results else {}
    timings = [
        ("Created", clock(snapshot.get("created_at"))),
        ("Started", clock(snapshot.get("started_at"))),
        ("Finished", clock(snapshot.get("finished_at"))),
        ("Waited", seconds(between(snapshot.get("created_at"), snapshot.get("started_at")))),
        ("Ran", seconds(between(snapshot.get("started_at"), snapshot.get("finished_at")))),
    ]
    facts = [
        f'<dt>Seed</dt><dd data-testid="seed">{esc(first.get("seed", request.get("seed", "–")))}</dd>',
        f"<dt>Prompt</dt><dd>{esc(request.get('prompt', ''))}</dd>",
        *(f"<dt>{name}</dt><dd>{esc(value)}</dd>" for name, value in timings),
    ]
    warnings = join(f"<li>{esc(w.get('code'))}: {esc(w.get('message'))}</li>" for w in snapshot.get("warnings", []))
    return (
        f'<div class="job" data-final="{"true" if final else "false"}" data-state="{row.state.value}">'
        f'<dl class="status">{join(status)}</dl>{preview_html}'
        f'<div class="pictures" data-testid="pictures">{pictures}{more_results}</div>'
        f'<dl class="facts">{join(facts)}</dl>'
        f'<h2>Infotext</h2><pre class="infotext" data-testid="infotext">{esc(first.get("infotext") or "–")}</pre>'
        f"{'<h2>Warnings</h2><ul>' + warnings + '</ul>' if warnings else ''}</div>"
    )


def job_page_head(viewer: Viewer, row: JobRow) -> str:
    """The job page's fixed part: title and the buttons (outside the refreshed part, so a click is never lost)."""
    base = f"/ui/jobs/{row.task_id}"
    tenant_query = f"?tenant={row.tenant}" if row.tenant != viewer.tenant else ""
    batch = (
        f' · batch <a href="/ui/batches/{row.batch_id}{tenant_query}">{str(row.batch_id)[:8]}</a>'
        if row.batch_id
        else ""
    )
    return (
        f'<h1>Job <code>{esc(row.task_id)}</code></h1><p class="muted">tenant {esc(row.tenant)}{batch}</p>'
        f'<div class="buttons">{post_button(viewer, base + "/cancel" + tenant_query, "Cancel", "cancel")}'
        f"{post_button(viewer, base + '/retry' + tenant_query, 'Retry as a new job', 'retry')}</div>"
    )


# --------------------------------------------------------------------------------------------------------------
# A batch


def _axis_label(value: Any) -> str:
    """An axis value as a header: strings as they are, asset references shortened, others as JSON."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return value[:18] + "…" if value.startswith("asset:") else value
    return json.dumps(value)


@dataclass(frozen=True)
class GridCell:
    task_id: str
    snapshot: Mapping[str, Any]


def _cell(viewer: Viewer, tenant: str, cell: GridCell | None) -> str:
    if cell is None:
        return "<td></td>"
    snapshot = cell.snapshot
    results = [a for a in snapshot.get("artifacts", []) if a["kind"] == "result"]
    inner = (
        f'<img src="{esc(results[0]["url"])}" alt="{esc(cell.task_id)}">'
        if results
        else f"{state_badge(snapshot['state'])}<br>{progress_bar(snapshot)}"
    )
    return (
        f'<td class="cell" data-task-id="{esc(cell.task_id)}" data-state="{esc(snapshot["state"])}">'
        f'<a href="{esc(job_href(tenant, cell.task_id, viewer))}">{inner}</a></td>'
    )


def grid_tables(
    viewer: Viewer, tenant: str, axes: Sequence[str], items: Sequence[tuple[Mapping[str, Any], GridCell]]
) -> str:
    """The grid's results laid out by its axes, as the webui's X/Y/Z plot: the last axis across (X), the one
    before down (Y), and one table per value of any earlier axis (Z). Values are read from the children's requests,
    in the order they first appear (for a product grid, the order of the axes' lists)."""
    values: list[list[str]] = [[] for _ in axes]
    keyed: dict[tuple[str, ...], GridCell] = {}
    labels: dict[str, str] = {}
    for request, cell in items:
        key = []
        for position, axis in enumerate(axes):
            encoded = json.dumps(request.get(axis), sort_keys=True)
            labels[encoded] = _axis_label(request.get(axis))
            if encoded not in values[position]:
                values[position].append(encoded)
            key.append(encoded)
        keyed[tuple(key)] = cell
    x_values = values[-1]
    y_values = values[-2] if len(axes) >= 2 else [""]
    z_axes = list(axes[:-2])
    z_keys: list[tuple[str, ...]] = [()]
    for position in range(len(z_axes)):
        z_keys = [(*prefix, value) for prefix in z_keys for value in values[position]]
    x_name = axes[-1]
    y_name = axes[-2] if len(axes) >= 2 else ""
    tables = []
    for z_key in z_keys:
        caption = join(
            f'<span class="axis-z">{esc(name)} = {esc(labels[value])}</span> '
            for name, value in zip(z_axes, z_key, strict=True)
        )
        header = join(f'<th class="axis-x" scope="col">{esc(labels[x])}</th>' for x in x_values)
        rows = []
        for y in y_values:
            row_head = f'<th class="axis-y" scope="row">{esc(labels[y]) if y else ""}</th>'
            cells = join(_cell(viewer, tenant, keyed.get((*z_key, *((y,) if y_name else ()), x))) for x in x_values)
            rows.append(f"<tr>{row_head}{cells}</tr>")
        tables.append(
            f'<table class="grid" data-testid="grid">{"<caption>" + caption + "</caption>" if caption else ""}'
            f'<thead><tr><th class="corner">{esc(y_name)} ↓ / {esc(x_name)} →</th>{header}</tr></thead>'
            f"<tbody>{join(rows)}</tbody></table>"
        )
    return join(tables)


def batch_page(services: Services, viewer: Viewer, tenant: str, batch_id: uuid.UUID) -> str:
    """A batch's aggregate progress and its items: a grid laid out by its axes, a list as a gallery."""
    status = read_batch(services, tenant, batch_id, limit=BATCH_ITEMS)
    batch = services.db.batches.get(tenant, batch_id)
    rows, _ = services.db.jobs.list_jobs(tenant, batch_id=batch_id, limit=BATCH_ITEMS, oldest_first=True)
    snapshots = {item["task_id"]: item for item in status["items"]}
    items = [
        (row.request if isinstance(row.request, Mapping) else {}, GridCell(row.task_id, snapshots[row.task_id]))
        for row in rows
        if row.task_id in snapshots
    ]
    manifest = batch.manifest if isinstance(batch.manifest, Mapping) else {}
    axes = [str(axis) for axis in manifest.get("axes") or []]
    counts = join(
        f'<span class="count">{esc(name)} <b>{count}</b></span>' for name, count in status["counts"].items() if count
    )
    summary = (
        f'<p><progress max="1" value="{status["progress"]}" data-testid="batch-progress"></progress> '
        f"{status['finished']}/{status['total']} finished · ETA "
        f"{esc(eta(status.get('eta_s'), status.get('eta_range_s')))} · mode {esc(status['mode'])}</p>"
        f'<div class="counts">{counts}</div>'
    )
    if axes and batch.mode == "product":
        layout = grid_tables(viewer, tenant, axes, items)
    else:
        header = join(f"<th>{esc(axis)}</th>" for axis in axes)
        rows_html = join(
            f"<tr><td>{index}</td>{join('<td>' + esc(_axis_label(request.get(axis))) + '</td>' for axis in axes)}"
            f"{_cell(viewer, tenant, cell)}</tr>"
            for index, (request, cell) in enumerate(items)
        )
        layout = (
            f'<table class="list" data-testid="items"><thead><tr><th>#</th>{header}<th>Result</th></tr></thead>'
            f"<tbody>{rows_html}</tbody></table>"
        )
    final = status["finished"] == status["total"]
    return (
        f'<div data-final="{"true" if final else "false"}"><h1>Batch <code>{esc(batch_id)}</code></h1>'
        f'<p class="muted">tenant {esc(tenant)} · created {esc(clock(status["created_at"]))}</p>{summary}{layout}</div>'
    )


# --------------------------------------------------------------------------------------------------------------
# Workers


@dataclass
class WorkerMemory:
    """The workers this scheduler process has seen, so that one whose announcement expired shows as gone rather
    than vanishing from the page (the registry lists only live announcements). Forgotten at restart."""

    seen: dict[str, WorkerRow]

    def update(self, live: Sequence[WorkerRow]) -> list[tuple[WorkerRow, bool]]:
        """Remember `live` and return every worker seen, with whether it is live now."""
        for row in live:
            self.seen[row.hostname] = row
        names = {row.hostname for row in live}
        return [(row, row.hostname in names) for row in self.seen.values()]


SILENT_AFTER_HEARTBEATS: Final = 1.5  # a worker whose last heartbeat is older than this many intervals missed one


def worker_status(row: WorkerRow, live: bool, now: datetime, heartbeat_misses: int) -> str:
    """`live`; `silent` once it missed a heartbeat (its last one is 1.5 intervals old: an announcement lasts
    `heartbeat_misses` intervals, RENDERFARM_WORKER_HEARTBEAT_MISSES); `gone` once the registry no longer lists it."""
    if not live:
        return "gone"
    interval = (row.expires_at - row.seen_at).total_seconds() / max(heartbeat_misses, 1)
    return "silent" if (now - row.seen_at).total_seconds() > SILENT_AFTER_HEARTBEATS * interval else "live"


def _current_job(row: WorkerRow, running: Mapping[str, str]) -> str:
    """The job the worker says it renders (a link when it is one of the jobs shown) with its step, else the jobs
    the database has running on it (a worker that announces no status), else a dash."""
    status = row.status or {}
    current = status.get("current_job")
    if not current:
        return join(running.values()) or "–"
    step, total = status.get("step"), status.get("total_steps")
    where = f' <span class="muted" data-testid="worker-step">step {esc(step)}/{esc(total)}</span>' if total else ""
    return f'<span data-testid="worker-job">{running.get(str(current)) or esc(current)}</span>{where}'


def _status_cells(row: WorkerRow, running: Mapping[str, str]) -> str:
    """GPU, loaded models, current job, step speed, OOM count (`worker.status`); dashes from a worker that
    announces no status."""
    status = row.status or {}
    speed = status.get("steps_per_s")
    oom = status.get("oom_count")
    return (
        f"<td>{esc(row.device)}{' · ' + esc(status['gpu']) if status.get('gpu') else ''}</td>"
        f'<td data-testid="worker-loaded">{esc(", ".join(status.get("loaded_models") or ())) or "–"}</td>'
        f"<td>{_current_job(row, running)}</td>"
        f'<td data-testid="worker-speed">{"–" if speed is None else esc(f"{float(speed):.2f} it/s")}</td>'
        f'<td data-testid="worker-ooms">{"–" if oom is None else esc(oom)}</td>'
    )


def workers_page(services: Services, viewer: Viewer, memory: WorkerMemory) -> str:
    live_rows = services.workers.refresh()
    now = datetime.now(UTC)
    running: dict[str, dict[str, str]] = {}  # per worker, its running jobs' links by task id
    for tenant in viewer.tenants_shown():
        rows, _ = services.db.jobs.list_jobs(tenant, state=JobState.RUNNING, limit=100)
        for row in rows:
            if row.worker:
                running.setdefault(row.worker, {})[row.task_id] = (
                    f'<a href="{esc(job_href(row.tenant, row.task_id, viewer))}">{esc(row.task_id)}</a>'
                )
    body = []
    for worker, live in sorted(memory.update(live_rows), key=lambda item: item[0].hostname):
        status = worker_status(worker, live, now, services.settings.worker_heartbeat_misses)
        body.append(
            f'<tr data-worker="{esc(worker.hostname)}" data-status="{status}">'
            f'<td>{esc(worker.hostname)}</td><td><span class="state worker-{status}">{status}</span></td>'
            f"{_status_cells(worker, running.get(worker.hostname, {}))}"
            f"<td>{esc(', '.join(worker.models))}</td><td>{esc(', '.join(worker.queues))}</td>"
            f"<td>{esc(clock(worker.seen_at))} ({seconds((now - worker.seen_at).total_seconds())} ago)</td>"
            f"<td>{esc(clock(worker.started_at))}</td></tr>"
        )
    columns = ("Worker", "Status", "GPU", "Loaded", "Current job", "Step speed", "OOMs", "Can load", "Queues")
    head = join(f"<th>{name}</th>" for name in (*columns, "Last heartbeat", "Started"))
    table = (
        f'<table class="workers" data-testid="workers"><thead><tr>{head}</tr></thead>'
        f"<tbody>{join(body)}</tbody></table>"
        if body
        else '<p class="empty">No worker has announced itself.</p>'
    )
    return f"<h1>Workers</h1>{table}"


def sign_in_page(problem: str | None = None) -> str:
    message = f'<p class="error" data-testid="signin-error">{esc(problem)}</p>' if problem else ""
    return (
        '<h1>Sign in</h1><form method="post" action="/ui/signin" class="signin">'
        '<label>API token <input type="password" name="token" autocomplete="current-password" required '
        'data-testid="token"></label> <button type="submit" data-testid="signin">Sign in</button></form>'
        f'{message}<p class="muted">The token stays in this browser only as its digest, in an HttpOnly cookie.</p>'
    )
