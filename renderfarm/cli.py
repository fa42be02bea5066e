"""The `renderfarm` command line: the one place that composes scheduler, worker and shared parts.

Heavy imports (torch, diffusers, SQLAlchemy) happen inside the commands that need them, so `renderfarm --help`
stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from shared.config import Settings
from shared.errors import RenderfarmError


def _cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.migrate import upgrade

    upgrade(settings.resolved_database_url, revision=args.revision)
    print(f"database at {settings.resolved_database_url} is at revision {args.revision}")
    return 0


def _cmd_model_build_tiny(args: argparse.Namespace, settings: Settings) -> int:
    from worker.models import build_tiny_model

    path = build_tiny_model(Path(args.dir), kind=args.kind, seed=args.seed)
    print(f"tiny {args.kind} model written to {path}")
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from renderfarm.demo import run_demo

    return run_demo(Path(args.out), settings)


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        settings = Settings().check()
        return handler(args, settings)
    except RenderfarmError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"renderfarm: {exc.message}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
