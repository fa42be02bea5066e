"""A job stopped early by an A1111 interrupt or skip, as its warnings record it (docs/api.md "Why a job waits, and
when it is done").

The reference keeps what an interrupted render has (the current batch, decoded from its last x0) and runs no further
batch; a skip ends one batch. Either way the job still succeeds, so a client must be told the result is partial:
the worker appends one warning per kind of stop (`stop_warning`), with the whole-job step it stopped at, and a
snapshot reads them back (`stopped_early`) as `interrupted` / `skipped` / `stopped_at_step`. Kept in the warnings
(a JSON column every job has) rather than new columns: the warning is what the client must see anyway.

Pure: no I/O, importable by the SDK.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

STOP_INTERRUPTED = "interrupted"
STOP_SKIPPED = "skipped"


def stop_warning(code: str, step: int, total_steps: int) -> dict[str, Any]:
    """The warning of an interrupt (`STOP_INTERRUPTED`) or a skip (`STOP_SKIPPED`) seen at whole-job `step`."""
    if code == STOP_INTERRUPTED:
        message = (
            f"interrupted at step {step} of {total_steps}: the result is the partial render of the batch it stopped "
            "in, and later batches were not rendered"
        )
    elif code == STOP_SKIPPED:
        message = f"skipped at step {step} of {total_steps}: the batch it stopped in is a partial render"
    else:
        raise ValueError(f"not a stop: {code!r}")
    return {"code": code, "message": message, "step": step, "total_steps": total_steps}


@dataclass(frozen=True)
class Stop:
    code: str  # STOP_INTERRUPTED or STOP_SKIPPED
    step: int | None


def stopped_early(warnings: Iterable[Mapping[str, Any]]) -> Stop | None:
    """The interrupt among a job's warnings, else its skip, else None."""
    found: dict[str, Stop] = {}
    for item in warnings:
        code = item.get("code")
        if code in (STOP_INTERRUPTED, STOP_SKIPPED):
            step = item.get("step")
            found[str(code)] = Stop(str(code), step if isinstance(step, int) else None)
    return found.get(STOP_INTERRUPTED) or found.get(STOP_SKIPPED)
