"""Live status of running jobs: progress, cancel flags and change notifications.

Postgres holds the durable state of a job; this holds what changes several times a second while it runs, so status
reads stay cheap and the database is not written at every sampling step. It may lose everything (Redis keeps nothing
on disk on our machines): a job's durable state never depends on it, and the cancel flag is also in the jobs row.

Two backends with one interface: Redis in cluster mode, a process-local store in the embedded default (where the
worker runs inside the API process).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

LIVE_TTL_S = 24 * 3600  # a record outlives any job; it is deleted when the job ends
CANCEL_TTL_S = 24 * 3600
PREVIEW_TTL_S = 3600  # a live preview is deleted with the job's progress; this only bounds a forgotten one
# A job is "watched" (the worker draws live previews) for this long after a client last asked for its preview.
# Pollers ask every second or so; an event stream renews it at least every WAIT_SLICE_S (5 s) of
# scheduler/routes/events.py, so it must be longer than that.
WATCH_TTL_S = 10.0
KEY_PREFIX = "rf:"


@dataclass(frozen=True)
class LiveProgress:
    """Where a running job is. Times are Unix seconds; `fraction` is 0..1 over the whole job (all batches)."""

    job_id: str
    attempt: int
    step: int
    total_steps: int
    job_no: int
    job_count: int
    fraction: float
    eta_s: float | None
    started_at: float
    updated_at: float
    worker: str | None = None
    preview_id: int | None = None
    seq: int = 0  # counts this attempt's progress writes; status snapshots combine it with the row's seq

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> LiveProgress:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)


@dataclass(frozen=True)
class LivePreview:
    """The newest live preview of a running job (docs/engine.md "Live previews"): a small picture, base64.

    `preview_id` grows with every preview of the job (across attempts too); `method` is what drew it and
    `requested_method` what the job's options asked for (they differ when the farm substitutes, e.g. "Approx NN").
    `step` and `job_no` are the sampling step and batch it shows.
    """

    job_id: str
    attempt: int
    preview_id: int
    step: int
    job_no: int
    method: str
    requested_method: str
    mime: str
    data_b64: str
    width: int
    height: int

    @property
    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{self.data_b64}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> LivePreview:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)


@dataclass(frozen=True)
class StopRequests:
    """What the worker reads at every sampling step, in one trip: the A1111-style requests `interrupt` (sticky)
    and `skips` (a count that only grows), the farm's own `cancel` flag, and whether a client `watched` the job's
    live previews lately (so the worker draws them only then)."""

    interrupt: bool = False
    skips: int = 0
    cancel: bool = False
    watched: bool = False


def events_key(tenant: str) -> str:
    """The wake-up key of a tenant's event feed. `notify(events_key(t))` after a change that may have written
    events of tenant `t` (a job ending, a cancel) wakes its `GET /v1/events` long polls at once; they also read the
    feed again every few seconds, so a lost wake-up costs latency, never an event."""
    return f"events:{tenant}"


class LiveStatus(ABC):
    """Progress records, cancel flags and change notifications, keyed by the job's database id (or, for the
    notifications, `events_key`)."""

    @abstractmethod
    def set_progress(self, progress: LiveProgress) -> None:
        """Store the newest progress of a job and notify its watchers."""

    @abstractmethod
    def get_progress(self, job_id: uuid.UUID | str) -> LiveProgress | None: ...

    def get_many(self, job_ids: Iterable[uuid.UUID | str]) -> dict[str, LiveProgress]:
        found = {str(job_id): self.get_progress(job_id) for job_id in job_ids}
        return {key: value for key, value in found.items() if value is not None}

    @abstractmethod
    def clear(self, job_id: uuid.UUID | str) -> None:
        """Forget a finished job's progress (its durable state is in the database)."""

    @abstractmethod
    def request_cancel(self, job_id: uuid.UUID | str) -> None:
        """Raise the fast cancel flag that the worker checks at every step."""

    @abstractmethod
    def cancel_requested(self, job_id: uuid.UUID | str) -> bool: ...

    # -- A1111 interrupt / skip (scheduler/a1111): per-task stop requests the worker reads at every step ----------

    @abstractmethod
    def request_interrupt(self, job_id: uuid.UUID | str) -> None:
        """Ask the running job to stop sampling at its next step and keep what it has (the webui's Interrupt)."""

    @abstractmethod
    def interrupt_requested(self, job_id: uuid.UUID | str) -> bool: ...

    @abstractmethod
    def request_skip(self, job_id: uuid.UUID | str) -> int:
        """Ask the running job to end its current batch early (the webui's Skip); returns the new skip count.

        A counter, not a flag: the worker remembers how many skips it has honoured, so each request ends exactly
        one batch and the worker never has to write (reset) anything at a step.
        """

    @abstractmethod
    def skip_requested(self, job_id: uuid.UUID | str) -> int:
        """How many skips were requested for the job so far (0: none)."""

    def stop_requests(self, job_id: uuid.UUID | str) -> StopRequests:
        """Every stop request at once (what the worker's step callback reads); backends may do it in one trip."""
        return StopRequests(
            self.interrupt_requested(job_id),
            self.skip_requested(job_id),
            self.cancel_requested(job_id),
            self.watched(job_id),
        )

    # -- live previews -------------------------------------------------------------------------------------------

    @abstractmethod
    def mark_watched(self, job_id: uuid.UUID | str) -> None:
        """A client wants the job's live previews: the worker draws them for the next WATCH_TTL_S seconds."""

    @abstractmethod
    def watched(self, job_id: uuid.UUID | str) -> bool:
        """Whether a client asked for the job's previews in the last WATCH_TTL_S seconds."""

    @abstractmethod
    def set_preview(self, preview: LivePreview) -> None:
        """Store the job's newest preview (replacing the last) and notify its watchers."""

    @abstractmethod
    def get_preview(self, job_id: uuid.UUID | str) -> LivePreview | None: ...

    @abstractmethod
    def notify(self, job_id: uuid.UUID | str) -> None:
        """Wake whoever waits on this job (an SSE stream): its state or progress changed."""

    @abstractmethod
    def wait_for_change(self, job_id: uuid.UUID | str, timeout_s: float) -> bool:
        """Block until `notify(job_id)` or `timeout_s` passes; True when notified. Spurious wake-ups are allowed."""

    @abstractmethod
    def ping(self) -> None:
        """Raise when the backend cannot be reached (for /readyz)."""

    def close(self) -> None:  # noqa: B027 - optional hook; the local store holds nothing to release
        """Release connections."""


