"""Every operation of the SDK, written once, as a flow: a generator that yields the I/O it needs (an HTTP exchange, a
pause, a line of an event stream: renderfarm/_effects.py) and is sent back the result, or has the failure thrown in.

`Client` runs a flow blocking, `AsyncClient` awaiting (`renderfarm/client.py`, `renderfarm/_async_client.py`); they
do nothing but that I/O. So every rule of talking to the farm (request building, retries, the wait's stream then
poll, the download checks, asset uploads) has one home here, and the twins cannot drift apart.

    def get(self, task_id) -> Flow[Job]:
        response = yield from self.exchange("GET", f"/v1/jobs/{quoted(task_id)}")
        return Job.from_dict(response.json())
"""

from __future__ import annotations

import builtins
import json
import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Generic, TypeAlias, TypeVar

import httpx
from PIL import Image

from renderfarm._effects import Call, Close, Flow, Lines, NextLine, ReadBody, Sleep
from renderfarm._errors import (
    APIError,
    IntegrityError,
    NotFound,
    RateLimited,
    RenderfarmError,
    ServerError,
    TransportError,
    error_from_response,
)
from renderfarm._job import JobNotFinished, WaitTimeout
from renderfarm._requests import (
    IMAGE_FIELDS,
    ImageInput,
    JobSpec,
    PathDigests,
    batch_skeleton,
    check_batch_body,
    file_sha256,
    grid_body_axes,
    image_bytes,
    image_slots,
    is_reference,
    job_request,
    open_image,
    quoted,
    set_slot,
    sha256,
    write_atomically,
)
from renderfarm._transport import (
    Retries,
    SSEParser,
    Timeout,
    checked,
    resolve_token,
    resolve_url,
    same_origin,
    transport_error,
)
from renderfarm._types import Artifact, Asset, Batch, BatchCreated, Grid, Job, JobState
from shared.job.artifacts import ARTIFACT_KINDS
from shared.job.ids import new_task_id as mint_task_id

__all__ = ["USER_AGENT", "ClientBase", "Operations", "Page", "Pager", "new_task_id"]

T = TypeVar("T")
TransportT = TypeVar("TransportT")

USER_AGENT: Final = "renderfarm-python/0.1"
STREAM_READ_S: Final = 45.0  # seconds a stream may be silent; the farm sends a keep-alive every 15 s
STREAM_CONNECTS: Final = 3  # streams in a row without a new snapshot before a wait falls back to polling
AWAY_FIRST_S: Final = 0.25  # the first pause of a wait after a failed request (seconds); doubles per failure
AWAY_MAX_S: Final = 2.0  # ... up to this, until the caller's deadline
POLL_FIRST_S: Final = 0.25  # the first poll interval of the fallback (seconds); grows ×1.5 per poll
POLL_MAX_S: Final = 2.0
CLIENT_TASK_ID_PREFIX: Final = "rf-"


def new_task_id() -> str:
    """A fresh client-side task id: `rf-` and 32 hex digits."""
    return mint_task_id(prefix=CLIENT_TASK_ID_PREFIX)


Page: TypeAlias = tuple[tuple[Job, ...], str | None]
"""One page of a listing: its jobs and the next page's cursor (None on the last)."""
Pager: TypeAlias = Callable[[str | None], Flow[Page]]
"""A listing: the flow that reads the page at a cursor (None: the first)."""


class ClientBase(ABC, Generic[TransportT]):
    """What `Client` and `AsyncClient` share besides their I/O: the constructor (each documents its parameters),
    the operations, and the settings they read. `TransportT` is the httpx transport type of the shell's I/O."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: Timeout | float | None = None,
        retries: Retries | None = None,
        transport: TransportT | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._ops = Operations(base_url, token, Timeout.of(timeout), retries or Retries())
        self._open_http(
            timeout=self.timeout.to_httpx(),
            transport=transport,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            follow_redirects=True,
        )

    @abstractmethod
    def _open_http(self, **options: Any) -> None:
        """Make the shell's httpx client (sync or async) with these arguments."""

    @property
    def base_url(self) -> str:
        """The farm's address, without a trailing slash."""
        return self._ops.base_url

    @property
    def timeout(self) -> Timeout:
        return self._ops.timeout

    @property
    def retries(self) -> Retries:
        return self._ops.retries

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


