"""Developer commands for the schema: `python -m shared.db upgrade|current|revision --url URL [-m MESSAGE]`.

Operators use `renderfarm db upgrade`; this is for writing and checking new revisions.
"""

from __future__ import annotations

import argparse

from shared.db.migrate import current_revision, make_revision, upgrade


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.db", description=__doc__)
    parser.add_argument("action", choices=("upgrade", "current", "revision"))
    parser.add_argument("--url", required=True, help="database URL, e.g. sqlite:///tmp/dev.db")
    parser.add_argument("-m", "--message", default="", help="revision message (revision only)")
    args = parser.parse_args(argv)
    if args.action == "upgrade":
        upgrade(args.url)
    elif args.action == "current":
        print(current_revision(args.url))
    else:
        if not args.message:
            parser.error("revision needs -m MESSAGE")
        make_revision(args.url, args.message)


if __name__ == "__main__":
    main()
