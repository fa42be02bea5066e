"""The farm's version, read from the installed distribution, for infotexts and the API (no SDK import needed)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def farm_version() -> str:
    """`renderfarm`'s installed version, or "0+unknown" when run from a tree that was never installed."""
    try:
        return version("renderfarm")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = farm_version()
