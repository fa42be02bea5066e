"""The A1111 webui API on the farm: `/sdapi/v1/...` and the UI's `/internal/...` progress routes.

Same tenants and auth as `/v1` (HTTP Basic with the token as password, as `--api-auth` clients send it, or a
bearer token). Every job these routes create is an ordinary farm job, visible under `/v1/jobs/{task_id}`.

How the farm differs from the reference (img2img-semantics.md §5, §7), in what a client sees:

- `POST /sdapi/v1/img2img` enqueues a job and waits for it. A client that disconnects loses nothing: the job runs
  on and its result stays under `/v1/jobs/{task_id}` (the reference would finish it too, but the id would be gone).
  A reused `force_task_id` is create-or-get: the same request waits for (or returns) the existing job, a different
  one is a 409.
- Progress, interrupt and skip are per task and per tenant. `GET /sdapi/v1/progress` reports the caller's most
  recent running job (or the one named by `?id_task=`); interrupt and skip act on the named task, or on all the
  caller's running jobs, never on another tenant's. Interrupt and skip of a queued job do nothing, as in the
  reference (cancel it with `POST /v1/jobs/{task_id}/cancel`).
- A failed job answers with the farm's typed error body (422 for a bad input found by the worker, 500 otherwise),
  and `/internal/progress` reports it as completed, so pollers stop (the reference never completes a failed task).
- `POST /sdapi/v1/txt2img`: 501. The farm renders img2img; faking txt2img with a blank init image at strength 1
  would not give the reference's txt2img pixels, so it is refused rather than approximated.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image

from scheduler.a1111.embeddings import catalogue_for
from scheduler.a1111.field_policy import review_request
from scheduler.a1111.probes import memory, png_info
from scheduler.a1111.schema import (
    ExtensionItem,
    FaceRestorerItem,
    HypernetworkItem,
    Img2ImgRequest,
    Img2ImgResponse,
    InternalProgressRequest,
    InternalProgressResponse,
    LatentUpscalerModeItem,
    LoraItem,
    MemoryResponse,
    PendingTasksResponse,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    PromptStyleItem,
    RealesrganItem,
    SamplerItem,
    SchedulerItem,
    ScriptInfoItem,
    ScriptsList,
    SDModelItem,
    SDVaeItem,
    UpscalerItem,
)
from scheduler.a1111.tenant_options import OPTION_DEFAULTS, ignored_options, read_options, write_options
from scheduler.a1111.translate import (
    answer_image,
    build_info,
    echoed_parameters,
    field_renames,
    image_grid,
    job_body,
    job_timestamp,
    model_of_checkpoint,
    rename_fields,
)
from scheduler.auth import TenantDep
from scheduler.deps import Services, ServicesDep
from scheduler.model_checks import catalogue_of, resolve_model_name, vae_problem
from scheduler.open_streams import wait_for_change
from scheduler.routes import checked_task_id
from scheduler.snapshots import QUEUE_POSITION_CAP, running_live, watched_preview
from scheduler.submission import Submission, submit_job
from shared.db import MAX_LIST_LIMIT, ArtifactRow, JobRow
from shared.errors import Gone, InputError, NotFound, RenderfarmError, TransientError
from shared.images import ImageLimits, decode_base64_image, encode_png
from shared.job.ids import MAX_TASK_ID_LENGTH, new_a1111_task_id
from shared.job.spec import Img2ImgJob
from shared.live import LiveProgress, StopRequests
from shared.models.checkpoints import split_title
from shared.sampler_names import SAMPLERS, SCHEDULES
from shared.states import JobState

log = logging.getLogger("scheduler.a1111")

router = APIRouter(tags=["a1111"])

WAIT_SLICE_S = 1.0  # the longest one wait for a change lasts before the row (and the client's connection) is checked
IdTask = Annotated[str | None, Query(max_length=MAX_TASK_ID_LENGTH)]  # `?id_task=`: names one task of the caller


class NotImplementedByFarm(RenderfarmError, type="not_implemented", http_status=501, default_code="not_implemented"):
    """A webui route the farm does not serve (501)."""


class JobCanceled(RenderfarmError, type="conflict", http_status=409, default_code="canceled"):
    """The job was canceled (through `/v1`) while an A1111 client waited for it (409)."""


# --------------------------------------------------------------------------------------------------------------
# img2img


def _submit(services: Services, tenant: str, request: Img2ImgRequest) -> Submission:
    # First what the farm does not honour: refused (422) or named in the job's warnings (field_policy).
    warnings = review_request(request)
    task_id = request.force_task_id or new_a1111_task_id()
    tenant_options = read_options(services.storage, tenant)
    body = job_body(request, task_id=task_id, default_model=services.settings.model, tenant_options=tenant_options)
    try:
        return submit_job(services, tenant, body, warnings=warnings)
    except InputError as exc:
        raise rename_fields(exc, field_renames(request)) from None


async def _wait_until_finished(services: Services, submitted: JobRow, request: Request) -> JobRow | None:
    """The job's row once it is terminal, or None when the client went away first (the job runs on)."""
    loop = asyncio.get_running_loop()
    job_id, task_id = submitted.id, submitted.task_id
    while True:
        # Wait first, read second: a change that lands during the read still ends the next wait at once. A live
        # status that is down makes the wait a plain pause, and the durable row is read again after it.
        waiter = loop.run_in_executor(
            services.stream_waits, wait_for_change, services.live, job_id, WAIT_SLICE_S, services.streams.stopping
        )
        try:
            row = await run_in_threadpool(services.db.jobs.get_by_id, job_id)
        except TransientError as exc:
            # The job is safe in the database; keep the client waiting rather than lose its answer over a blip.
            log.warning("reading job %s failed while an A1111 client waits (%s); retrying", task_id, exc.message)
            row = None
        if row is not None and row.state.is_terminal:
            return row
        if await request.is_disconnected():
            log.info("A1111 client left while job %s was %s; the job runs on", task_id, row.state if row else "?")
            return None
        await waiter


