"""The API's routes, one module per resource. Each route is thin: it resolves the tenant and the services, calls a
plain function (scheduler.submission, scheduler.snapshots) and shapes the answer."""

from __future__ import annotations

from shared.errors import InputError
from shared.job.ids import is_valid_task_id, task_id_problem


def checked_task_id(task_id: str) -> str:
    """`task_id` if it is a valid task id (shared.job.ids); else InputError (422) naming `task_id`."""
    if not is_valid_task_id(task_id):
        raise InputError(f"task_id: {task_id_problem()}", code="invalid_task_id", field="task_id")
    return task_id
