"""Task ids: the one format every layer checks, and the one function that mints them (docs/architecture.md "Ids").

A task id is chosen by the client (`PUT /v1/jobs/{task_id}`, A1111's `force_task_id`) or minted here when the client
sends none. It names the job in URLs, storage keys and the database, so its alphabet is URL- and key-safe; `( ) :`
are allowed because A1111 clients send ids of the form `task(img2img-ABC1234)`.
"""

from __future__ import annotations

import re
import secrets
import string
import uuid
from typing import Final

MAX_TASK_ID_LENGTH: Final = 128  # characters
TASK_ID_ALPHABET_TEXT: Final = "A-Z a-z 0-9 . _ - : ( )"
TASK_ID_PATTERN: Final = rf"[A-Za-z0-9._\-:()]{{1,{MAX_TASK_ID_LENGTH}}}"
_TASK_ID_RE: Final = re.compile(TASK_ID_PATTERN)

# The reference's own ids: `task(img2img-` + 7 characters of A-Z 0-9 + `)`.
A1111_TASK_ID_CHARS: Final = string.ascii_uppercase + string.digits
A1111_TASK_ID_RANDOM_LENGTH: Final = 7


def is_valid_task_id(task_id: str) -> bool:
    """True when `task_id` is 1-128 characters of the id alphabet and not a path step (`.` or `..`)."""
    return bool(_TASK_ID_RE.fullmatch(task_id)) and task_id not in (".", "..")


def task_id_problem() -> str:
    """The one sentence every layer uses to say what a task id must look like."""
    return f"must be 1-{MAX_TASK_ID_LENGTH} characters of {TASK_ID_ALPHABET_TEXT}, e.g. task(img2img-ABC1234)"


def new_task_id(prefix: str = "job-") -> str:
    """A fresh random task id: `prefix` and the 32 hex digits of a random UUID.

    The SDK mints `rf-…` ids on the client (so a retried PUT can never create a second job); the scheduler mints
    `job-…` ids for requests that bring none.
    """
    return f"{prefix}{uuid.uuid4().hex}"


def new_a1111_task_id() -> str:
    """A task id of the reference's form, `task(img2img-XXXXXXX)`, for A1111 requests without `force_task_id`."""
    suffix = "".join(secrets.choice(A1111_TASK_ID_CHARS) for _ in range(A1111_TASK_ID_RANDOM_LENGTH))
    return f"task(img2img-{suffix})"