def _png_of(image: Image.Image, infotext: str | None) -> bytes:
    return encode_png(image, infotext)


def _answer(services: Services, row: JobRow, request: Img2ImgRequest) -> JSONResponse:
    """The reference's answer for a finished job: images, parameters, info. Blocking (database, storage)."""
    if row.state is JobState.CANCELED:
        raise JobCanceled(f"job {row.task_id!r} was canceled before it finished", field="force_task_id")
    if row.state is JobState.FAILED:
        error = row.error.to_dict() if row.error is not None else {"type": "internal", "code": "failed"}
        error.setdefault("message", "the job failed")
        error["task_id"] = row.task_id
        status = 422 if error.get("type") == "invalid_request" else 500
        return JSONResponse({"error": error}, status_code=status)
    job = Img2ImgJob.from_request_json(row.request)
    artifacts = services.db.jobs.artifacts_of(row.id)
    results = sorted((a for a in artifacts if a.kind == "result"), key=lambda a: a.index)
    infotexts = [a.infotext or "" for a in results]
    want_grid = request.save_images and len(results) > 1
    images: list[bytes] = []
    if request.send_images or want_grid:
        images = [services.storage.get(a.storage_key) for a in results]
    if want_grid:
        # The reference makes a grid only when it saves (save_images) and returns it first.
        pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
        images.insert(0, _png_of(image_grid(pictures), infotexts[0] if infotexts else None))
    if job.override_settings.get("return_mask"):
        # The webui appends each mask_for_overlay (as RGB) when return_mask is on (semantics §4.7).
        masks: list[ArtifactRow] = sorted((a for a in artifacts if a.kind == "mask"), key=lambda a: a.index)
        for mask in masks:
            picture = Image.open(io.BytesIO(services.storage.get(mask.storage_key))).convert("RGB")
            images.append(_png_of(picture, None))
    info = build_info(
        job,
        job_id=row.id,
        task_id=row.task_id,
        seeds=[a.seed for a in results],
        infotexts=infotexts,
        started_at=row.started_at,
        warnings=row.warnings,
        grid_first=want_grid,
    )
    # The webui's API encodes its answer in the samples_format option (png, jpg/jpeg or webp).
    samples_format = str(job.override_settings.get("samples_format", "png"))
    body = {
        "images": [base64.b64encode(answer_image(data, samples_format)).decode("ascii") for data in images]
        if request.send_images
        else [],
        "parameters": echoed_parameters(request),
        "info": json.dumps(info, ensure_ascii=False),
    }
    return JSONResponse(body)


