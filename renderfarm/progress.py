"""Progress on the command line, shared by `submit --wait`, `wait` and `batch`.

On a terminal it is a `rich` progress bar, redrawn in place and sized to the terminal's width (rich reads the
width from the terminal, or COLUMNS), so an 80-column terminal never wraps or scrolls. Anywhere else (a pipe, a log
file, CI) it is plain lines: one per meaningful change (a new state, another tenth of the steps, other batch counts),
at most one every `log_interval_s` seconds for repeated progress, never carriage returns.

    with JobProgress(sys.stderr) as shown:
        job = client.wait(task_id, on_update=shown.update)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Final, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Column

from renderfarm._types import Job, JobState

__all__ = ["BatchProgress", "JobProgress", "duration"]

LOG_INTERVAL_S: Final = 5.0  # seconds between two plain progress lines that only differ by progress
PROGRESS_BUCKETS: Final = 10  # plain lines report a running job's progress in tenths


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m05s, 2h07m."""
    seconds = max(round(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _Display:
    """The part both displays share: a rich bar on a terminal, plain lines elsewhere, nothing for None.

    The bar's line is at most DESCRIPTION_WIDTH + BAR_WIDTH + DETAIL_WIDTH + 5 (the time left) columns, with the
    three gaps: 79 or less, so an 80-column terminal holds it whole; rich shrinks the text columns (with an
    ellipsis) on a narrower one, so the bar never wraps.
    """

    DESCRIPTION_WIDTH: int = 28  # the task id
    BAR_WIDTH: int = 20
    DETAIL_WIDTH: int = 20  # the state, with the step or the queue position

    def __init__(self, stream: TextIO | None, *, log_interval_s: float = LOG_INTERVAL_S) -> None:
        self.stream = stream
        self.tty = bool(stream is not None and stream.isatty())
        self.log_interval_s = log_interval_s
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_key: object = None
        self._last_write = 0.0
        self._pending: tuple[object, str] | None = None  # a change not written yet (too soon after the last line)

    def _start_bar(self, description: str, total: float | None) -> None:
        assert self.stream is not None
        console = Console(file=self.stream, highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}", table_column=_ellipsis_column(self.DESCRIPTION_WIDTH)),
            BarColumn(bar_width=self.BAR_WIDTH),
            TextColumn("{task.fields[detail]}", table_column=_ellipsis_column(self.DETAIL_WIDTH)),
            TimeRemainingColumn(compact=True),
            console=console,
            transient=False,
            refresh_per_second=8,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, detail="")

    def _bar(self, description: str, completed: float, total: float | None, detail: str) -> None:
        if self._progress is None:
            self._start_bar(description, total)
        assert self._progress is not None
        assert self._task is not None
        self._progress.update(self._task, description=description, completed=completed, total=total, detail=detail)

    def _line(self, key: object, text: str, *, urgent: bool) -> None:
        """Write `text` when `key` changed: at once when `urgent` (a new state), else at most every interval."""
        assert self.stream is not None
        now = time.monotonic()
        if key == self._last_key:
            return
        if not urgent and now - self._last_write < self.log_interval_s:
            self._pending = (key, text)
            return
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_key, self._last_write, self._pending = key, now, None

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._pending is not None and self.stream is not None:
            # The last change, held back by the interval: the log ends with where things stood.
            self.stream.write(self._pending[1] + "\n")
            self.stream.flush()
            self._pending = None


def _ellipsis_column(max_width: int) -> Column:
    return Column(no_wrap=True, overflow="ellipsis", max_width=max_width)


class JobProgress(_Display):
    """One job's progress: its task id and state, a bar over its steps, the step, queue position or ETA."""

    def update(self, job: Job) -> None:
        if self.stream is None:
            return
        if self.tty:
            total = float(job.total_steps) if job.total_steps else 1.0
            completed = float(job.step or 0) if job.total_steps else (1.0 if job.is_finished else 0.0)
            self._bar(job.task_id, completed, total, _short_detail(job))
            return
        detail = _job_detail(job)
        bucket = int(job.progress * PROGRESS_BUCKETS) if job.state is JobState.RUNNING else None
        key = (job.state, bucket, job.queue_position if job.state is JobState.QUEUED else None)
        urgent = self._last_key is None or not isinstance(self._last_key, tuple) or self._last_key[0] != job.state
        self._line(key, f"{job.task_id}  {job.state.value}" + (f"  {detail}" if detail else ""), urgent=urgent)

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _short_detail(job: Job) -> str:
    """The state, with the step or the queue position: what fits next to a bar."""
    if job.state is JobState.RUNNING and job.total_steps:
        return f"running {job.step}/{job.total_steps} {job.progress:.0%}"
    if job.state is JobState.QUEUED and job.queue_position is not None:
        return f"queued #{job.queue_position}"
    return job.state.value


def _job_detail(job: Job) -> str:
    if job.state is JobState.RUNNING and job.total_steps:
        return f"{job.progress:.0%} step {job.step}/{job.total_steps}"
    if job.state is JobState.QUEUED and job.queue_position is not None:
        return f"queue position {job.queue_position}"
    return ""


class BatchProgress(_Display):
    """A batch's progress: a bar over its items, the counts by state, the rate and the ETA."""

    DESCRIPTION_WIDTH = 13  # finished/total
    BAR_WIDTH = 18
    DETAIL_WIDTH = 40  # the counts by state

    def __init__(self, stream: TextIO | None, total: int, *, log_interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__(stream, log_interval_s=log_interval_s)
        self.total = total

    @staticmethod
    def counts_text(counts: Mapping[str, int]) -> str:
        failed = counts.get("failed", 0) + counts.get("canceled", 0)
        return (
            f"done {counts.get('succeeded', 0)} · running {counts.get('running', 0)} · "
            f"queued {counts.get('queued', 0)} · failed {failed}"
        )

    @staticmethod
    def line(total: int, counts: Mapping[str, int], jobs_per_s: float | None, eta_s: float | None) -> str:
        """The plain line: finished/total, the counts, the rate and the ETA (under 80 columns for batches of up to
        a million items)."""
        finished = counts.get("succeeded", 0) + counts.get("failed", 0) + counts.get("canceled", 0)
        rate = f"{jobs_per_s:.2f} img/s" if jobs_per_s else "-- img/s"
        eta = f"ETA {duration(eta_s)}" if eta_s is not None else "ETA --"
        return f"{finished}/{total} · {BatchProgress.counts_text(counts)} · {rate} · {eta}"

    def update(self, counts: Mapping[str, int], jobs_per_s: float | None, eta_s: float | None) -> None:
        if self.stream is None:
            return
        finished = counts.get("succeeded", 0) + counts.get("failed", 0) + counts.get("canceled", 0)
        if self.tty:
            self._bar(f"{finished}/{self.total}", finished, float(self.total or 1), self.counts_text(counts))
            return
        key = tuple(sorted((state, count) for state, count in counts.items() if count))
        self._line(key, self.line(self.total, counts, jobs_per_s, eta_s), urgent=self._last_key is None)

    def close(self, final: str | None = None) -> None:
        super().close()
        if self.stream is not None and final:
            self.stream.write(final + "\n")
            self.stream.flush()
