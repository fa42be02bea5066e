"""What the farm answers, as frozen dataclasses: a job's snapshot, its artifacts (renderfarm/_job.py), an asset, a
batch; and `Grid`, a batch's axes.

Each has `from_dict` (the API's JSON) and keeps the JSON it came from in `raw`, so a field the farm adds later is
reachable before the SDK knows it. Times are timezone-aware UTC datetimes; durations are seconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from renderfarm._job import Artifact, ErrorInfo, Job, JobState, optional_time, required_time
from shared.job.artifacts import ArtifactKind

__all__ = [
    "Artifact",
    "ArtifactKind",
    "Asset",
    "Batch",
    "BatchCreated",
    "ErrorInfo",
    "Grid",
    "Job",
    "JobState",
]


@dataclass(frozen=True)
class Asset:
    """An uploaded input image: reference it in jobs as `asset_id` (`asset:<sha256>`)."""

    asset_id: str
    sha256: str
    width: int
    height: int
    mime: str
    bytes: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Asset:
        return cls(
            asset_id=str(data["asset_id"]),
            sha256=str(data["sha256"]),
            width=int(data["width"]),
            height=int(data["height"]),
            mime=str(data["mime"]),
            bytes=int(data["bytes"]),
        )


@dataclass(frozen=True)
class Grid:
    """A batch as axes of values: `Grid.product(...)` takes every combination (the first axis varies slowest),
    `Grid.zip(...)` the i-th value of every axis (all of one length). Axes are job fields; `init_images` values
    (or `image`, its one-picture shorthand) may be anything `submit` takes as an image.

    >>> Grid.product(image=["a.png", "b.png"], prompt=["a fox", "a cat"], seed=[1, 2, 3]).size
    12
    """

    mode: Literal["product", "zip"]
    axes: Mapping[str, Sequence[Any]]

    @classmethod
    def product(cls, **axes: Sequence[Any]) -> Grid:
        return cls("product", dict(axes))

    @classmethod
    def zip(cls, **axes: Sequence[Any]) -> Grid:
        lengths = {len(values) for values in axes.values()}
        if len(lengths) > 1:
            raise ValueError(f"a zip grid needs axes of one length, not {sorted(lengths)}; use Grid.product")
        return cls("zip", dict(axes))

    @property
    def size(self) -> int:
        """How many jobs the grid makes."""
        lengths = [len(values) for values in self.axes.values()]
        if not lengths:
            return 0
        if self.mode == "zip":
            return lengths[0]
        size = 1
        for length in lengths:
            size *= length
        return size


@dataclass(frozen=True)
class BatchCreated:
    """The answer to `submit_batch`: `enqueued` jobs were created now, `existing` already were (a retry)."""

    batch_id: str
    mode: str
    requested: int
    enqueued: int
    existing: int
    task_ids: tuple[str, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchCreated:
        return cls(
            batch_id=str(data["batch_id"]),
            mode=str(data["mode"]),
            requested=int(data["requested"]),
            enqueued=int(data["enqueued"]),
            existing=int(data["existing"]),
            task_ids=tuple(data.get("task_ids") or ()),
        )


@dataclass(frozen=True)
class Batch:
    """A batch's status: `counts` by state (they add up to `total`), `progress` 0..1, `eta_s` seconds, and one page
    of its items (`next_cursor` names the next page, None on the last)."""

    batch_id: str
    mode: str
    created_at: datetime
    canceled_at: datetime | None
    requested: int
    total: int
    counts: Mapping[JobState, int]
    finished: int
    progress: float
    elapsed_s: float | None
    jobs_per_s: float | None
    eta_s: float | None
    items: tuple[Job, ...]
    next_cursor: str | None
    eta_range_s: tuple[float, float] | None = None  # [low, high] around eta_s (docs/api.md "ETA")
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Batch:
        eta_range = data.get("eta_range_s")
        return cls(
            batch_id=str(data["batch_id"]),
            mode=str(data["mode"]),
            created_at=required_time(data["created_at"]),
            canceled_at=optional_time(data.get("canceled_at")),
            requested=int(data["requested"]),
            total=int(data["total"]),
            counts={JobState(name): int(count) for name, count in (data.get("counts") or {}).items()},
            finished=int(data["finished"]),
            progress=float(data["progress"]),
            elapsed_s=data.get("elapsed_s"),
            jobs_per_s=data.get("jobs_per_s"),
            eta_s=data.get("eta_s"),
            items=tuple(Job.from_dict(item) for item in data.get("items") or ()),
            next_cursor=data.get("next_cursor"),
            eta_range_s=(float(eta_range[0]), float(eta_range[1])) if isinstance(eta_range, list) else None,
            raw=dict(data),
        )

    @property
    def is_finished(self) -> bool:
        """True when every item is succeeded, failed or canceled."""
        return self.finished >= self.total

    def count(self, state: JobState | str) -> int:
        return self.counts.get(JobState(state), 0)

    def __iter__(self) -> Iterator[Job]:
        return iter(self.items)
