"""The API's routes, one module per resource. Each route is thin: it resolves the tenant and the services, calls a
plain function (scheduler.submission, scheduler.snapshots) and shapes the answer."""

from __future__ import annotations

import re

from shared.errors import InputError

TASK_ID_RE = re.compile(r"[A-Za-z0-9._\-:()]{1,128}")  # architecture.md "Ids", as shared.spec checks force_task_id


def checked_task_id(task_id: str) -> str:
    """`task_id` if it is 1-128 characters of A-Z a-z 0-9 . _ - : ( ); else InputError (422) naming `task_id`."""
    if not TASK_ID_RE.fullmatch(task_id):
        raise InputError(
            "task_id: must be 1-128 characters of A-Z a-z 0-9 . _ - : ( ), e.g. task(img2img-ABC1234)",
            code="invalid_task_id",
            field="task_id",
        )
    return task_id
