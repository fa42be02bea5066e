"""Batch manifests: a file that describes a batch of jobs, for `renderfarm batch MANIFEST` and `load_manifest`.

YAML or JSON, one of `jobs` (a list) or `grid` (axes of values, with an explicit mode), and optional `defaults`
under every item and `batch_id`. Image paths are relative to the manifest's folder; `asset:<sha256>` and URLs
are passed on as they are.

    # portraits.yaml
    defaults: {prompt: "a portrait, oil on canvas", steps: 20, width: 512, height: 512}
    jobs:
      - {image: faces/ann.png, mask: faces/ann-mask.png, task_id: ann}
      - {image: faces/bob.png, seed: 7}

    # sweep.yaml: 2 pictures × 3 prompts × 4 seeds = 24 jobs ("product"; "zip" pairs the i-th values instead)
    defaults: {steps: 20}
    grid:
      mode: product
      axes:
        image: [a.png, b.png]
        prompt: ["a fox", "a cat", "an owl"]
        seed: [1, 2, 3, 4]

CSV is for simple lists: a header row of field names (`image`, `mask`, `task_id`, `prompt`, `seed`, ...), one job
per row; empty cells are left out, and cells that read as JSON numbers or true/false become those.

The items expand in the same order as the farm expands them (`scheduler.batches.expand_grid`: for "product" the
first axis varies slowest), so item `i` is the job with task id `{batch_id}-{i}` unless it names its own.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from renderfarm._requests import SHORTHANDS, is_reference
from renderfarm._types import Grid

__all__ = ["IMAGE_FIELDS", "Manifest", "ManifestError", "ManifestItem", "load_manifest"]

IMAGE_FIELDS: Final = ("image", "init_images", "mask", "latent_mask")
_TOP_KEYS: Final = frozenset({"batch_id", "defaults", "jobs", "grid"})


class ManifestError(ValueError):
    """The manifest cannot be read or does not describe a batch; the message names the file and the place."""


@dataclass(frozen=True)
class ManifestItem:
    """One job of the batch: its `index`, its fields (images as resolved paths or references), the task id it
    names itself (None: the farm's `{batch_id}-{index}`), and for a grid its value on each axis."""

    index: int
    fields: Mapping[str, Any]
    task_id: str | None = None
    axes: Mapping[str, Any] = field(default_factory=dict)  # a grid item's value on each axis (by the axis' name)

    @property
    def init_images(self) -> list[Any]:
        value = self.fields.get("init_images")
        if value is None:
            return []
        return list(value) if isinstance(value, list | tuple) else [value]

    @property
    def mask(self) -> Any:
        return self.fields.get("mask")


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest: `jobs` or `grid`, the `defaults` under them, and the `digest` of the file (sha256)."""

    path: Path
    digest: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    jobs: tuple[Mapping[str, Any], ...] | None = None
    grid: Grid | None = None
    batch_id: str | None = None

    def items(self) -> list[ManifestItem]:
        """Every job of the batch with the defaults applied, in the farm's order."""
        rows: list[dict[str, Any]]
        axes: list[dict[str, Any]]
        defaults = _canonical(self.defaults)  # `image` in the defaults is `init_images`, as in a job
        if self.jobs is not None:
            rows = [{**defaults, **_canonical(job)} for job in self.jobs]
            axes = [{} for _ in rows]
        else:
            assert self.grid is not None
            names = list(self.grid.axes)
            values = list(self.grid.axes.values())
            combos = itertools.product(*values) if self.grid.mode == "product" else zip(*values, strict=True)
            axes = [dict(zip(names, combo, strict=True)) for combo in combos]
            rows = [{**defaults, **_canonical(point)} for point in axes]
        return [
            ManifestItem(
                index,
                row,
                row.get("force_task_id") if isinstance(row.get("force_task_id"), str) else None,
                axes=point,
            )
            for index, (row, point) in enumerate(zip(rows, axes, strict=True))
        ]

    @property
    def axis_names(self) -> list[str]:
        """The grid's axes in order (the first varies slowest); empty for a list of jobs."""
        return list(self.grid.axes) if self.grid is not None else []

    def submit_arguments(self) -> dict[str, Any]:
        """Keyword arguments of `Client.submit_batch` for this manifest (without the batch id)."""
        if self.jobs is not None:
            return {"jobs": list(self.jobs), "defaults": dict(self.defaults)}
        return {"grid": self.grid, "defaults": dict(self.defaults)}


def _canonical(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {SHORTHANDS.get(name, name): value for name, value in fields.items()}


def _resolve_image(value: Any, base: Path, where: str) -> Any:
    if isinstance(value, list | tuple):
        return [_resolve_image(item, base, f"{where}.{i}") for i, item in enumerate(value)]
    if not isinstance(value, str) or is_reference(value):
        return value
    path = (base / value).resolve()
    if not path.is_file():
        raise ManifestError(f"{where}: no such image file {value!r} (looked for {path})")
    return path


def _resolve_fields(fields: Any, base: Path, where: str) -> dict[str, Any]:
    if not isinstance(fields, Mapping):
        raise ManifestError(f"{where}: must be a mapping of job fields")
    resolved = dict(fields)
    for name in IMAGE_FIELDS:
        if resolved.get(name) is not None:
            resolved[name] = _resolve_image(resolved[name], base, f"{where}.{name}")
    return resolved


def _csv_value(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    # Scalars only: a prompt that happens to read as JSON ("[1]", "null") stays text.
    return value if isinstance(value, int | float | bool) else text


def _read(path: Path) -> tuple[Any, bytes]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            reader = csv.DictReader(data.decode("utf-8-sig").splitlines())
            rows = [{key.strip(): _csv_value(value) for key, value in row.items() if key and value} for row in reader]
            return {"jobs": rows}, data
        if suffix == ".json":
            return json.loads(data), data
        return yaml.safe_load(data), data  # .yaml, .yml, and anything else (YAML reads JSON too)
    except (ValueError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: not valid {suffix.lstrip('.').upper() or 'YAML'}: {exc}") from exc


def load_manifest(path: str | Path) -> Manifest:
    """Read a YAML, JSON or CSV manifest; image paths are resolved against its folder and must exist.

    Raises ManifestError naming the file and the place of the problem (`jobs.3.mask`, `grid.mode`, ...).

    >>> manifest = load_manifest("sweep.yaml")                            # doctest: +SKIP
    >>> len(manifest.items())                                             # doctest: +SKIP
    24
    """
    path = Path(path)
    document, data = _read(path)
    base = path.resolve().parent
    if not isinstance(document, Mapping):
        raise ManifestError(f"{path}: a manifest is a mapping with 'jobs' or 'grid'")
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise ManifestError(f"{path}: unknown key {unknown[0]!r}; a manifest has batch_id, defaults, jobs or grid")
    if ("jobs" in document) == ("grid" in document):
        raise ManifestError(f"{path}: give either 'jobs' (a list) or 'grid' (axes and a mode), not both or neither")
    defaults = _resolve_fields(document.get("defaults") or {}, base, "defaults")
    digest = hashlib.sha256(data).hexdigest()
    batch_id = str(document["batch_id"]) if document.get("batch_id") else None
    if "jobs" in document:
        jobs = document["jobs"]
        if not isinstance(jobs, Sequence) or isinstance(jobs, str) or not jobs:
            raise ManifestError(f"{path}: 'jobs' must be a non-empty list")
        resolved = tuple(_resolve_fields(job, base, f"jobs.{i}") for i, job in enumerate(jobs))
        return Manifest(path, digest, defaults, jobs=resolved, batch_id=batch_id)
    grid = document["grid"]
    if not isinstance(grid, Mapping):
        raise ManifestError(f"{path}: 'grid' must be a mapping with 'mode' and 'axes'")
    mode = grid.get("mode")
    if mode not in ("product", "zip"):
        raise ManifestError(f"{path}: grid.mode must be 'product' (every combination) or 'zip', not {mode!r}")
    axes = grid.get("axes")
    if not isinstance(axes, Mapping) or not axes:
        raise ManifestError(f"{path}: grid.axes must map field names to lists of values")
    resolved_axes: dict[str, list[Any]] = {}
    for name, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ManifestError(f"{path}: grid.axes.{name} must be a non-empty list")
        if name in IMAGE_FIELDS:
            values = [_resolve_image(value, base, f"grid.axes.{name}.{i}") for i, value in enumerate(values)]
        resolved_axes[str(name)] = values
    try:
        built = Grid.zip(**resolved_axes) if mode == "zip" else Grid.product(**resolved_axes)
    except ValueError as exc:
        raise ManifestError(f"{path}: grid.axes: {exc}") from exc
    return Manifest(path, digest, defaults, grid=built, batch_id=batch_id)