@router.post(
    "/sdapi/v1/img2img",
    summary="A1111 img2img: enqueue a farm job, wait for it, answer as the webui does",
    response_model=Img2ImgResponse,
)
async def img2img(request: Request, body: Img2ImgRequest, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    if not body.init_images:
        raise NotFound("init_images: Init image not found", code="init_image_not_found", field="init_images")
    submission = await run_in_threadpool(_submit, services, tenant, body)
    row = await _wait_until_finished(services, submission.row, request)
    if row is None:
        # Nobody reads this; the job is under /v1/jobs/{task_id}.
        return JSONResponse({"task_id": submission.row.task_id, "state": "running"}, status_code=202)
    return await run_in_threadpool(_answer, services, row, body)


@router.post("/sdapi/v1/txt2img", summary="Not served: the farm renders img2img (501)", status_code=501)
def txt2img(tenant: TenantDep) -> None:
    raise NotImplementedByFarm(
        "txt2img is not available: this farm renders img2img and inpainting only; use POST /sdapi/v1/img2img "
        "with an init image",
        code="txt2img_not_supported",
    )


# --------------------------------------------------------------------------------------------------------------
# Progress


def _safe_stops(services: Services, row: JobRow) -> StopRequests:
    try:
        return services.live.stop_requests(row.id)
    except Exception as exc:  # live status down: report no stop requests rather than fail a progress read
        log.warning("stop requests of job %s unavailable: %s", row.task_id, exc)
        return StopRequests()


def _find(services: Services, tenant: str, task_id: str | None) -> JobRow | None:
    if not task_id:
        return None
    try:
        return services.db.jobs.get(tenant, checked_task_id(task_id))
    except (NotFound, Gone, InputError):  # a purged task reads like an unknown one, as UIs poll it
        return None


def _queue_text(services: Services, row: JobRow) -> str:
    # Both counts stop at the cap (each grows with the backlog, and UIs poll this every second).
    position = services.db.stats.queue_position(row, cap=QUEUE_POSITION_CAP)
    if position is None:
        return "Waiting..."
    depth = services.db.stats.queue_depth(row.queue, cap=QUEUE_POSITION_CAP + 1)
    if depth > QUEUE_POSITION_CAP:
        return f"In queue: {position + 1}/{QUEUE_POSITION_CAP}+" if position < QUEUE_POSITION_CAP else "In queue"
    return f"In queue: {position + 1}/{max(depth, position + 1)}"


def _terminal_text(row: JobRow) -> str:
    if row.state is JobState.FAILED and row.error is not None:
        return f"Failed: {row.error.message}"
    return {JobState.SUCCEEDED: "Done", JobState.CANCELED: "Canceled"}.get(row.state, "Failed")


def _step_text(live: LiveProgress | None) -> str | None:
    if live is None:
        return None
    return f"Batch {live.job_no + 1}/{live.job_count}, step {live.step}/{live.total_steps}"


def internal_progress(services: Services, tenant: str, query: InternalProgressRequest) -> dict[str, Any]:
    """The UI's progress of one task (semantics §5.1), for the caller's task only. Blocking."""
    row = _find(services, tenant, query.id_task)
    idle = {"active": False, "queued": False, "completed": False, "id_live_preview": -1}
    if row is None:
        # The reference's answer for an id it has not seen yet; a client may poll before its POST has arrived.
        return {**idle, "textinfo": "Waiting..."}
    # A poller asking for live previews is what makes the worker draw them (docs/engine.md "Live previews").
    preview = watched_preview(services, row) if query.live_preview else None
    row, live = running_live(services, row)
    if row.state is JobState.QUEUED:
        return {**idle, "queued": True, "textinfo": _queue_text(services, row)}
    if row.state.is_terminal:
        # Failed and canceled jobs complete too (§7.7), so a poller always stops.
        return {**idle, "completed": True, "textinfo": _terminal_text(row)}
    progress = min(max(live.fraction, 0.0), 1.0) if live is not None else 0.0
    eta = live.eta_s if live is not None else None
    # As the reference: the picture only when its id differs from the one the client has; else the client's id
    # is echoed, so it never thinks it missed one.
    fresh = preview is not None and preview.preview_id != query.id_live_preview
    return {
        "active": True,
        "queued": False,
        "completed": False,
        "progress": progress,
        "eta": eta,
        "live_preview": preview.data_uri if fresh and preview is not None else None,
        "id_live_preview": preview.preview_id if fresh and preview is not None else query.id_live_preview,
        "textinfo": _step_text(live),
    }


@router.post("/internal/progress", summary="A1111 UI progress of one task", response_model=InternalProgressResponse)
def post_internal_progress(
    services: ServicesDep, tenant: TenantDep, query: Annotated[InternalProgressRequest, Body()]
) -> JSONResponse:
    # Through the model, so that every field of the reference's shape is present (null where it has no value).
    return JSONResponse(InternalProgressResponse(**internal_progress(services, tenant, query)).model_dump())


@router.get("/internal/pending-tasks", summary="The caller's queued task ids", response_model=PendingTasksResponse)
def pending_tasks(services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    tasks: list[str] = []
    cursor: str | None = None
    while True:
        rows, cursor = services.db.jobs.list_jobs(
            tenant, state=JobState.QUEUED, cursor=cursor, limit=MAX_LIST_LIMIT, oldest_first=True
        )
        tasks.extend(row.task_id for row in rows)
        if cursor is None:
            break
    return JSONResponse({"size": len(tasks), "tasks": tasks})


def _idle_state(job: str = "") -> dict[str, Any]:
    return {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": job,
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }


def _latest_running(services: Services, tenant: str) -> JobRow | None:
    rows, _ = services.db.jobs.list_jobs(tenant, state=JobState.RUNNING, limit=1)
    return rows[0] if rows else None


def sdapi_progress(
    services: Services, tenant: str, id_task: str | None, *, skip_current_image: bool = False
) -> dict[str, Any]:
    """`GET /sdapi/v1/progress` for the caller (semantics §5.3). Blocking.

    Unless `skip_current_image`, the read marks the job watched (its worker draws live previews while such reads
    keep coming) and `current_image` is its newest preview, raw base64 (docs/engine.md "Live previews").
    """
    row = _find(services, tenant, id_task) if id_task else _latest_running(services, tenant)
    idle: dict[str, Any] = {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None}
    if row is None:
        return {**idle, "state": _idle_state(), "textinfo": "Waiting..." if id_task else None}
    preview = None if skip_current_image else watched_preview(services, row)
    row, live = running_live(services, row)
    if row.state is not JobState.RUNNING:
        text = _queue_text(services, row) if row.state is JobState.QUEUED else _terminal_text(row)
        return {**idle, "state": _idle_state(row.task_id), "textinfo": text}
    stops = _safe_stops(services, row)
    fraction = live.fraction if live is not None else 0.0
    # The reference adds 0.01 so that a started job never reads as idle (0).
    progress = min(1.0, 0.01 + max(fraction, 0.0))
    started = live.started_at if live is not None else (row.started_at.timestamp() if row.started_at else time.time())
    elapsed = max(0.0, time.time() - started)
    eta_relative = elapsed / progress - elapsed
    n_iter = row.request.get("n_iter", 1) if isinstance(row.request, dict) else 1
    state = {
        "skipped": stops.skips > 0,
        "interrupted": stops.interrupt,
        "stopping_generation": False,
        "job": row.task_id,
        "job_count": live.job_count if live is not None else n_iter,
        "job_timestamp": job_timestamp(row.started_at),
        "job_no": live.job_no if live is not None else 0,
        "sampling_step": live.step if live is not None else 0,
        "sampling_steps": live.total_steps if live is not None else 0,
    }
    return {
        **idle,
        "progress": progress,
        "eta_relative": eta_relative,
        "state": state,
        "current_image": preview.data_b64 if preview is not None else None,
        "textinfo": _step_text(live),
    }


@router.get("/sdapi/v1/progress", summary="A1111 progress of the caller's running job", response_model=ProgressResponse)
def get_progress(
    services: ServicesDep,
    tenant: TenantDep,
    skip_current_image: Annotated[bool, Query()] = False,
    id_task: IdTask = None,
) -> JSONResponse:
    answer = sdapi_progress(services, tenant, id_task, skip_current_image=skip_current_image)
    return JSONResponse(ProgressResponse(**answer).model_dump())


# --------------------------------------------------------------------------------------------------------------
# Interrupt and skip


async def _id_task_of(request: Request, id_task: str | None) -> str | None:
    """The task id from the query, else from a JSON body `{"id_task": ...}`; clients usually send no body."""
    if id_task:
        return id_task
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    value = data.get("id_task") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def _running_rows(services: Services, tenant: str, id_task: str | None) -> list[JobRow]:
    """The job(s) a stop request is for: the named task (404 when it is not the caller's), else every running job
    of the caller. Only running jobs: a queued job is not interrupted, as in the reference."""
    if id_task is not None:
        row = services.db.jobs.get(tenant, checked_task_id(id_task))
        return [row] if row.state is JobState.RUNNING else []
    rows: list[JobRow] = []
    cursor: str | None = None
    while True:
        page, cursor = services.db.jobs.list_jobs(tenant, state=JobState.RUNNING, cursor=cursor, limit=MAX_LIST_LIMIT)
        rows.extend(page)
        if cursor is None:
            return rows


def _stop(services: Services, tenant: str, id_task: str | None, kind: str) -> int:
    """Raise the interrupt or skip flag of the target jobs; returns how many. Blocking."""
    rows = _running_rows(services, tenant, id_task)
    for row in rows:
        if kind == "interrupt":
            services.live.request_interrupt(row.id)
        else:
            services.live.request_skip(row.id)
    return len(rows)


async def _stop_route(request: Request, services: Services, tenant: str, id_task: str | None, kind: str) -> None:
    await run_in_threadpool(_stop, services, tenant, await _id_task_of(request, id_task), kind)


@router.post("/sdapi/v1/interrupt", summary="Stop the task's sampling now and keep what it has")
async def interrupt(request: Request, services: ServicesDep, tenant: TenantDep, id_task: IdTask = None) -> JSONResponse:
    await _stop_route(request, services, tenant, id_task, "interrupt")
    return JSONResponse({})  # the reference's answers: {} here, null for skip


@router.post("/sdapi/v1/skip", summary="End the task's current batch early; the next batch runs")
async def skip(request: Request, services: ServicesDep, tenant: TenantDep, id_task: IdTask = None) -> JSONResponse:
    await _stop_route(request, services, tenant, id_task, "skip")
    return JSONResponse(None)


# --------------------------------------------------------------------------------------------------------------
# What clients probe at start-up


@router.get("/sdapi/v1/samplers", summary="Samplers the farm runs", response_model=list[SamplerItem])
def samplers(tenant: TenantDep) -> list[dict[str, Any]]:
    return [
        {"name": sampler.name, "aliases": list(sampler.aliases), "options": sampler.options_dict}
        for sampler in SAMPLERS
    ]


@router.get("/sdapi/v1/schedulers", summary="Schedules the farm runs", response_model=list[SchedulerItem])
def schedulers(tenant: TenantDep) -> list[dict[str, Any]]:
    return [
        {
            "name": schedule.name,
            "label": schedule.label,
            "aliases": list(schedule.aliases) or None,  # the reference lists None where a schedule has none
            "default_rho": schedule.default_rho,
            "need_inner_model": schedule.need_inner_model,
        }
        for schedule in SCHEDULES
    ]


# Model files (docs/engine.md "Model files"): plain `def` routes, so the scans and hashing run in the threadpool.


@router.get("/sdapi/v1/sd-models", summary="Models the farm knows of", response_model=list[SDModelItem])
def sd_models(services: ServicesDep, tenant: TenantDep) -> list[dict[str, Any]]:
    """The tiny models, then RENDERFARM_MODELS_DIR's checkpoints and diffusers folders, hashed (never null). A
    default model that is none of them (a hub id the workers download) comes first, without a hash."""
    files = catalogue_of(services)
    default = services.settings.model
    unlisted: list[dict[str, Any]] = []
    if files.resolve_checkpoint(default) is None:
        unlisted.append(
            {"title": default, "model_name": default, "hash": None, "sha256": None, "filename": default, "config": None}
        )
    return unlisted + files.listing()


@router.post("/sdapi/v1/refresh-checkpoints", summary="Rescan the checkpoints")
def refresh_checkpoints(services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    catalogue_of(services).refresh_checkpoints()
    services.workers.refresh()  # and what the workers announced they serve (scheduler.worker_registry)
    return JSONResponse(None)


@router.get("/sdapi/v1/sd-vae", summary="VAE files sd_vae may name", response_model=list[SDVaeItem])
def sd_vae(services: ServicesDep, tenant: TenantDep) -> list[dict[str, Any]]:
    return [vae.listing() for vae in catalogue_of(services).vaes()]


@router.post("/sdapi/v1/refresh-vae", summary="Rescan the VAE files")
def refresh_vae(services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    catalogue_of(services).refresh_vaes()
    return JSONResponse(None)


@router.get("/sdapi/v1/loras", summary="LoRA and LyCORIS files", response_model=list[LoraItem])
def loras(services: ServicesDep, tenant: TenantDep) -> list[dict[str, Any]]:
    return [lora.listing() for lora in catalogue_of(services).loras().entries]


@router.post("/sdapi/v1/refresh-loras", summary="Rescan the LoRA and LyCORIS files")
def refresh_loras(services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    catalogue_of(services).refresh_loras()
    return JSONResponse(None)


@router.get("/sdapi/v1/hypernetworks", summary="Hypernetwork files (listed; not applied)",
            response_model=list[HypernetworkItem])  # fmt: skip
def hypernetworks(services: ServicesDep, tenant: TenantDep) -> list[dict[str, Any]]:
    return catalogue_of(services).hypernetworks()


@router.get("/sdapi/v1/embeddings", summary="Textual-inversion embeddings, loaded or skipped for a model")
def embeddings(
    services: ServicesDep, tenant: TenantDep, model: Annotated[str | None, Query(max_length=1024)] = None
) -> dict[str, Any]:
    """For `?model=` (a farm extension; a title's hash suffix is ignored), else the tenant's `sd_model_checkpoint`
    option, else the default model (scheduler/a1111/embeddings.py)."""
    if model is None:
        stored = read_options(services.storage, tenant).get("sd_model_checkpoint")
        model = stored if isinstance(stored, str) else None
    chosen = model_of_checkpoint(model, services.settings.model) or services.settings.model
    name = split_title(chosen)[0]  # without a title's hash, for the flat layout's lookup by name
    models_dir = services.settings.models_dir
    entry = catalogue_of(services).resolve_checkpoint(chosen)
    if entry is not None and entry.path is not None and models_dir is not None:
        with contextlib.suppress(ValueError):  # a checkpoint of the webui layout: its path inside the folder
            name = entry.path.relative_to(models_dir).as_posix()
    return catalogue_for(models_dir).listing(name)


@router.post("/sdapi/v1/refresh-embeddings", summary="Reread the embeddings folder")
def refresh_embeddings(services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    catalogue_for(services.settings.models_dir).refresh()
    return JSONResponse(None)


@router.get("/sdapi/v1/options", summary="The caller's webui options (the ones the farm honours)")
def get_options(services: ServicesDep, tenant: TenantDep) -> dict[str, Any]:
    stored = read_options(services.storage, tenant)
    checkpoint = stored.get("sd_model_checkpoint")
    name = checkpoint if isinstance(checkpoint, str) else services.settings.model
    entry = catalogue_of(services).resolve_checkpoint(name)
    return {
        **OPTION_DEFAULTS,
        **stored,
        # The reference answers the current checkpoint's title and its sha256.
        "sd_model_checkpoint": entry.title if entry is not None else name,
        "sd_checkpoint_hash": entry.sha256 if entry is not None else None,
    }


@router.post("/sdapi/v1/options", summary="Set the caller's webui options (checkpoint and job overrides)")
def set_options(services: ServicesDep, tenant: TenantDep, changes: Annotated[dict[str, Any], Body()]) -> JSONResponse:
    # null, as the webui answers, when every option was kept; otherwise the ones that were not, by name.
    warnings = ignored_options(changes)
    changes = _checked_model_options(services, changes)
    write_options(services.storage, tenant, changes)
    return JSONResponse({"warnings": warnings} if warnings else None)


def _checked_model_options(services: Services, changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` with `sd_model_checkpoint` canonical; an unknown checkpoint or `sd_vae` is a 422 naming it (the
    reference answers 500 for the first and warns for the second)."""
    checkpoint = changes.get("sd_model_checkpoint")
    entry = None
    if isinstance(checkpoint, str) and checkpoint.strip():
        canonical, entry = resolve_model_name(services, checkpoint.strip(), "sd_model_checkpoint")
        changes = {**changes, "sd_model_checkpoint": canonical}
    vae = changes.get("sd_vae")
    if isinstance(vae, str):
        files = catalogue_of(services)
        if entry is None:
            stored_or_default = checkpoint if isinstance(checkpoint, str) else services.settings.model
            entry = files.resolve_checkpoint(stored_or_default)
        problem = vae_problem(files, vae, entry, "sd_vae")
        if problem is not None:
            raise InputError.from_problems([problem])
    return changes


@router.get("/sdapi/v1/cmd-flags", summary="The few webui command-line flags clients look at")
def cmd_flags(services: ServicesDep, tenant: TenantDep) -> dict[str, Any]:
    return {
        "api": True,
        "nowebui": True,
        "api_auth": None,  # never echo credentials
        "listen": True,
        "ckpt": None,
        "ckpt_dir": None,
        "data_dir": "",
        "lowvram": False,
        "medvram": False,
        "no_half": False,
        "xformers": False,
        "disable_safe_unpickle": False,
        "enable_insecure_extension_access": False,
        "api_log": False,
        "skip_version_check": True,
        "hide_ui_dir_config": True,
        "freeze_settings": False,
    }


# Probes of features the farm does not have: the reference's shapes, empty (scheduler/a1111/probes.py).


@router.get("/sdapi/v1/scripts", summary="Webui scripts (none on the farm)", response_model=ScriptsList)
def scripts(tenant: TenantDep) -> dict[str, Any]:
    return {"txt2img": [], "img2img": []}


@router.get("/sdapi/v1/script-info", summary="Webui scripts and their arguments (none on the farm)",
            response_model=list[ScriptInfoItem])  # fmt: skip
def script_info(tenant: TenantDep) -> list[dict[str, Any]]:
    return []


@router.get("/sdapi/v1/extensions", summary="Webui extensions (none on the farm)", response_model=list[ExtensionItem])
def extensions(tenant: TenantDep) -> list[dict[str, Any]]:
    return []


@router.get("/sdapi/v1/upscalers", summary="Upscaler models (none on the farm)", response_model=list[UpscalerItem])
def upscalers(tenant: TenantDep) -> list[dict[str, Any]]:
    return []


@router.get("/sdapi/v1/latent-upscale-modes", summary="Hires-fix latent upscale modes (none: no hires fix)",
            response_model=list[LatentUpscalerModeItem])  # fmt: skip
def latent_upscale_modes(tenant: TenantDep) -> list[dict[str, Any]]:
    return []


@router.get("/sdapi/v1/face-restorers", summary="Face restorers (none on the farm)",
            response_model=list[FaceRestorerItem])  # fmt: skip
def face_restorers(tenant: TenantDep) -> list[dict[str, Any]]:
    return []


@router.get("/sdapi/v1/realesrgan-models", summary="Real-ESRGAN models (none on the farm)",
            response_model=list[RealesrganItem])  # fmt: skip
def realesrgan_models(tenant: TenantDep) -> list[dict[str, Any]]:
    return []


@router.get("/sdapi/v1/prompt-styles", summary="Saved prompt styles (none on the farm)",
            response_model=list[PromptStyleItem])  # fmt: skip
def prompt_styles(tenant: TenantDep) -> list[dict[str, Any]]:
    return []


@router.get("/sdapi/v1/memory", summary="The scheduler's RAM; GPUs are the workers' (cuda: unavailable)",
            response_model=MemoryResponse)  # fmt: skip
def get_memory(tenant: TenantDep) -> dict[str, Any]:
    return memory()


@router.post("/sdapi/v1/png-info", summary="The infotext of an image, parsed", response_model=PNGInfoResponse)
def post_png_info(services: ServicesDep, tenant: TenantDep, body: PNGInfoRequest) -> dict[str, Any]:
    """An empty `image` answers empty, as the reference does; anything else must decode (422 naming `image`)."""
    if not body.image.strip():
        return {"info": "", "items": {}, "parameters": {}}
    limits = ImageLimits.from_settings(services.settings)
    picture = decode_base64_image(body.image.strip(), field="image", limits=limits)
    return png_info(picture)
