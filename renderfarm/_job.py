"""A job's snapshot as the farm answers it (`Job`, its `Artifact`s, its `ErrorInfo`), and the exceptions that carry
one: the job ended badly (`JobFailed`, `JobCanceled`), has no results yet (`JobNotFinished`), or a wait gave up
(`WaitTimeout`). They live beside `Job` because `Job.raise_for_state` raises them; the rest of the SDK's exceptions
(`renderfarm._errors`) know nothing of jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from renderfarm._errors import RenderfarmError
from shared.states import JobState

__all__ = [
    "Artifact",
    "ErrorInfo",
    "Job",
    "JobCanceled",
    "JobFailed",
    "JobNotFinished",
    "JobState",
    "WaitTimeout",
    "Waiting",
    "optional_time",
    "required_time",
]


def optional_time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def required_time(value: Any) -> datetime:
    parsed = optional_time(value)
    if parsed is None:
        raise ValueError("a required time is missing from the farm's answer")
    return parsed


@dataclass(frozen=True)
class ErrorInfo:
    """Why a job failed: `type` (class of problem), `code` (precise, stable), `message`, and the `field` at fault."""

    type: str
    code: str
    message: str
    field: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorInfo:
        return cls(
            str(data.get("type", "")), str(data.get("code", "")), str(data.get("message", "")), data.get("field")
        )


_IMAGE_SUFFIXES = (".png", ".jpg", ".webp")  # the formats results are stored in (shared.output_formats)


@dataclass(frozen=True)
class Artifact:
    """One stored output image: `kind` result | overlay | mask, its `index` in the job, a download `url` that
    expires, its `sha256` and size in `bytes`, pixel size, the seed it was rendered with and its infotext."""

    kind: str
    index: int
    url: str
    sha256: str
    bytes: int
    width: int
    height: int
    seed: int | None = None
    infotext: str | None = None

    @property
    def filename(self) -> str:
        """`{kind}-{index}.{ext}`, the name `download` gives it: the extension is the stored format's (png, jpg or
        webp, the job's `samples_format`), as the download URL's path ends."""
        suffix = PurePosixPath(urlsplit(self.url).path).suffix.lower()
        return f"{self.kind}-{self.index}{suffix if suffix in _IMAGE_SUFFIXES else '.png'}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Artifact:
        return cls(
            kind=str(data["kind"]),
            index=int(data["index"]),
            url=str(data["url"]),
            sha256=str(data["sha256"]),
            bytes=int(data.get("bytes", 0)),
            width=int(data.get("width", 0)),
            height=int(data.get("height", 0)),
            seed=data.get("seed"),
            infotext=data.get("infotext"),
        )


@dataclass(frozen=True)
class Waiting:
    """Why an unfinished job is not done yet (docs/api.md "Waiting reasons"): a stable `reason` code (`queued`,
    `behind_priority`, `tenant_fair_share`, `no_worker`, `worker_silent`, `outage_backoff`, `retry_backoff`,
    `canceling`), a sentence for people, since when (None when unknown), and the reason's own `details`
    (`jobs_ahead`, `retry_at`, `lease_until`, ...)."""

    reason: str
    message: str
    since: datetime | None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Waiting:
        return cls(
            reason=str(data["reason"]),
            message=str(data.get("message") or ""),
            since=optional_time(data.get("since")),
            details={key: value for key, value in data.items() if key not in ("reason", "message", "since")},
        )


@dataclass(frozen=True)
class Job:
    """One snapshot of a job. `progress` is 0..1, `eta_s` seconds (None when unknown); `seq` grows with every
    change, so of two snapshots of one job the one with the larger `seq` is newer.

    >>> job.state, job.progress                                          # doctest: +SKIP
    (<JobState.RUNNING: 'running'>, 0.4)
    """

    task_id: str
    state: JobState
    progress: float
    step: int
    total_steps: int | None
    eta_s: float | None
    queue_position: int | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    error: ErrorInfo | None
    warnings: tuple[Mapping[str, Any], ...]
    artifacts: tuple[Artifact, ...]
    seq: int
    # The newest live preview ({"id", "step", "job_no", "method", "requested_method", "width", "height", "image"}:
    # a data URI), only in snapshots read with `?previews=true` while the job runs (docs/api.md "Live previews").
    preview: Mapping[str, Any] | None = field(default=None, repr=False)
    # docs/api.md "Why a job waits, and when it is done": why it waits, the range around `eta_s`, and how a job was
    # stopped (an A1111 interrupt / skip keeps a partial result; a cancel not yet carried out).
    waiting: Waiting | None = None
    eta_range_s: tuple[float, float] | None = None
    cancel_requested: bool = False
    interrupted: bool = False
    skipped: bool = False
    stopped_at_step: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        error = data.get("error")
        return cls(
            task_id=str(data["task_id"]),
            state=JobState(data["state"]),
            progress=float(data.get("progress") or 0.0),
            step=int(data.get("step") or 0),
            total_steps=data.get("total_steps"),
            eta_s=data.get("eta_s"),
            queue_position=data.get("queue_position"),
            attempt=int(data.get("attempt") or 0),
            created_at=required_time(data["created_at"]),
            started_at=optional_time(data.get("started_at")),
            finished_at=optional_time(data.get("finished_at")),
            worker=data.get("worker"),
            error=ErrorInfo.from_dict(error) if isinstance(error, Mapping) else None,
            warnings=tuple(data.get("warnings") or ()),
            artifacts=tuple(Artifact.from_dict(item) for item in data.get("artifacts") or ()),
            seq=int(data.get("seq") or 0),
            preview=data.get("preview") if isinstance(data.get("preview"), Mapping) else None,
            waiting=Waiting.from_dict(waiting) if isinstance(waiting := data.get("waiting"), Mapping) else None,
            eta_range_s=_pair(data.get("eta_range_s")),
            cancel_requested=bool(data.get("cancel_requested")),
            interrupted=bool(data.get("interrupted")),
            skipped=bool(data.get("skipped")),
            stopped_at_step=data.get("stopped_at_step"),
            raw=dict(data),
        )

    @property
    def is_finished(self) -> bool:
        """True once the job is succeeded, failed or canceled: it will not change any more."""
        return self.state.is_terminal

    @property
    def results(self) -> tuple[Artifact, ...]:
        """The result images (not the overlays or masks), by index."""
        return tuple(artifact for artifact in self.artifacts if artifact.kind == "result")

    def raise_for_state(self) -> Job:
        """This job if it succeeded or is not finished yet; JobFailed / JobCanceled if it ended otherwise."""
        if self.state is JobState.FAILED:
            raise JobFailed(self)
        if self.state is JobState.CANCELED:
            raise JobCanceled(self)
        return self


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        return float(value[0]), float(value[1])
    return None


class JobFailed(RenderfarmError):
    """The job ended `failed`; `job.error` says why (type, code, message, field)."""

    def __init__(self, job: Job) -> None:
        error = job.error
        reason = f"{error.code}: {error.message}" if error is not None else "no reason given"
        super().__init__(f"job {job.task_id} ended {job.state.value} ({reason})")
        self.job = job


class JobCanceled(JobFailed):
    """The job ended `canceled`."""


class JobNotFinished(RenderfarmError):
    """Results were asked for while the job is still queued or running."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.task_id} is {job.state.value}: it has no results yet (wait for it first)")
        self.job = job


class WaitTimeout(RenderfarmError):
    """`wait` gave up after its timeout. The job itself goes on; `job` is the last snapshot seen."""

    def __init__(self, job: Job, timeout_s: float) -> None:
        super().__init__(f"job {job.task_id} was still {job.state.value} after {timeout_s:g} s")
        self.job = job
        self.timeout_s = timeout_s
