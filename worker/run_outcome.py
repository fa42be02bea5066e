"""What one delivery did (`RunOutcome`), and the clock of its phases (`PhaseTimings`)."""

from __future__ import annotations

import contextlib
import time
import types
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

PHASES: Final = ("claim", "model", "fetch_inputs", "render", "upload", "commit")


@dataclass(frozen=True)
class RunOutcome:
    """What one delivery did.

    state: "skipped" (not claimed: duplicate, canceled or unknown), "succeeded", "failed", "canceled", "requeued"
    (back to queued for a new delivery), "lease_lost" (another attempt owns the job; nothing written) or
    "unrecorded" (the database failed while recording the end; the lease expires and the reconciler takes over).
    timings_ms: milliseconds per phase of PHASES (0 for phases not reached). progress_writes: live progress writes.
    callbacks_ms: milliseconds spent in the step callback (part of "render": progress writes, stop checks, lease
    renewals), what the farm adds inside the engine's own time. task_id: the user's task id (what logs name the job
    by), None for a job id the database does not know.
    """

    job_id: uuid.UUID
    state: str
    attempt: int | None
    artifacts: int = 0
    timings_ms: Mapping[str, float] = field(default_factory=lambda: types.MappingProxyType(dict.fromkeys(PHASES, 0.0)))
    progress_writes: int = 0
    error_code: str | None = None
    callbacks_ms: float = 0.0
    task_id: str | None = None

    def summary(self) -> str:
        """The worker's log line of this delivery: `job <task id> attempt <n>: <state> in {phase: ms} ms (...)`.
        Benchmarks and the fault suite read it back (bench/overhead.py, tests/fault_suite/invariants.py)."""
        timings = {phase: round(ms, 1) for phase, ms in self.timings_ms.items()}
        return (
            f"job {self.task_id or self.job_id} attempt {self.attempt}: {self.state} in {timings} ms "
            f"({self.progress_writes} progress writes, {self.callbacks_ms:.1f} ms in step callbacks)"
        )


class PhaseTimings:
    """Milliseconds spent in each phase of PHASES so far: `with timings.phase("render"): ...` adds to one."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] += (time.perf_counter() - start) * 1000.0
