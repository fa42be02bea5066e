"""The `renderfarm` command line: the one place that composes scheduler, worker and shared parts.

Heavy imports (torch, diffusers, SQLAlchemy) happen inside the commands that need them, so `renderfarm --help`
stays fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from renderfarm.client_cli import register as register_client_commands
from shared.config import Settings
from shared.errors import ConfigError, RenderfarmError


def _cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.migrate import upgrade

    upgrade(settings.resolved_database_url, revision=args.revision)
    print(f"database at {settings.resolved_database_url} is at revision {args.revision}")
    return 0


def _cmd_model_build_tiny(args: argparse.Namespace, settings: Settings) -> int:
    from worker.engine.models import build_tiny_model

    path = build_tiny_model(Path(args.dir), kind=args.kind, seed=args.seed)
    print(f"tiny {args.kind} model written to {path}")
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from renderfarm.demo import run_demo

    return run_demo(Path(args.out), settings)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cluster_only(settings: Settings, command: str) -> None:
    """Refuse a cluster command in the embedded default, where its messages would reach no worker."""
    if settings.embedded:
        raise ConfigError(
            f"`renderfarm {command}` is a part of the cluster and needs RENDERFARM_REDIS_URL (the broker); "
            "on one machine without servers run `renderfarm up`, which has its worker inside",
            field="RENDERFARM_REDIS_URL",
        )


def _cmd_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from renderfarm.embedded import bind_socket, stop_signals_end_quietly
    from scheduler.app import create_app

    _cluster_only(settings, "scheduler")
    settings.check_bind(args.host)
    _configure_logging(args.log_level)
    sock = bind_socket(args.host, args.port)
    try:
        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=10))
        print(f"renderfarm scheduler: serving http://{args.host}:{sock.getsockname()[1]}", flush=True)
        with stop_signals_end_quietly():
            server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from renderfarm.embedded import serve

    _configure_logging(args.log_level)
    serve(settings, args.host, args.port, log_level=args.log_level)
    return 0


WORKER_STOP_TIMEOUT_S = 120.0  # seconds `renderfarm worker` waits for its processes after forwarding a stop signal


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.service import start_workers

    _cluster_only(settings, "worker")
    queues = [q for q in args.queues.split(",") if q.strip()] if args.queues else None
    try:
        processes = start_workers(settings, args.gpus, queues)
    except ValueError as exc:
        print(f"renderfarm: {exc}", file=sys.stderr)
        return 2
    stopping: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        # Each worker does its own warm shutdown (the running render finishes or re-queues itself).
        stopping.append(sig)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # One worker ending on its own (a crash, or repeated out-of-memory) ends the others too: a supervisor
        # (systemd, Kubernetes) then restarts the set, instead of a host silently serving with fewer GPUs.
        while all(process.poll() is None for process in processes) and not stopping:
            time.sleep(0.5)
        forward(signal.SIGTERM, None)
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=WORKER_STOP_TIMEOUT_S))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping:
        return 0 if all(code == 0 for code in codes) else 1
    return next((code for code in codes if code > 0), 1)  # a worker ended on its own: never report success


def _cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.reconciler import main_once

    _configure_logging(args.log_level)
    while True:
        report = main_once(settings)
        print(
            f"reconciled: {len(report.requeued)} re-queued, {len(report.canceled)} canceled, "
            f"{len(report.failed)} failed, {len(report.lost)} lost, {report.published} published"
            + (" (lost-message check skipped: no Redis)" if report.lost_check_skipped else ""),
            flush=True,
        )
        if args.once:
            return 0
        time.sleep(settings.reconcile_interval_s)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="renderfarm", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    upgrade = db.add_parser("upgrade", help="apply the migrations (RENDERFARM_DATABASE_URL)")
    upgrade.add_argument("--revision", default="head")
    upgrade.set_defaults(handler=_cmd_db_upgrade)

    model = commands.add_parser("model", help="models").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("build-tiny", help="write a tiny random-weight Stable Diffusion model to DIR")
    tiny.add_argument("dir")
    tiny.add_argument("--kind", choices=["img2img", "inpaint", "edit"], default="img2img")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=_cmd_model_build_tiny)

    demo = commands.add_parser("demo", help="render a handful of jobs with the tiny model, no servers needed")
    demo.add_argument("--out", default="demo-output", help="folder for results, overlays and masks")
    demo.set_defaults(handler=_cmd_demo)

    up = commands.add_parser(
        "up", help="serve the embedded farm: the API with an in-process worker, SQLite and a local folder"
    )
    _add_bind_arguments(up)
    up.set_defaults(handler=_cmd_up)

    scheduler = commands.add_parser("scheduler", help="serve the HTTP API, dispatcher and reconciler (cluster mode)")
    _add_bind_arguments(scheduler)
    scheduler.set_defaults(handler=_cmd_scheduler)

    worker = commands.add_parser("worker", help="run Celery workers: one per GPU, or one CPU worker (cluster mode)")
    worker.add_argument("--gpus", default="all", help="'all' (a CPU worker when there is no GPU), 'cpu', or '0,1'")
    worker.add_argument("--queues", default=None, help="comma-separated queues (default: the default model's)")
    worker.set_defaults(handler=_cmd_worker, api_settings=False)

    reconcile = commands.add_parser("reconcile", help="requeue expired leases and re-publish lost or undispatched jobs")
    reconcile.add_argument("--once", action="store_true", help="one run, then exit (default: every interval)")
    reconcile.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    reconcile.set_defaults(handler=_cmd_reconcile, api_settings=False)

    # The client side: submit, status, wait, cancel, ls, download, batch (renderfarm/client_cli.py).
    register_client_commands(commands)
    return parser


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _add_bind_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860, where A1111 clients look)")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)


def _checked(settings: Settings, api_settings: bool) -> Settings:
    """`settings.check()`; for commands that serve no API (worker, reconcile) without the rule that cluster mode
    needs API tokens, which is the API's alone: every other rule still applies."""
    if api_settings:
        return settings.check()
    settings.model_copy(update={"dev_mode": True}).check()
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        settings = _checked(Settings(), getattr(args, "api_settings", True))
        return handler(args, settings)
    except RenderfarmError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"renderfarm: {exc.message}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