# --------------------------------------------------------------------------------------------------------------
# The operations


class _NoStream(RenderfarmError):
    """The answer to an events request was not an event stream (a proxy in between): poll instead."""

    def __init__(self) -> None:
        super().__init__("the farm's answer was not an event stream")


class _Tracker:
    """The newest snapshot seen by one wait: older ones (a stream and a poll crossing) are dropped by `seq`; one of
    the same `seq` with other content is newer (a queued job's position moves while its row does not)."""

    def __init__(self, on_update: Callable[[Job], None] | None) -> None:
        self.on_update = on_update
        self.latest: Job | None = None

    @property
    def seq(self) -> int | None:
        return self.latest.seq if self.latest is not None else None

    @property
    def finished(self) -> Job | None:
        return self.latest if self.latest is not None and self.latest.is_finished else None

    def offer(self, job: Job) -> Job:
        if self.latest is None or job.seq > self.latest.seq or (job.seq == self.latest.seq and job != self.latest):
            self.latest = job
            if self.on_update is not None:
                self.on_update(job)
        return self.latest


# What `wait` waits out: the farm away or overloaded, a stream cut short. Other errors (NotFound, Unauthorized...)
# are answers about the job or the caller, and rise at once.
_TRANSIENT: Final = (
    TransportError,
    ServerError,
    RateLimited,
    httpx.TransportError,
    httpx.StreamError,
    ValueError,  # a snapshot cut in the middle (json.JSONDecodeError)
)


class _Backoff:
    """The pauses of `wait` while the farm is away: exponential from AWAY_FIRST_S, capped at AWAY_MAX_S, each with
    ±25 % jitter so that the clients of a restarted farm do not all come back in the same instant."""

    def __init__(self) -> None:
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def first(self) -> float:
        return _jittered(AWAY_FIRST_S)

    def next(self) -> float:
        self.failures += 1
        return _jittered(min(AWAY_FIRST_S * 2 ** (self.failures - 1), AWAY_MAX_S))


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not cryptography


def _wait_timeout(task_id: str, tracker: _Tracker, failure: Exception | None, timeout_s: float) -> RenderfarmError:
    """WaitTimeout with the last snapshot seen; when none was ever seen (the farm never answered), the last error."""
    if tracker.latest is not None:
        return WaitTimeout(tracker.latest, timeout_s)
    if isinstance(failure, RenderfarmError):
        return failure
    if isinstance(failure, httpx.TransportError):
        return transport_error(failure, None)
    return RenderfarmError(f"no snapshot of job {task_id} within {timeout_s:g} s")


def _stream_read_s(deadline: float | None) -> float:
    if deadline is None:
        return STREAM_READ_S
    return max(min(STREAM_READ_S, deadline - time.monotonic()), 0.05)


