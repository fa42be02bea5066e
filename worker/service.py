"""Starting worker processes: one Celery worker per GPU, or one CPU worker (architecture.md, reliability.md).

    start_workers(settings, gpus="all")      # from the CLI: spawns the processes, returns their Popen handles
    python -m worker.service --device cuda --hostname gpu0@host [--queues rf.default.interactive,rf.default.batch]
    python -m worker.service --device cuda --tier interactive     # every servable model's interactive queues

Each GPU gets its own process (`CUDA_VISIBLE_DEVICES=i`, so it sees one device as cuda:0) running a solo-pool worker
(concurrency 1, prefetch 1: it holds only the job it runs, so queue depth is real) named `gpu{i}@host`. Without
GPUs, one CPU worker `cpu@host` uses every core this process may run on. SIGTERM is Celery's warm shutdown, bounded
by `worker_soft_shutdown_timeout` from the settings; the running render re-queues itself if it cannot finish by then.

Without `--queues` a worker consumes the interactive and batch queues of every model it can serve
(`worker.servable`), and starts consuming a new model's queues when its file appears (`worker.announcer`, which
also announces the worker in the database for the scheduler: docs/architecture.md "Routing"). `--tier interactive`
or `--tier batch` keeps to one tier's queues, new models' included (a pool per tier, as deploy/k8s runs them).
`--queues` pins them.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from shared.config import API_SECRET_VARIABLES, ENV_PREFIX, Settings, drop_api_secrets_from_environment
from shared.queueing import queue_name
from worker.metrics import metrics_port_for
from worker.servable import TIERS, Tier, queues_for_models, servable_model_names

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

__all__ = [
    "API_SECRET_VARIABLES",
    "default_queues",
    "main",
    "parse_gpus",
    "run_worker_process",
    "start_workers",
    "worker_command",
    "worker_environment",
]

Device = Literal["cuda", "cpu"]


def default_queues() -> list[str]:
    """The default model family's interactive and batch queues, interactive first."""
    return [queue_name(None, batch=False), queue_name(None, batch=True)]


def parse_gpus(gpus: str, device_count: int) -> list[int] | None:
    """The GPU indices `gpus` names ("all", "0,1"), or None for a CPU worker ("cpu", or "all" without GPUs).

    Raises ValueError for an index that is not a number or not present on this machine.
    """
    text = gpus.strip().lower()
    if text == "cpu":
        return None
    if text == "all":
        return list(range(device_count)) or None
    try:
        indices = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--gpus must be 'all', 'cpu' or GPU indices like '0,1', not {gpus!r}") from None
    missing = [i for i in indices if not 0 <= i < device_count]
    if missing or not indices:
        raise ValueError(f"GPU(s) {missing or gpus} not present: this machine has {device_count} GPU(s)")
    return indices


