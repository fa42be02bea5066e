"""The fault suite's worker process: the production worker (`worker.service`) with the stand-in engine, plus the
faults a test cannot inject from outside. Run as `python -m tests.fault_suite.faulty_worker <worker.service arguments>`.

Faults, chosen by the job's prompt (so one farm serves every case, and the other jobs beside a faulty one run
normally):

- `[fault:oom]` in the prompt: every render raises `torch.cuda.OutOfMemoryError`, the exception type CUDA raises
  (constructed here, since the test machines have no GPU), so the worker's real out-of-memory path runs.
- `[fault:crash]`: the render kills its own process (SIGKILL), a poison input that takes its worker down with it
  each time it is delivered, as a prompt that exhausts the host's memory does.

And one by the worker's environment:

- `RENDERFARM_FAULT_HOLD_BEFORE_CLAIM=1`: every delivery stops between the message's receipt and the claim (it
  prints `fault: holding job <id> before its claim` and waits), so a test can SIGKILL the worker in that window.

Everything else (claim, lease, inputs from storage, progress, upload, fenced commit) is the production code.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from typing import Any, Final

OOM_MARKER: Final = "[fault:oom]"
CRASH_MARKER: Final = "[fault:crash]"
HOLD_ENV: Final = "RENDERFARM_FAULT_HOLD_BEFORE_CLAIM"
HOLD_LINE: Final = "fault: holding job {job_id} before its claim"
HOLD_S: Final = 3600.0  # the fault's duration: until the test kills the process


def _faulty_engine(base: Any) -> Any:
    """Wrap the stand-in engine: the prompt's fault marker decides whether the render fails, and how."""
    import torch

    def engine(p: Any) -> Any:
        prompt = str(p.prompt)
        if CRASH_MARKER in prompt:
            print(f"fault: job prompt {CRASH_MARKER}; killing this worker", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if OOM_MARKER in prompt:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity; "
                "6.90 GiB already allocated) [fault suite]"
            )
        return base(p)

    engine.step_s = base.step_s  # type: ignore[attr-defined]
    return engine


def install() -> None:
    """Patch the worker's engine factory (and, with HOLD_ENV, its task body) before the worker starts."""
    import worker.tasks as tasks
    from worker.standin import standin_from_env

    def faulty_standin() -> Any:
        base = standin_from_env()
        if base is None:
            raise SystemExit("the fault suite's worker needs RENDERFARM_STANDIN_STEP_S")
        return _faulty_engine(base)

    tasks.standin_from_env = faulty_standin  # type: ignore[assignment]
    if os.environ.get(HOLD_ENV) == "1":
        real_run_job = tasks.run_job

        def held_run_job(job_id: uuid.UUID, delivered_attempt: int, deps: Any) -> Any:
            print(HOLD_LINE.format(job_id=job_id), flush=True)
            time.sleep(HOLD_S)
            return real_run_job(job_id, delivered_attempt, deps)

        tasks.run_job = held_run_job


def main() -> None:
    install()
    from worker.service import main as service_main

    service_main(sys.argv[1:])


if __name__ == "__main__":
    main()
