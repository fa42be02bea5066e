#!/usr/bin/env python3
"""Give this container's worker one GPU of its own, then exec the worker: `renderfarm-gpu-slot -- COMMAND...`.

Why: `docker compose up --scale worker=N` starts N identical replicas, and Docker hands a `count: 1` GPU
reservation to every replica as the SAME first GPU (docker/compose#11863). So the compose file lets each replica
see all GPUs, and this script picks one: it takes an exclusive `flock` on `<lock dir>/<gpu uuid>.lock` (the lock
dir is a volume shared by the replicas), sets `CUDA_VISIBLE_DEVICES` to that GPU, and execs the command with the
lock's descriptor inherited, so the lock lives exactly as long as the worker process. A replica that finds every GPU
taken waits and retries (the log says why), so scaling above the GPU count parks the extra replicas instead of
doubling up on a GPU.

Where the runtime already chose (Kubernetes' device plugin exposes exactly one GPU to a pod, or
`CUDA_VISIBLE_DEVICES` is set), the only visible GPU is taken and the lock is uncontended.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time

RETRY_S = 10.0  # seconds between attempts when every GPU is taken
LOG_EVERY_S = 300.0  # how often a waiting replica says so again


def visible_gpus() -> list[str]:
    """The GPUs this container sees, as UUIDs (stable across containers) or, without nvidia-smi, as indices."""
    preset = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if preset:
        return [part.strip() for part in preset.split(",") if part.strip()]
    if shutil.which("nvidia-smi"):
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode == 0:
            return [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return sorted((name[len("nvidia") :] for name in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", name)), key=int)


def take_gpu(gpus: list[str], lock_dir: str) -> tuple[str, int] | None:
    """Lock the first free GPU; (gpu, lock fd) or None when all are taken."""
    os.makedirs(lock_dir, exist_ok=True)
    for gpu in gpus:
        path = os.path.join(lock_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", gpu) + ".lock")
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return gpu, fd
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="renderfarm-gpu-slot", description=__doc__.splitlines()[0])
    parser.add_argument("--lock-dir", default="/run/renderfarm-gpus")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    gpus = visible_gpus()
    if not gpus:
        print("renderfarm-gpu-slot: this container sees no GPU; start it with a GPU reservation", file=sys.stderr)
        return 3
    last_log = float("-inf")
    while True:
        taken = take_gpu(gpus, args.lock_dir)
        if taken is not None:
            break
        if time.monotonic() - last_log >= LOG_EVERY_S:
            print(
                f"renderfarm-gpu-slot: all {len(gpus)} GPU(s) are taken by other workers; waiting for one to free "
                "(scale the worker service to at most the number of GPUs)",
                file=sys.stderr,
                flush=True,
            )
            last_log = time.monotonic()
        time.sleep(RETRY_S)
    gpu, fd = taken
    os.set_inheritable(fd, True)  # the exec'd worker keeps the lock until it exits
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    print(f"renderfarm-gpu-slot: running on GPU {gpu}", file=sys.stderr, flush=True)
    os.execvpe(command[0], command, env)  # noqa: S606 - the worker replaces this process, keeping the lock
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
