"""The API's routes, one module per resource. Each route is thin: it resolves the tenant and the services, calls a
plain function (scheduler.submission, scheduler.snapshots) and shapes the answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from shared.errors import InputError
from shared.job.ids import is_valid_task_id, task_id_problem

Responses = dict[int | str, dict[str, Any]]  # the OpenAPI `responses` of a route


def checked_task_id(task_id: str) -> str:
    """`task_id` if it is a valid task id (shared.job.ids); else InputError (422) naming `task_id`."""
    if not is_valid_task_id(task_id):
        raise InputError(f"task_id: {task_id_problem()}", code="invalid_task_id", field="task_id")
    return task_id


def create_or_get_responses(
    model: type[Any],
    *,
    existing: str,
    errors: Mapping[int, str],
    created: str = "created",
    common: Responses | None = None,
) -> Responses:
    """The documented answers of a create-or-get route: 200 with `model` and the `existing` description, 201 with
    the `created` one, then the route's own `errors` (status → description) and the resource's `common` ones."""
    return {
        200: {"model": model, "description": existing},
        201: {"model": model, "description": created},
        **{status: {"description": description} for status, description in errors.items()},
        **(common or {}),
    }


def created_or_existing(body: Any, *, created: bool, location: str | None = None) -> JSONResponse:
    """The answer of a create-or-get route: 201 (with `Location` when given) for a new resource, 200 for one that
    existed."""
    if not created:
        return JSONResponse(body, status_code=200)
    return JSONResponse(body, status_code=201, headers={"Location": location} if location else None)
