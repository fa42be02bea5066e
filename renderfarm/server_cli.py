"""The server commands of the `renderfarm` command line: the scheduler, the workers, the embedded farm, the
database and the reconciler. They compose scheduler, worker and shared parts, so this module is imported only when
one of them runs (`renderfarm.cli.main`), and its heavy imports (torch, diffusers, SQLAlchemy) happen inside the
command that needs them.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from renderfarm.quiet import quiet_third_party
from shared.config import ENV_PREFIX, Settings, drop_api_secrets_from_environment
from shared.errors import ConfigError, RenderfarmError

EMBEDDED_COMMANDS = frozenset({"up", "demo"})

__all__ = ["known_settings", "run"]


def _cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db import url_for_display
    from shared.db.migrate import upgrade

    upgrade(settings.resolved_database_url, revision=args.revision)
    print(f"database at {url_for_display(settings.resolved_database_url)} is at revision {args.revision}")
    return 0


def _cmd_model_build_tiny(args: argparse.Namespace, settings: Settings) -> int:
    from worker.engine.models import build_tiny_model

    path = build_tiny_model(Path(args.dir), kind=args.kind, seed=args.seed)
    print(f"tiny {args.kind} model written to {path}")
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from renderfarm.demo import run_demo

    _configure_logging(args.log_level)
    return run_demo(Path(args.out), settings, log_level=args.log_level)


def _configure_logging(level: str) -> None:
    from shared.redact import install_log_redaction

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_third_party(level)
    install_log_redaction()


def _cluster_only(settings: Settings, command: str) -> None:
    """Refuse a cluster command in the embedded default, where its messages would reach no worker."""
    if settings.embedded:
        raise ConfigError(
            f"`renderfarm {command}` is a part of the cluster and needs RENDERFARM_REDIS_URL (the broker); "
            "on one machine without servers run `renderfarm up`, which has its worker inside",
            field="RENDERFARM_REDIS_URL",
        )


def _cmd_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from renderfarm.embedded import bind_socket, stop_signals_end_quietly
    from scheduler.app import create_app
    from scheduler.serving import graceful_server

    _cluster_only(settings, "scheduler")
    settings.check_bind(args.host)
    from shared.redact import install_log_redaction

    _configure_logging(args.log_level)
    sock = bind_socket(args.host, args.port)
    try:
        app = create_app(settings)
        # The app keeps the tokens' digests only; the settings it was built from, and the environment they came
        # from, are dropped, so that nothing in this process holds a token while it serves (docs/reliability.md).
        del settings
        drop_api_secrets_from_environment()
        # Open event streams end as the shutdown begins (their clients resume on the next scheduler).
        server = graceful_server(app, log_level=args.log_level)
        # uvicorn.Config set up its own loggers (the access log prints query strings: signed download URLs).
        install_log_redaction()
        quiet_third_party(args.log_level)  # again: uvicorn.Config has just set its loggers' levels
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
        processes = start_workers(settings, args.gpus, queues, args.tier)
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


def _cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    """One pass of the retention purge (scheduler/purge.py) against the configured database and storage."""
    import json

    from scheduler.purge import purge_once
    from shared.db import Database
    from shared.storage import open_storage

    policy = settings.retention_policy()
    if not policy.enabled:
        print("renderfarm: no retention is set (RENDERFARM_RETENTION_*_DAYS, RENDERFARM_TENANT_RETENTION): "
              "nothing is ever purged", file=sys.stderr)  # fmt: skip
        return 0
    db = Database.from_url(settings.resolved_database_url)
    try:
        with open_storage(settings) as storage:
            limit = args.limit or settings.purge_batch_size
            report = purge_once(db, storage, policy, limit=limit, dry_run=args.dry_run)
    finally:
        db.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    verb = "would purge" if report.dry_run else "purged"
    print(f"{verb}: {len(report.results)} result set(s), {len(report.jobs)} job row(s), {len(report.batches)} "
          f"batch(es), {len(report.inputs)} input(s), {report.objects} stored object(s)")  # fmt: skip
    listed = (("results", report.results), ("job", report.jobs), ("batch", report.batches), ("input", report.inputs))
    for kind, names in listed:
        for name in names:
            print(f"  {kind} {name}")
    return 0


def known_settings() -> frozenset[str]:
    """The environment variables the farm's settings read (RENDERFARM_DATA_DIR, ...)."""
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


def _embedded_only(settings: Settings) -> None:
    """`up` and `demo` are the embedded farm: say so first when RENDERFARM_REDIS_URL is set, before the cluster's
    rules (API tokens, Postgres) would be asked for, which `up` could not use anyway."""
    if not settings.embedded:
        raise ConfigError(
            "`renderfarm up` and `demo` run the embedded farm (API and worker in one process, SQLite, in-memory "
            "broker) and cannot use Redis, but RENDERFARM_REDIS_URL is set (perhaps left over from a cluster): "
            "unset it to run the embedded farm, or run `renderfarm scheduler` and `renderfarm worker` for the cluster",
            field="RENDERFARM_REDIS_URL",
        )


def _checked(settings: Settings, api_settings: bool) -> Settings:
    """`settings.check()`; for commands that serve no API (worker, reconcile) without the rule that cluster mode
    needs API tokens, which is the API's alone: every other rule still applies."""
    if api_settings:
        return settings.check()
    settings.model_copy(update={"dev_mode": True}).check()
    return settings


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "db upgrade": _cmd_db_upgrade,
    "model build-tiny": _cmd_model_build_tiny,
    "demo": _cmd_demo,
    "up": _cmd_up,
    "scheduler": _cmd_scheduler,
    "worker": _cmd_worker,
    "reconcile": _cmd_reconcile,
    "purge": _cmd_purge,
}


def run(args: argparse.Namespace) -> int:
    """Run the server command `args.server_command` with the checked settings; a configuration error is printed
    (naming the setting) and exits 2."""
    handler = COMMANDS[args.server_command]
    quiet_third_party(getattr(args, "log_level", "warning"))
    try:
        if args.server_command in EMBEDDED_COMMANDS:
            _embedded_only(Settings())
        # No name here holds the settings: the command may drop them (a server keeps no token once it has digests).
        return handler(args, _checked(Settings(), getattr(args, "api_settings", True)))
    except RenderfarmError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"renderfarm: {exc.message}{where}", file=sys.stderr)
        return 2
