"""What one worker process is doing now, for its announcement (worker/announcer.py) and the dashboard's workers page
(docs/dashboard.md "Workers").

    status = deps.status                     # one per worker process (`WorkerDeps.status`)
    status.job_started("my-task")            # the job runner, after its claim
    status.step(done=12, total=40, now=t)    # the step hook, every step (whole-job steps)
    status.job_ended()                       # the job runner, however the job ended
    provider = status_provider(deps, "cuda") # what the announcer writes on every heartbeat

The job runner's thread writes, the announcer's thread reads: one lock, held for a few assignments only, so a
heartbeat never waits for a render.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["JobStatus", "StatusProvider", "WorkerParts", "gpu_name", "status_provider"]

StatusProvider = Callable[[], dict[str, Any]]


@dataclass
class JobStatus:
    """The job this worker renders (its task id, whole-job step of total) and its step speed. Thread-safe.

    The speed is whole-job steps per second since the render's first step, so model loading and input fetching do
    not count; after the job it stays as the last job's speed until the next job's second step."""

    current_job: str | None = None
    step: int | None = None
    total_steps: int | None = None
    steps_per_s: float | None = None
    _first: tuple[int, float] | None = field(default=None, repr=False)  # (steps done, monotonic s) at the first step
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def job_started(self, task_id: str) -> None:
        with self._lock:
            self.current_job, self.step, self.total_steps, self._first = task_id, None, None, None

    def record_step(self, done: int, total: int, now: float) -> None:
        """`done` of `total` whole-job steps rendered at monotonic time `now`."""
        with self._lock:
            if self.step is not None and done < self.step:
                self._first = None  # a retry (out of memory: the batch split) renders from the start again
            self.step, self.total_steps = done, total
            if self._first is None:
                self._first = (done, now)
            elif now > self._first[1] and done > self._first[0]:
                self.steps_per_s = round((done - self._first[0]) / (now - self._first[1]), 3)

    def job_ended(self) -> None:
        with self._lock:
            self.current_job, self.step, self.total_steps, self._first = None, None, None, None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "current_job": self.current_job,
                "step": self.step,
                "total_steps": self.total_steps,
                "steps_per_s": self.steps_per_s,
            }


def gpu_name(device: str) -> str:
    """The CUDA device's name (`torch.cuda.get_device_name()`) on a CUDA worker, else the device ("cpu", "mps")."""
    if device != "cuda":
        return device
    import torch

    return str(torch.cuda.get_device_name())


class WorkerParts(Protocol):
    """What the status reads of a worker's deps (`worker.deps.WorkerDeps`; a protocol, so that this module, which the
    deps import, does not import them back)."""

    @property
    def models(self) -> Any: ...  # a ModelCache (its `names()`)

    @property
    def stats(self) -> Any: ...  # a WorkerStats (its `ooms`)

    @property
    def status(self) -> JobStatus: ...


def status_provider(deps: Callable[[], WorkerParts | None], device: str) -> StatusProvider:
    """The announcer's `status`: the worker's GPU, loaded models (its `ModelCache`), current job, step speed and
    out-of-memory count. `deps` returns the worker's deps, or None before they are built (a Celery worker builds
    them in its first task or its warm-up)."""
    gpu: list[str] = []  # asked on the first heartbeat (where an error costs only the status), then kept

    def status() -> dict[str, Any]:
        if not gpu:
            gpu.append(gpu_name(device))
        current = deps()
        if current is None:
            return {"gpu": gpu[0], "loaded_models": [], "oom_count": 0, **JobStatus().snapshot()}
        names = getattr(current.models, "names", None)  # a ModelCache; test doubles may have none
        return {
            "gpu": gpu[0],
            "loaded_models": list(names()) if callable(names) else [],
            "oom_count": current.stats.ooms,
            **current.status.snapshot(),
        }

    return status