def worker_environment(settings: Settings, environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The environment of a worker process: `environ` and the settings as RENDERFARM_* variables, without the API's
    tokens."""
    env = {**environ, **_settings_env(settings.without_secrets())}
    for name in API_SECRET_VARIABLES:
        env.pop(name, None)
    return env


def _settings_env(settings: Settings) -> dict[str, str]:
    """The settings as RENDERFARM_* variables, so a child process rebuilds the same settings object."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[f"{ENV_PREFIX}{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def worker_command(queues: Sequence[str] | None, device: Device, hostname: str, tier: Tier | None = None) -> list[str]:
    """The argv of one worker process (no `--queues` for None: every servable model's queues, of `tier` only when
    given)."""
    pinned = ["--queues", ",".join(queues)] if queues else (["--tier", tier] if tier else [])
    return [sys.executable, "-m", "worker.service", "--device", device, *pinned, "--hostname", hostname]


def start_workers(
    settings: Settings, gpus: str = "all", queues: list[str] | None = None, tier: Tier | None = None
) -> list[subprocess.Popen[bytes]]:
    """Spawn one worker process per selected GPU (or one CPU worker) and return their handles.

    `gpus`: "all" (every GPU; a CPU worker when there is none), "cpu", or indices "0,1". `queues`: default every
    servable model's queues (`worker.servable`; of `tier` only when given), followed as models appear. The caller
    owns the processes (send SIGTERM to stop them gracefully). Raises ValueError for a bad `gpus`.
    """
    import torch

    chosen = queues or None
    host = socket.gethostname()
    base_env = worker_environment(settings, os.environ)
    indices = parse_gpus(gpus, torch.cuda.device_count())
    processes: list[subprocess.Popen[bytes]] = []
    if indices is None:
        env = {**base_env, "CUDA_VISIBLE_DEVICES": ""}  # a CPU worker must not grab a GPU by accident
        processes.append(subprocess.Popen(worker_command(chosen, "cpu", f"cpu@{host}", tier), env=env))
        return processes
    for index in indices:
        env = {
            **base_env,
            "CUDA_VISIBLE_DEVICES": str(index),
            # One metrics port per GPU of this host, so the processes do not fight over one.
            "RENDERFARM_METRICS_PORT": str(metrics_port_for(settings.metrics_port, index)),
        }
        processes.append(subprocess.Popen(worker_command(chosen, "cuda", f"gpu{index}@{host}", tier), env=env))
    return processes


def _owned_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_worker_process(
    settings: Settings,
    queues: list[str] | None,
    device: Device,
    hostname: str | None = None,
    tier: Tier | None = None,
) -> None:
    """Run a Celery worker in this process until it is shut down (blocks). Installs Celery's signal handlers.

    `queues` None: the queues of every model this worker can serve, and of models that appear while it runs (of
    `tier` only, when given); otherwise exactly `queues`. Either way the worker announces itself
    (`worker.announcer`) once it consumes.

    `device` "cuda" uses the one GPU this process sees; "cpu" sets torch's thread count to the cores it owns, unless
    OMP_NUM_THREADS is set (then torch already uses that many).
    """
    import torch

    from worker.tasks import build_worker_deps, create_worker_app

    # Not settings.check(): its token rules are the API's. The parts a worker uses fail on their own when built.
    _ = settings.database_kind
    if device == "cpu" and not os.environ.get("OMP_NUM_THREADS", "").strip():
        # An explicit OMP_NUM_THREADS wins, so an operator can apply it to a worker: on a small machine shared with
        # other processes (CI, benchmarks, a laptop running the API and S3 too) one thread per core makes renders
        # several times slower, because every kernel waits for a descheduled OpenMP thread (tests/engine/conftest.py,
        # bench/RESULTS.md).
        torch.set_num_threads(_owned_cores())
    name = hostname or f"{'gpu' if device == 'cuda' else 'cpu'}@{socket.gethostname()}"
    factory = functools.partial(build_worker_deps, settings, device=device, worker_name=name)
    app = create_worker_app(settings, factory)
    _redact_celery_logs()
    _start_metrics(settings, app, name, device)
    consuming = queues or queues_for_models(servable_model_names(settings), settings, tier)
    _announce_when_ready(settings, app, name, device, consuming, pinned=bool(queues), tier=tier)
    app.worker_main(
        [
            "--quiet",  # no banner: `renderfarm worker` prints one line per worker (the announcement), not a page
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            f"--hostname={name}",
            f"--queues={','.join(consuming)}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def _announce_when_ready(
    settings: Settings,
    app: Celery,
    name: str,
    device: Device,
    queues: list[str],
    *,
    pinned: bool,
    tier: Tier | None = None,
) -> None:
    """Announce this worker once its consumer is ready (Celery's `worker_ready`), every heartbeat after that, and
    withdraw the announcement when a warm shutdown begins (SIGTERM: it takes no new job from then on)."""
    from celery import signals

    from shared.db import Database
    from worker.announcer import Announcer, consumer_queue_adder
    from worker.status import status_provider
    from worker.tasks import deps_holder

    holder = deps_holder(app)

    started: list[Announcer] = []

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app or started:
            return
        announcer = Announcer(
            Database.from_url(settings.resolved_database_url),
            settings,
            hostname=name,
            device=device,
            consuming=queues,
            add_queue=None if pinned else consumer_queue_adder(sender),
            status=status_provider(lambda: holder.current, device),
            tier=tier,
        )
        started.append(announcer)
        announcer.start()

    def on_stopping(**_: Any) -> None:
        while started:
            announcer = started.pop()
            announcer.stop()
            announcer.db.close()

    app._renderfarm_announce = (on_ready, on_stopping)  # signals hold weak references
    signals.worker_ready.connect(on_ready)
    signals.worker_shutting_down.connect(on_stopping)
    signals.worker_shutdown.connect(on_stopping)


def _redact_celery_logs() -> None:
    """Celery sets up its own log handlers when the worker starts: make them redact secrets and addresses
    (shared/redact.py) as the scheduler's do."""
    from celery.signals import after_setup_logger, after_setup_task_logger

    from shared.redact import install_log_redaction

    def install(**_kwargs: object) -> None:
        install_log_redaction()

    after_setup_logger.connect(install, weak=False)
    after_setup_task_logger.connect(install, weak=False)


def _start_metrics(settings: Settings, app: Celery, name: str, device: Device) -> None:
    """Serve this worker's /metrics and /healthz before the model warms up (so probes see it start).

    A port that is taken (several workers of one host started by hand with the same settings) costs the metrics of
    this worker, not the worker: it logs and carries on.
    """
    from worker.metrics import WORKER_METRICS, start_metrics_server
    from worker.tasks import deps_holder

    holder = deps_holder(app)
    WORKER_METRICS.describe_worker(name, device)

    def unhealthy() -> bool:
        deps = holder.current
        return deps is not None and deps.stats.unhealthy

    try:
        start_metrics_server(
            WORKER_METRICS, settings.metrics_port, stuck_after_s=settings.job_deadline_max_s, unhealthy=unhealthy
        )
    except OSError as exc:
        logger.warning(
            "worker %s: metrics port %s unavailable (%s); serving no metrics", name, settings.metrics_port, exc
        )


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m worker.service --device cuda|cpu --queues a,b --hostname name@host` (settings from RENDERFARM_*)."""
    parser = argparse.ArgumentParser(prog="python -m worker.service", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cpu")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--queues", default=None, help="comma-separated; default: every servable model's queues")
    chosen.add_argument("--tier", choices=TIERS, default=None, help="every servable model's queues of this tier only")
    parser.add_argument("--hostname", default=None)
    args = parser.parse_args(argv)
    queues = [q for q in args.queues.split(",") if q] if args.queues else None
    # A worker started with the API's tokens in its environment (one shared secret for every process) starts again
    # without them before anything else runs: dropping them from os.environ alone would leave them in the kernel's
    # copy of its environment (/proc/<pid>/environ), readable by whatever runs as its user.
    if argv is None and any(name in os.environ for name in API_SECRET_VARIABLES):
        environ = {name: value for name, value in os.environ.items() if name not in API_SECRET_VARIABLES}
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)  # noqa: S606 - this same program
    drop_api_secrets_from_environment()
    run_worker_process(Settings().without_secrets(), queues, args.device, args.hostname, args.tier)


if __name__ == "__main__":
    main()
