"""A misspelt RENDERFARM_* environment variable is warned about, with the closest known name.

pydantic-settings ignores variables it does not know (the farm's Settings has `extra="ignore"`, so that one process
can see the settings of the others), which makes `RENDERFARM_REDIS_ULR=...` a silent no-op. The command line checks
every RENDERFARM_ variable against the names the farm and its tools read and warns (on stderr, once per run) about
the rest, suggesting the nearest known name (difflib).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Final, TextIO

__all__ = ["OTHER_VARIABLES", "unknown_variables", "warn_about_unknown_variables"]

PREFIX: Final = "RENDERFARM_"
# Read outside the farm's Settings: the SDK's two, the stand-in renderer's step time, and dev.sh's torch install.
OTHER_VARIABLES: Final = frozenset(
    {
        "RENDERFARM_URL",
        "RENDERFARM_TOKEN",
        "RENDERFARM_STANDIN_STEP_S",
        "RENDERFARM_TORCH_INDEX",
        "RENDERFARM_TORCH_SPEC",
    }
)
# The project's test, benchmark and fault-injection harnesses own these families.
TOOL_PREFIXES: Final = ("RENDERFARM_TEST_", "RENDERFARM_BENCH_", "RENDERFARM_FAULT", "RENDERFARM_SCHEMATHESIS_")


def unknown_variables(environ: Mapping[str, str], known: frozenset[str]) -> list[tuple[str, str | None]]:
    """`(name, closest known name or None)` for each RENDERFARM_ variable in `environ` that nothing reads."""
    unknown = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(PREFIX) or upper in known or upper.startswith(TOOL_PREFIXES):
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.75)
        unknown.append((name, close[0] if close else None))
    return unknown


def warn_about_unknown_variables(
    stream: TextIO, known: frozenset[str], environ: Mapping[str, str] | None = None
) -> int:
    """Print one warning per RENDERFARM_ variable not in `known` (the farm's settings: `server_cli.known_settings`)
    nor in OTHER_VARIABLES; returns how many."""
    known = known | OTHER_VARIABLES
    found = unknown_variables(os.environ if environ is None else environ, known)
    for name, close in found:
        hint = f"; did you mean {close}?" if close else ""
        stream.write(f"renderfarm: warning: {name} is not a setting renderfarm knows, so it is ignored{hint}\n")
    return len(found)