class LocalLiveStatus(LiveStatus):
    """The embedded default: a dict guarded by a condition variable, shared by the API and its in-process worker."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._progress: dict[str, LiveProgress] = {}
        self._previews: dict[str, LivePreview] = {}
        self._watched_until: dict[str, float] = {}
        self._cancel: set[str] = set()
        self._interrupt: set[str] = set()
        self._skips: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        self._changed = threading.Condition()

    def set_progress(self, progress: LiveProgress) -> None:
        with self._changed:
            self._progress[progress.job_id] = progress
        self.notify(progress.job_id)

    def get_progress(self, job_id: uuid.UUID | str) -> LiveProgress | None:
        with self._changed:
            return self._progress.get(str(job_id))

    def clear(self, job_id: uuid.UUID | str) -> None:
        with self._changed:
            self._progress.pop(str(job_id), None)
            self._previews.pop(str(job_id), None)
            self._watched_until.pop(str(job_id), None)
            self._cancel.discard(str(job_id))
            self._interrupt.discard(str(job_id))
            self._skips.pop(str(job_id), None)

    def request_cancel(self, job_id: uuid.UUID | str) -> None:
        self._raise_flag(self._cancel, job_id)

    def cancel_requested(self, job_id: uuid.UUID | str) -> bool:
        return self._flag_raised(self._cancel, job_id)

    def request_interrupt(self, job_id: uuid.UUID | str) -> None:
        self._raise_flag(self._interrupt, job_id)

    def interrupt_requested(self, job_id: uuid.UUID | str) -> bool:
        return self._flag_raised(self._interrupt, job_id)

    def _raise_flag(self, flags: set[str], job_id: uuid.UUID | str) -> None:
        """Mark the job in `flags` (cancel or interrupt) and wake whoever waits on it."""
        with self._changed:
            flags.add(str(job_id))
        self.notify(job_id)

    def _flag_raised(self, flags: set[str], job_id: uuid.UUID | str) -> bool:
        with self._changed:
            return str(job_id) in flags

    def request_skip(self, job_id: uuid.UUID | str) -> int:
        with self._changed:
            count = self._skips.get(str(job_id), 0) + 1
            self._skips[str(job_id)] = count
        self.notify(job_id)
        return count

    def skip_requested(self, job_id: uuid.UUID | str) -> int:
        with self._changed:
            return self._skips.get(str(job_id), 0)

    def mark_watched(self, job_id: uuid.UUID | str) -> None:
        with self._changed:
            self._watched_until[str(job_id)] = self._clock() + WATCH_TTL_S

    def watched(self, job_id: uuid.UUID | str) -> bool:
        with self._changed:
            return self._watched_until.get(str(job_id), float("-inf")) > self._clock()

    def set_preview(self, preview: LivePreview) -> None:
        with self._changed:
            self._previews[preview.job_id] = preview
        self.notify(preview.job_id)

    def get_preview(self, job_id: uuid.UUID | str) -> LivePreview | None:
        with self._changed:
            return self._previews.get(str(job_id))

    def notify(self, job_id: uuid.UUID | str) -> None:
        with self._changed:
            key = str(job_id)
            self._versions[key] = self._versions.get(key, 0) + 1
            self._changed.notify_all()

    def wait_for_change(self, job_id: uuid.UUID | str, timeout_s: float) -> bool:
        key = str(job_id)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            start = self._versions.get(key, 0)
            while self._versions.get(key, 0) == start:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def ping(self) -> None:
        return None


class RedisLiveStatus(LiveStatus):
    """Cluster mode: one JSON string per running job, a cancel key, and a pub/sub channel per job for wake-ups."""

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)

    @staticmethod
    def _key(kind: str, job_id: uuid.UUID | str) -> str:
        return f"{KEY_PREFIX}{kind}:{job_id}"

    def set_progress(self, progress: LiveProgress) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._key("live", progress.job_id), progress.to_json(), ex=LIVE_TTL_S)
        pipe.publish(self._key("changed", progress.job_id), b"1")
        pipe.execute()

    def get_progress(self, job_id: uuid.UUID | str) -> LiveProgress | None:
        raw = self._redis.get(self._key("live", job_id))
        return LiveProgress.from_json(raw) if raw else None  # type: ignore[arg-type]

    def get_many(self, job_ids: Iterable[uuid.UUID | str]) -> dict[str, LiveProgress]:
        ids = [str(job_id) for job_id in job_ids]
        if not ids:
            return {}
        values = self._redis.mget([self._key("live", job_id) for job_id in ids])
        return {
            job_id: LiveProgress.from_json(raw)
            for job_id, raw in zip(ids, values, strict=True)  # type: ignore[arg-type]
            if raw
        }

    def clear(self, job_id: uuid.UUID | str) -> None:
        self._redis.delete(
            self._key("live", job_id),
            self._key("cancel", job_id),
            self._key("interrupt", job_id),
            self._key("skip", job_id),
            self._key("preview", job_id),
            self._key("watch", job_id),
        )

    def request_cancel(self, job_id: uuid.UUID | str) -> None:
        self._redis.set(self._key("cancel", job_id), b"1", ex=CANCEL_TTL_S)
        self.notify(job_id)

    def cancel_requested(self, job_id: uuid.UUID | str) -> bool:
        return bool(self._redis.exists(self._key("cancel", job_id)))

    def request_interrupt(self, job_id: uuid.UUID | str) -> None:
        self._redis.set(self._key("interrupt", job_id), b"1", ex=CANCEL_TTL_S)
        self.notify(job_id)

    def interrupt_requested(self, job_id: uuid.UUID | str) -> bool:
        return bool(self._redis.exists(self._key("interrupt", job_id)))

    def request_skip(self, job_id: uuid.UUID | str) -> int:
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(self._key("skip", job_id))
        pipe.expire(self._key("skip", job_id), CANCEL_TTL_S)
        count, _ = pipe.execute()
        self.notify(job_id)
        return int(count)

    def skip_requested(self, job_id: uuid.UUID | str) -> int:
        raw = self._redis.get(self._key("skip", job_id))
        return int(raw) if raw else 0  # type: ignore[arg-type]

    def stop_requests(self, job_id: uuid.UUID | str) -> StopRequests:
        # One round trip per sampling step instead of four.
        kinds = ("interrupt", "skip", "cancel", "watch")
        values: list[Any] = self._redis.mget([self._key(kind, job_id) for kind in kinds])  # type: ignore[assignment]
        interrupt, skips, cancel, watch = values
        return StopRequests(bool(interrupt), int(skips) if skips else 0, cancel is not None, watch is not None)

    def mark_watched(self, job_id: uuid.UUID | str) -> None:
        self._redis.set(self._key("watch", job_id), b"1", px=int(WATCH_TTL_S * 1000))

    def watched(self, job_id: uuid.UUID | str) -> bool:
        return bool(self._redis.exists(self._key("watch", job_id)))

    def set_preview(self, preview: LivePreview) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._key("preview", preview.job_id), preview.to_json(), ex=PREVIEW_TTL_S)
        pipe.publish(self._key("changed", preview.job_id), b"1")
        pipe.execute()

    def get_preview(self, job_id: uuid.UUID | str) -> LivePreview | None:
        raw = self._redis.get(self._key("preview", job_id))
        return LivePreview.from_json(raw) if raw else None  # type: ignore[arg-type]

    def notify(self, job_id: uuid.UUID | str) -> None:
        self._redis.publish(self._key("changed", job_id), b"1")

    def wait_for_change(self, job_id: uuid.UUID | str, timeout_s: float) -> bool:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._key("changed", job_id))
            deadline = time.monotonic() + timeout_s
            while (remaining := deadline - time.monotonic()) > 0:
                if pubsub.get_message(timeout=remaining) is not None:
                    return True
            return False
        finally:
            pubsub.close()

    def ping(self) -> None:
        self._redis.ping()

    def close(self) -> None:
        self._redis.close()


def open_live_status(redis_url: str | None) -> LiveStatus:
    """Redis when a URL is configured, else the process-local store of the embedded default."""
    return RedisLiveStatus(redis_url) if redis_url else LocalLiveStatus()
