"""The `renderfarm` command line: the client commands, which need only the SDK, and the server commands.

The client commands (submit, status, wait, cancel, ls, download, batch: renderfarm/client_cli.py) run on the client
install (`pip install renderfarm`). The server commands (scheduler, worker, up, demo, db, reconcile, purge,
model) live in
renderfarm/server_cli.py, imported only when one of them runs; where the install lacks their packages they say
which extra brings them instead of failing with an ImportError.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Final

from renderfarm import __version__
from renderfarm.client_cli import register as register_client_commands
from renderfarm.completion import completion_script
from renderfarm.env_check import warn_about_unknown_variables

# The extra of pyproject.toml that brings what each server command imports.
SERVER: Final = "server"
WORKER: Final = "worker"
EMBEDDED: Final = "server,worker"  # `up` and `demo` run the API and a worker in one process
# This project's own top-level packages: a missing one of these is a bug, not a missing extra.
OWN_PACKAGES: Final = frozenset({"renderfarm", "shared", "scheduler", "worker"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="renderfarm",
        description="A render farm for img2img and inpainting: its servers and its client commands.",
        epilog="`renderfarm COMMAND --help` describes a command. Shell completion: "
        'eval "$(renderfarm completion bash)" (or zsh).',
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="the database schema: db upgrade applies the migrations").add_subparsers(
        dest="db_command", required=True, metavar="DB_COMMAND"
    )
    upgrade = db.add_parser("upgrade", help="apply the migrations (RENDERFARM_DATABASE_URL)")
    upgrade.add_argument("--revision", default="head", help="the schema revision to reach (default: the newest)")
    # Serves no API: needs no API tokens (the migration Job and service are given none, docs/cluster.md).
    upgrade.set_defaults(server_command="db upgrade", extra=SERVER, api_settings=False)

    model = commands.add_parser(
        "model", help="models: model build-tiny writes a tiny random-weight model"
    ).add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
    tiny = model.add_parser("build-tiny", help="write a tiny random-weight Stable Diffusion model to DIR")
    tiny.add_argument("dir", help="the folder to write the model into")
    tiny.add_argument(
        "--kind", choices=["img2img", "inpaint", "edit"], default="img2img", help="the model's kind (default img2img)"
    )
    tiny.add_argument("--seed", type=int, default=0, help="the seed of its random weights (default 0)")
    tiny.set_defaults(server_command="model build-tiny", extra=WORKER)

    demo = commands.add_parser("demo", help="render a handful of jobs with the tiny model, no servers needed")
    demo.add_argument(
        "--out", default="demo-output", help="folder for results, overlays and masks (default ./demo-output)"
    )
    demo.add_argument("--log-level", default="warning", choices=LOG_LEVELS, help=LOG_LEVEL_HELP)
    demo.set_defaults(server_command="demo", extra=EMBEDDED)

    up = commands.add_parser(
        "up", help="serve the embedded farm: the API with an in-process worker, SQLite and a local folder"
    )
    _add_bind_arguments(up)
    up.set_defaults(server_command="up", extra=EMBEDDED)

    scheduler = commands.add_parser("scheduler", help="serve the HTTP API, dispatcher and reconciler (cluster mode)")
    _add_bind_arguments(scheduler)
    scheduler.set_defaults(server_command="scheduler", extra=SERVER)

    worker = commands.add_parser("worker", help="run Celery workers: one per GPU, or one CPU worker (cluster mode)")
    worker.add_argument("--gpus", default="all", help="'all' (a CPU worker when there is no GPU), 'cpu', or '0,1'")
    chosen = worker.add_mutually_exclusive_group()
    chosen.add_argument(
        "--queues", default=None, help="comma-separated queues (default: those of every model the worker can serve)"
    )
    chosen.add_argument(
        "--tier",
        choices=("interactive", "batch"),
        default=None,
        help="only the interactive or only the batch queues of every model the worker can serve",
    )
    worker.set_defaults(server_command="worker", extra=WORKER, api_settings=False)

    reconcile = commands.add_parser("reconcile", help="requeue expired leases and re-publish lost or undispatched jobs")
    reconcile.add_argument("--once", action="store_true", help="one run, then exit (default: every interval)")
    reconcile.add_argument("--log-level", default="info", choices=LOG_LEVELS, help=LOG_LEVEL_HELP)
    reconcile.set_defaults(server_command="reconcile", extra=SERVER, api_settings=False)

    purge = commands.add_parser(
        "purge", help="delete what is past its retention (results, inputs, job rows): one bounded pass"
    )
    purge.add_argument("--dry-run", action="store_true", help="report what would be deleted; delete nothing")
    purge.add_argument("--limit", type=int, default=None, help="items of each kind (default: PURGE_BATCH_SIZE)")
    purge.add_argument("--json", action="store_true", help="print the report as JSON")
    purge.set_defaults(server_command="purge", extra=SERVER, api_settings=False)

    # The client side: submit, status, wait, cancel, ls, download, batch (renderfarm/client_cli.py).
    register_client_commands(commands)

    completion = commands.add_parser("completion", help="print a shell completion script (bash or zsh)")
    completion.add_argument(
        "shell", choices=["bash", "zsh"], help='the shell; use as eval "$(renderfarm completion bash)"'
    )
    completion.set_defaults(handler=lambda args, _settings: _print_completion(parser, args.shell))
    return parser


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_LEVEL_HELP = "the least important log lines shown (third-party libraries: warnings and worse only)"


def _print_completion(parser: argparse.ArgumentParser, shell: str) -> int:
    print(completion_script(parser, shell), end="")
    return 0


def _add_bind_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860, where A1111 clients look)")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help=LOG_LEVEL_HELP)


def run_server_command(args: argparse.Namespace) -> int:
    """Run a server command; when a package of its extra is not installed, say which extra to install (exit 2)."""
    try:
        from renderfarm import server_cli

        return server_cli.run(args)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not missing or missing in OWN_PACKAGES:
            raise
        print(
            f"renderfarm: `renderfarm {args.command}` needs the {args.extra} packages, which this install lacks "
            f"(no module named {missing!r}); install them with: pip install 'renderfarm[{args.extra}]'",
            file=sys.stderr,
        )
        return 2


def _known_settings() -> frozenset[str] | None:
    """The farm's settings' variables, or None on a client install (which lacks the settings' packages)."""
    try:
        from renderfarm.server_cli import known_settings
    except ModuleNotFoundError:
        return None
    return known_settings()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "completion":
        known = _known_settings()
        if known is not None:  # a client install cannot tell a server setting from a typo: it stays silent
            warn_about_unknown_variables(sys.stderr, known)
    if hasattr(args, "server_command"):
        return run_server_command(args)
    # A client command: its configuration is its flags and the environment, not the farm's settings.
    return int(args.handler(args, None))


if __name__ == "__main__":
    sys.exit(main())
