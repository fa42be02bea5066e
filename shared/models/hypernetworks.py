"""Hypernetwork files: `<models>/hypernetworks/**/*.pt`, name = stem (prompts-and-models.md
§3.8; listed only, the farm does not apply them)."""

from __future__ import annotations

from pathlib import Path

from shared.models.layout import HYPERNETWORK_FOLDER, walk_files

__all__ = ["scan_hypernetworks"]


def scan_hypernetworks(models_dir: Path | None) -> list[dict[str, str]]:
    """The reference's `/sdapi/v1/hypernetworks` items `[{name, path}]`."""
    if models_dir is None:
        return []
    return [
        {"name": path.stem, "path": str(path.absolute())}
        for path in walk_files(models_dir / HYPERNETWORK_FOLDER)
        if path.suffix.lower() == ".pt"
    ]