class Operations:
    """What both clients hold (where the farm is, the token, timeouts, retries, the assets already known) and what
    they do, as flows. The public ones carry the clients' docstrings."""

    def __init__(self, base_url: str | None, token: str | None, timeout: Timeout, retries: Retries) -> None:
        self.base_url = resolve_url(base_url)
        self._token = resolve_token(token)
        self.timeout = timeout
        self.retries = retries
        self._assets: dict[str, str] = {}  # sha256 → asset id, of assets the farm is known to have
        self._path_digests = PathDigests()

    # ------------------------------------------------------------------------------------------------------------
    # Plumbing

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return f"{self.base_url}{path_or_url}"

    def headers(self, url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        # The token goes to the farm's own address only: artifact URLs of S3 are presigned, and S3 refuses a
        # request that carries a second way of authenticating.
        if self._token and same_origin(url, self.base_url):
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def exchange(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Flow[httpx.Response]:
        """Send one request with the retries; the successful response, or the typed error."""
        url = self.url(path)
        call = Call(method, url, self.headers(url, headers), json_body=json_body, content=content, params=params)
        attempt = 0
        while True:
            attempt += 1
            try:
                response: httpx.Response = yield call
            except httpx.TransportError as exc:
                delay = self.retries.delay_after_failure(attempt)
                if delay is None:
                    raise transport_error(exc, exc.request) from exc
                yield Sleep(delay)
                continue
            delay = self.retries.delay_after_answer(response, attempt)
            if delay is None:
                return checked(response)
            yield Sleep(delay)

    # ------------------------------------------------------------------------------------------------------------
    # Assets

    def upload(self, image: ImageInput) -> Flow[Asset]:
        """Upload a picture as an asset, unless the farm has its sha256 already; returns the asset.

        >>> farm.upload("cat.png").asset_id                               # doctest: +SKIP
        'asset:9f86d08...'
        """
        data = image_bytes(image)
        digest = sha256(data)
        try:
            response = yield from self.exchange("GET", f"/v1/assets/asset:{digest}")
        except NotFound:
            octets = {"Content-Type": "application/octet-stream"}
            response = yield from self.exchange("POST", "/v1/assets", content=data, headers=octets)
        asset = Asset.from_dict(response.json())
        self._assets[asset.sha256] = asset.asset_id
        return asset

    def _known_asset(self, image: ImageInput) -> tuple[str | None, bytes | None]:
        """`(asset id if already known, the bytes if they had to be read)` of a picture to upload."""
        if isinstance(image, str | os.PathLike) and not isinstance(image, bytes):
            path = Path(image)
            digest = self._path_digests.of(path)
            if digest is not None and digest in self._assets:
                return self._assets[digest], None
            data = path.read_bytes()
            digest = sha256(data)
            self._path_digests.remember(path, digest)
            return self._assets.get(digest), data
        data = image_bytes(image)
        return self._assets.get(sha256(data)), data

    def _image_ref(self, image: ImageInput) -> Flow[str]:
        if is_reference(image):
            return str(image)
        known, data = self._known_asset(image)
        if known is not None:
            return known
        asset = yield from self.upload(data if data is not None else image)
        return asset.asset_id

    def _resolve_images(self, body: dict[str, Any]) -> Flow[dict[str, Any]]:
        for name, index, value in builtins.list(image_slots(body)):
            set_slot(body, name, index, (yield from self._image_ref(value)))
        return body

    # ------------------------------------------------------------------------------------------------------------
    # Jobs

    def submit(
        self,
        spec: JobSpec | None = None,
        /,
        *,
        image: ImageInput | Sequence[ImageInput] | None = None,
        mask: ImageInput | None = None,
        task_id: str | None = None,
        **fields: Any,
    ) -> Flow[Job]:
        """Create a job (or find the one `task_id` already names with this request); returns its snapshot.

        The job's fields come as keyword arguments (`prompt=`, `steps=`, `seed=`, any field of the job) and/or a
        `spec` (a mapping or `Img2ImgJob`). `image` is the init picture (or a list of them), `mask` the inpainting
        mask. Without `task_id` one is generated here, so retries never create a second job.

        Raises ValidationError (naming the field), Conflict (the task id names a different request),
        RateLimited, and the transport errors once the retries are used up.

        >>> job = farm.submit(image="cat.png", prompt="a cat", steps=20, task_id="cat-1")   # doctest: +SKIP
        >>> job.state                                                                      # doctest: +SKIP
        <JobState.QUEUED: 'queued'>
        """
        request = job_request(spec, image=image, mask=mask, task_id=task_id, fields=fields)
        body = yield from self._resolve_images(request.fields)
        chosen = request.task_id or new_task_id()
        response = yield from self.exchange("PUT", f"/v1/jobs/{quoted(chosen)}", json_body=body)
        return Job.from_dict(response.json())

    def get(self, task_id: str) -> Flow[Job]:
        """The job's current snapshot. Raises NotFound for an unknown id (and for another tenant's)."""
        response = yield from self.exchange("GET", f"/v1/jobs/{quoted(task_id)}")
        return Job.from_dict(response.json())

    def cancel(self, task_id: str) -> Flow[Job]:
        """Cancel the job: a queued one at once, a running one at its next step; a finished one is unchanged.
        Returns the snapshot right after the request (a running job may still show `running`)."""
        response = yield from self.exchange("POST", f"/v1/jobs/{quoted(task_id)}/cancel")
        return Job.from_dict(response.json())

    def list(self, *, state: JobState | str | None = None, batch: str | None = None, page_size: int = 100) -> Pager:
        """Every job of yours, newest first (optionally of one state or batch), fetched a page at a time.

        >>> [job.task_id for job in farm.list(state="failed")]          # doctest: +SKIP
        """
        params: dict[str, Any] = {"limit": page_size}
        if state is not None:
            params["state"] = JobState(state).value
        if batch is not None:
            params["batch"] = batch

        def page(cursor: str | None) -> Flow[Page]:
            response = yield from self.exchange("GET", "/v1/jobs", params=_with_cursor(params, cursor))
            answer = response.json()
            return tuple(Job.from_dict(item) for item in answer["jobs"]), answer.get("next_cursor")

        return page

    def events(self, after: str | None, *, wait_s: float = 0.0, limit: int = 100) -> Flow[tuple[Any, str]]:
        """One page of your events after the cursor `after` (None: from the first), oldest first, waiting up to
        `wait_s` seconds for the first one; `(events, next_cursor)`. Each event is the body its webhook sends,
        plus `cursor` (docs/api.md "Events and webhooks")."""
        params: dict[str, Any] = {"limit": limit, "wait_s": wait_s}
        if after is not None:
            params["after"] = after
        response = yield from self.exchange("GET", "/v1/events", params=params)
        answer = response.json()
        return tuple(answer["events"]), str(answer["next_cursor"])

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[Job], None] | None = None,
        stream: bool = True,
    ) -> Flow[Job]:
        """Wait until the job is finished and return its last snapshot (succeeded, failed or canceled: check
        `job.state`, or call `job.raise_for_state()`).

        Follows the job's event stream, resuming it after the last snapshot seen (`Last-Event-ID`) when it ends
        or breaks; if streaming is not possible (a proxy that buffers) or `stream` is False it polls with a growing
        interval instead. The farm being away (a restart, a network blip, 5xx or 429 answers) is waited out,
        backing off with jitter, for as long as `timeout` allows: `timeout` is seconds in all (None: no limit,
        even while the farm is away). `on_update` is called with every newer snapshot. Raises WaitTimeout (the
        job goes on; the last error when the farm never answered), NotFound, and the other refusals at once.

        >>> job = farm.wait("cat-1", timeout=600, on_update=lambda j: print(f"{j.progress:.0%}"))  # doctest: +SKIP
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        tracker = _Tracker(on_update)
        away = _Backoff()
        can_stream = stream
        streams_without_news = 0
        poll_next = not stream
        poll_s = POLL_FIRST_S
        while True:
            if not poll_next:
                seen = tracker.seq
                failure: Exception | None = None
                try:
                    yield from self._follow(task_id, deadline, tracker)
                except _NoStream:
                    can_stream = False  # a proxy in between: poll from now on
                except _TRANSIENT as exc:
                    failure = exc
                # A stream that brought news resets the count: a long job survives any number of restarts.
                streams_without_news = 0 if tracker.seq != seen else streams_without_news + 1
                if tracker.finished is not None:
                    return tracker.finished
                # A broken stream: one poll at once tells whether the farm is there (and the job's state); a
                # stream that ended (the farm shutting down, a proxy's limit) is resumed after a short pause.
                pause = 0.0 if failure is not None else away.first()
                poll_next = failure is not None or not can_stream or streams_without_news >= STREAM_CONNECTS
            else:
                try:
                    tracker.offer((yield from self._poll(task_id, deadline)))
                    failure = None
                except _TRANSIENT as exc:
                    failure = exc
                if tracker.finished is not None:
                    return tracker.finished
                if failure is not None:
                    pause = away.next()
                elif can_stream and streams_without_news < STREAM_CONNECTS:
                    away.reset()
                    pause, poll_next = 0.0, False  # the farm answers: follow the stream again, after the last seq
                else:
                    away.reset()
                    pause, poll_s = poll_s, min(poll_s * 1.5, POLL_MAX_S)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _wait_timeout(task_id, tracker, failure, timeout or 0.0)
                pause = min(pause, left)
            if pause > 0:
                yield Sleep(pause)

    def _poll(self, task_id: str, deadline: float | None) -> Flow[Job]:
        """One read of the job's snapshot for `wait`: a single try (the wait backs off itself), bounded by the
        deadline."""
        url = self.url(f"/v1/jobs/{quoted(task_id)}")
        call = Call("GET", url, self.headers(url), timeout=self._bounded(deadline, self.timeout.read))
        response: httpx.Response = yield call
        return Job.from_dict(checked(response).json())

    def _bounded(self, deadline: float | None, read_s: float | None) -> httpx.Timeout:
        """The client's timeouts, none longer than what is left until `deadline`."""

        def cap(seconds: float | None) -> float | None:
            if deadline is None:
                return seconds
            left = max(deadline - time.monotonic(), 0.05)
            return left if seconds is None else min(seconds, left)

        connect, write = cap(self.timeout.connect), cap(self.timeout.write)
        return httpx.Timeout(connect=connect, read=cap(read_s), write=write, pool=None)

    def _follow(self, task_id: str, deadline: float | None, tracker: _Tracker) -> Flow[None]:
        """Read the job's event stream until a terminal snapshot, the deadline or the stream's end."""
        url = self.url(f"/v1/jobs/{quoted(task_id)}/events")
        extra = {"Accept": "text/event-stream"}
        if tracker.seq is not None:
            extra["Last-Event-ID"] = str(tracker.seq)
        timeout = self._bounded(deadline, _stream_read_s(deadline))
        response: httpx.Response = yield Call("GET", url, self.headers(url, extra), timeout=timeout, stream=True)
        try:
            yield from _read_events(response, deadline, tracker)
        except Exception:
            yield Close(response)
            raise
        yield Close(response)

    # ------------------------------------------------------------------------------------------------------------
    # Results

    def download(
        self, job: str | Job, dest: str | os.PathLike[str], *, kinds: Iterable[str] = ARTIFACT_KINDS
    ) -> Flow[builtins.list[Path]]:
        """Download the job's results, overlays and masks into the folder `dest` as `{kind}-{index}.png`, each
        checked against its sha256; returns the paths. A file already there with the right sha256 is kept (so an
        interrupted download resumes). Raises JobNotFinished, JobFailed / JobCanceled, IntegrityError.

        >>> farm.download("cat-1", "out/cat-1")                            # doctest: +SKIP
        [PosixPath('out/cat-1/result-0.png'), PosixPath('out/cat-1/mask-0.png')]
        """
        snapshot = (yield from self.get(job)) if isinstance(job, str) else job
        if snapshot.state is not JobState.SUCCEEDED:
            snapshot.raise_for_state()
            raise JobNotFinished(snapshot)
        wanted = set(kinds)
        folder = Path(dest)
        paths: builtins.list[Path] = []
        for artifact in snapshot.artifacts:
            if artifact.kind not in wanted:
                continue
            path = folder / artifact.filename
            if file_sha256(path) != artifact.sha256:
                try:
                    data = yield from self.fetch(artifact)
                except APIError:
                    if isinstance(job, str):
                        raise
                    # The snapshot's URLs may have expired (they last an hour): take fresh ones once.
                    return (yield from self.download(snapshot.task_id, dest, kinds=wanted))
                write_atomically(path, data)
            paths.append(path)
        return paths

    def fetch(self, artifact: Artifact) -> Flow[bytes]:
        """One artifact's bytes, checked against its sha256 (fetched twice before IntegrityError)."""
        for attempt in (1, 2):
            data = (yield from self.exchange("GET", artifact.url)).content
            actual = sha256(data)
            if actual == artifact.sha256:
                return data
            if attempt == 2:
                raise IntegrityError(artifact.url, artifact.sha256, actual)
        raise AssertionError("unreachable")  # pragma: no cover

    def render(
        self,
        spec: JobSpec | None = None,
        /,
        *,
        image: ImageInput | Sequence[ImageInput] | None = None,
        mask: ImageInput | None = None,
        task_id: str | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> Flow[builtins.list[Image.Image]]:
        """The simplest case: submit, wait, and return the result pictures. Raises JobFailed / JobCanceled when
        the job did not succeed, WaitTimeout after `timeout` seconds.

        >>> [picture] = farm.render(image="cat.png", prompt="a cat in a hat", steps=20)   # doctest: +SKIP
        >>> picture.save("hat.png")                                                     # doctest: +SKIP
        """
        job = yield from self.submit(spec, image=image, mask=mask, task_id=task_id, **fields)
        job = (yield from self.wait(job.task_id, timeout=timeout)).raise_for_state()
        pictures = []
        for artifact in job.results:
            pictures.append(open_image((yield from self.fetch(artifact))))
        return pictures

    # ------------------------------------------------------------------------------------------------------------
    # Batches

    def submit_batch(
        self,
        jobs: Sequence[JobSpec] | None = None,
        *,
        grid: Grid | None = None,
        defaults: JobSpec | None = None,
        batch_id: str | None = None,
    ) -> Flow[BatchCreated]:
        """Create many jobs in one request: a list of `jobs`, or a `grid`, with `defaults` under every item.

        Children get the task ids `{batch_id}-{index}` unless an item names its own `task_id`. Without
        `batch_id` one is generated here, so a retry finds the batch the first try created.

        >>> farm.submit_batch(grid=Grid.product(image=["a.png", "b.png"], seed=[1, 2, 3]),
        ...                   defaults={"prompt": "a fox", "steps": 20})     # doctest: +SKIP
        BatchCreated(batch_id='...', mode='product', requested=6, enqueued=6, ...)
        """
        body = batch_skeleton(defaults, batch_id)
        yield from self._resolve_images(body["defaults"])
        if jobs is not None:
            body["jobs"] = []
            for job in jobs:
                body["jobs"].append((yield from self._resolve_images(job_request(job).as_batch_item())))
        if grid is not None:
            axes = grid_body_axes(grid)
            for name in IMAGE_FIELDS:
                if name in axes:
                    axes[name] = yield from self._image_refs(axes[name])
            body["grid"] = {"mode": grid.mode, "axes": axes}
        check_batch_body(body)
        response = yield from self.exchange("POST", "/v1/batches", json_body=body)
        return BatchCreated.from_dict(response.json())

    def _image_refs(self, values: Sequence[Any]) -> Flow[builtins.list[Any]]:
        """References for the values of a grid's image axis (a value that is a list of pictures, a list of them)."""
        refs: builtins.list[Any] = []
        for value in values:
            if isinstance(value, list | tuple):
                refs.append((yield from self._image_refs(value)))
            else:
                refs.append((yield from self._image_ref(value)))
        return refs

    def get_batch(
        self, batch_id: str, *, state: JobState | str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Flow[Batch]:
        """The batch's counts by state, progress, ETA, and one page of its items (in the manifest's order)."""
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = JobState(state).value
        response = yield from self.exchange("GET", f"/v1/batches/{batch_id}", params=_with_cursor(params, cursor))
        return Batch.from_dict(response.json())

    def batch_items(self, batch_id: str, *, state: JobState | str | None = None) -> Pager:
        """Every item of the batch (optionally of one state), a page at a time."""

        def page(cursor: str | None) -> Flow[Page]:
            batch = yield from self.get_batch(batch_id, state=state, cursor=cursor, limit=1000)
            return batch.items, batch.next_cursor

        return page

    def cancel_batch(self, batch_id: str) -> Flow[Batch]:
        """Cancel what has not finished; returns the batch's status right after."""
        response = yield from self.exchange("POST", f"/v1/batches/{batch_id}/cancel")
        return Batch.from_dict(response.json())


def _read_events(response: httpx.Response, deadline: float | None, tracker: _Tracker) -> Flow[None]:
    """Offer the stream's snapshots to the tracker until a terminal one, the deadline or the stream's end."""
    if not response.is_success:
        yield ReadBody(response)
        raise error_from_response(response)
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        raise _NoStream
    parser = SSEParser()
    lines = yield Lines(response)
    while (line := (yield NextLine(lines))) is not None:
        for event in parser.feed(line):
            if event.event == "snapshot" and tracker.offer(Job.from_dict(json.loads(event.data))).is_finished:
                return
        if deadline is not None and time.monotonic() >= deadline:
            return


def _with_cursor(params: Mapping[str, Any], cursor: str | None) -> dict[str, Any]:
    return {**params, "cursor": cursor} if cursor is not None else dict(params)
