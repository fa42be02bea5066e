"""`renderfarm.Client`: the farm's HTTP API as Python calls (the blocking client; `AsyncClient` has the same surface).

    import renderfarm

    with renderfarm.Client("http://farm:7860", token="...") as farm:      # or RENDERFARM_URL / RENDERFARM_TOKEN
        images = farm.render(image="cat.png", prompt="a cat in a hat", steps=20)   # submit, wait, fetch
        job = farm.submit(image="cat.png", mask="mask.png", prompt="a hat", task_id="cat-hat-1")
        job = farm.wait(job.task_id, timeout=600)
        farm.download(job, "out/")                                          # result-0.png, overlay-0.png, mask-0.png

Images may be PIL images, file paths, bytes, or references the farm already has (`asset:<sha256>`, a URL of the
farm's storage). Everything else is uploaded once as an asset (content-addressed: the client first asks whether
the farm has that sha256) and referenced by id, so 1,000 jobs of one picture upload it once.

Jobs are created with `PUT /v1/jobs/{task_id}` under a task id chosen on the client before the first try, so
retrying after a timeout or a dropped connection finds the job the first try created instead of making another.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias
from urllib.parse import quote

import httpx
from PIL import Image

from renderfarm._errors import (
    APIError,
    IntegrityError,
    JobNotFinished,
    NotFound,
    RenderfarmError,
    ServerError,
    TransportError,
    WaitTimeout,
    error_from_response,
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
from shared.job.spec import Img2ImgJob

__all__ = ["ARTIFACT_KINDS", "Client", "ImageInput", "JobSpec", "new_task_id"]

ImageInput: TypeAlias = Image.Image | str | os.PathLike[str] | bytes
"""A picture: a PIL image, a file path, the file's bytes, or a reference the farm has (`asset:<sha256>`, a URL)."""
JobSpec: TypeAlias = Mapping[str, Any] | Img2ImgJob
"""A job's fields as a mapping (images may be any `ImageInput`), or a `shared.job.spec.Img2ImgJob`."""

ARTIFACT_KINDS: Final = ("result", "overlay", "mask")
USER_AGENT: Final = "renderfarm-python/0.1"
STREAM_READ_S: Final = 45.0  # seconds a stream may be silent; the farm sends a keep-alive every 15 s
STREAM_CONNECTS: Final = 3  # streams opened by one wait before it falls back to polling
POLL_FIRST_S: Final = 0.25  # the first poll interval of the fallback (seconds); grows ×1.5 per poll
POLL_MAX_S: Final = 2.0
DOWNLOAD_CHUNK: Final = 1 << 16
_REFERENCE_PREFIXES: Final = ("asset:", "s3://", "http://", "https://", "data:")


def new_task_id() -> str:
    """A fresh client-side task id: `rf-` and 32 hex digits."""
    return f"rf-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------------------------------------------
# Building requests (no I/O; shared with AsyncClient)


def is_reference(value: object) -> bool:
    """True for a string the farm resolves itself (`asset:<sha256>`, a URL, inline data), as opposed to a path."""
    return isinstance(value, str) and value.startswith(_REFERENCE_PREFIXES)


def image_bytes(image: ImageInput) -> bytes:
    """The file bytes of a picture that must be uploaded: PNG for a PIL image, the file for a path, bytes as they
    are. Raises FileNotFoundError for a missing path, TypeError for anything else."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    raise TypeError(f"an image must be a PIL image, a path, bytes or an asset id, not {type(image).__name__}")


def _as_image_list(value: Any) -> builtins.list[Any]:
    return builtins.list(value) if isinstance(value, list | tuple) else [value]


def build_job_body(
    spec: JobSpec | None,
    *,
    image: ImageInput | Sequence[ImageInput] | None = None,
    mask: ImageInput | None = None,
    task_id: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The job's JSON body with its images still as given (the client resolves them). `image` (one picture or a
    list) sets `init_images`; a `task_id` or `image` key in `spec` or `fields` is accepted as shorthand for
    `force_task_id` / `init_images`. Raises ValueError when one thing is given twice, TypeError for a bad spec."""
    body: dict[str, Any] = {}
    if isinstance(spec, Img2ImgJob):
        body.update(spec.model_dump(mode="json", exclude_unset=True))
    elif isinstance(spec, Mapping):
        body.update(spec)
    elif spec is not None:
        raise TypeError(f"a job spec must be a mapping of fields or an Img2ImgJob, not {type(spec).__name__}")
    body.update(fields or {})
    for shorthand, name in (("image", "init_images"), ("task_id", "force_task_id")):
        if shorthand in body:
            if body.get(name) is not None:
                raise ValueError(f"give either {shorthand!r} or {name!r}, not both")
            body[name] = body.pop(shorthand)
    if image is not None:
        if body.get("init_images") is not None:
            raise ValueError("give the init images once: as image= or in the spec, not both")
        body["init_images"] = image
    if mask is not None:
        if body.get("mask") is not None:
            raise ValueError("give the mask once: as mask= or in the spec, not both")
        body["mask"] = mask
    if task_id is not None:
        if body.get("force_task_id") not in (None, task_id):
            raise ValueError(f"task_id {task_id!r} differs from the spec's force_task_id {body['force_task_id']!r}")
        body["force_task_id"] = task_id
    if "init_images" in body:
        body["init_images"] = _as_image_list(body["init_images"])
    return body


def image_slots(body: Mapping[str, Any]) -> Iterator[tuple[str, int | None, Any]]:
    """`(field, index, value)` of every image in a job body (`index` None for the single-image fields)."""
    for index, value in enumerate(body.get("init_images") or ()):
        yield "init_images", index, value
    for name in ("mask", "latent_mask"):
        if body.get(name) is not None:
            yield name, None, body[name]


def set_slot(body: dict[str, Any], name: str, index: int | None, value: str) -> None:
    if index is None:
        body[name] = value
    else:
        body[name][index] = value


def grid_body_axes(grid: Grid) -> dict[str, builtins.list[Any]]:
    """The grid's axes as the API takes them: `image` becomes `init_images`, `task_id` becomes `force_task_id`."""
    axes: dict[str, builtins.list[Any]] = {}
    for name, values in grid.axes.items():
        key = {"image": "init_images", "task_id": "force_task_id"}.get(name, name)
        if key in axes:
            raise ValueError(f"the grid names {key!r} twice")
        axes[key] = builtins.list(values)
    return axes


def _quoted(task_id: str) -> str:
    return quote(task_id, safe=":()")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str | None:
    """The sha256 of a file, or None when it does not exist."""
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, so a crash never leaves half a picture under
    the final name (which a resumed download would take for done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class _PathDigests:
    """sha256 of input files by (path, size, mtime): a manifest of 10,000 jobs of one picture reads it once."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def of(self, path: Path) -> str | None:
        stat = path.stat()
        return self._known.get((str(path.resolve()), stat.st_size, stat.st_mtime_ns))

    def remember(self, path: Path, digest: str) -> None:
        stat = path.stat()
        self._known[(str(path.resolve()), stat.st_size, stat.st_mtime_ns)] = digest


class _ClientBase:
    """What both clients hold: where the farm is, the token, timeouts, retries, and the assets already known."""

    def __init__(self, base_url: str | None, token: str | None, timeout: Timeout, retries: Retries) -> None:
        self.base_url = resolve_url(base_url)
        self._token = resolve_token(token)
        self.timeout = timeout
        self.retries = retries
        self._assets: dict[str, str] = {}  # sha256 → asset id, of assets the farm is known to have
        self._path_digests = _PathDigests()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return f"{self.base_url}{path_or_url}"

    def _headers(self, url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        # The token goes to the farm's own address only: artifact URLs of S3 are presigned, and S3 refuses a
        # request that carries a second way of authenticating.
        if self._token and same_origin(url, self.base_url):
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _known_asset(self, image: ImageInput) -> tuple[str | None, bytes | None, str]:
        """`(asset id if already known, the bytes if they had to be read, sha256)` of a picture to upload."""
        if isinstance(image, str | os.PathLike) and not isinstance(image, bytes):
            path = Path(image)
            digest = self._path_digests.of(path)
            if digest is not None and digest in self._assets:
                return self._assets[digest], None, digest
            data = path.read_bytes()
            digest = _sha256(data)
            self._path_digests.remember(path, digest)
            return self._assets.get(digest), data, digest
        data = image_bytes(image)
        digest = _sha256(data)
        return self._assets.get(digest), data, digest


# --------------------------------------------------------------------------------------------------------------
# The blocking client


class Client(_ClientBase):
    """A blocking client of one farm. Thread-safe; use it as a context manager, or call `close()`.

    base_url: the farm's address (default RENDERFARM_URL, else http://127.0.0.1:7860).
    token: the API token (default RENDERFARM_TOKEN; a farm without tokens serves its own machine without one).
    timeout: per-request `Timeout` (seconds). retries: `Retries` of transport failures and 429/502/503/504.
    transport: an httpx transport (for tests, proxies, or `httpx.MockTransport`).

    >>> with Client("http://127.0.0.1:7860") as farm:                      # doctest: +SKIP
    ...     job = farm.submit(image="cat.png", prompt="a cat", steps=20, seed=7)
    ...     job = farm.wait(job.task_id, timeout=300)
    ...     farm.download(job, "out")
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: Timeout | float | None = None,
        retries: Retries | None = None,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        chosen = timeout if isinstance(timeout, Timeout) else Timeout(timeout) if timeout is not None else Timeout()
        super().__init__(base_url, token, chosen, retries or Retries())
        self._http = httpx.Client(
            timeout=chosen.to_httpx(),
            transport=transport,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            follow_redirects=True,
        )

    def close(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------------
    # Plumbing

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """Send one request with the retries; the successful response, or the typed error."""
        url = self._url(path)
        attempt = 0
        while True:
            attempt += 1
            request = self._http.build_request(
                method, url, json=json_body, content=content, params=params, headers=self._headers(url, headers)
            )
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = self.retries.delay_after_failure(attempt)
                if delay is None:
                    raise transport_error(exc, request) from exc
                time.sleep(delay)
                continue
            delay = self.retries.delay_after_answer(response, attempt)
            if delay is None:
                return checked(response)
            response.close()
            time.sleep(delay)

    # ------------------------------------------------------------------------------------------------------------
    # Assets

    def upload(self, image: ImageInput) -> Asset:
        """Upload a picture as an asset, unless the farm has its sha256 already; returns the asset.

        >>> farm.upload("cat.png").asset_id                               # doctest: +SKIP
        'asset:9f86d08...'
        """
        data = image_bytes(image)
        digest = _sha256(data)
        try:
            asset = Asset.from_dict(self._request("GET", f"/v1/assets/asset:{digest}").json())
        except NotFound:
            response = self._request(
                "POST", "/v1/assets", content=data, headers={"Content-Type": "application/octet-stream"}
            )
            asset = Asset.from_dict(response.json())
        self._assets[asset.sha256] = asset.asset_id
        return asset

    def _image_ref(self, image: ImageInput) -> str:
        if is_reference(image):
            return str(image)
        known, data, _digest = self._known_asset(image)
        if known is not None:
            return known
        return self.upload(data if data is not None else image).asset_id

    def _resolve_images(self, body: dict[str, Any]) -> dict[str, Any]:
        for name, index, value in builtins.list(image_slots(body)):
            set_slot(body, name, index, self._image_ref(value))
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
    ) -> Job:
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
        body = self._resolve_images(build_job_body(spec, image=image, mask=mask, task_id=task_id, fields=fields))
        chosen = body.pop("force_task_id", None) or new_task_id()
        return Job.from_dict(self._request("PUT", f"/v1/jobs/{_quoted(chosen)}", json_body=body).json())

    def get(self, task_id: str) -> Job:
        """The job's current snapshot. Raises NotFound for an unknown id (and for another tenant's)."""
        return Job.from_dict(self._request("GET", f"/v1/jobs/{_quoted(task_id)}").json())

    def cancel(self, task_id: str) -> Job:
        """Cancel the job: a queued one at once, a running one at its next step; a finished one is unchanged.
        Returns the snapshot right after the request (a running job may still show `running`)."""
        return Job.from_dict(self._request("POST", f"/v1/jobs/{_quoted(task_id)}/cancel").json())

    def list(
        self, *, state: JobState | str | None = None, batch: str | None = None, page_size: int = 100
    ) -> Iterator[Job]:
        """Every job of yours, newest first (optionally of one state or batch), fetched a page at a time.

        >>> [job.task_id for job in farm.list(state="failed")]          # doctest: +SKIP
        """
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if state is not None:
                params["state"] = JobState(state).value
            if batch is not None:
                params["batch"] = batch
            if cursor is not None:
                params["cursor"] = cursor
            page = self._request("GET", "/v1/jobs", params=params).json()
            for item in page["jobs"]:
                yield Job.from_dict(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Wait until the job is finished and return its last snapshot (succeeded, failed or canceled: check
        `job.state`, or call `job.raise_for_state()`).

        Follows the job's event stream; if streaming is not possible (a proxy that buffers, a dropped
        connection) it polls with a growing interval instead. `timeout` is seconds in all (None: no limit);
        `on_update` is called with every newer snapshot. Raises WaitTimeout (the job goes on) and NotFound.

        >>> job = farm.wait("cat-1", timeout=600, on_update=lambda j: print(f"{j.progress:.0%}"))  # doctest: +SKIP
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        tracker = _Tracker(on_update)
        for _ in range(STREAM_CONNECTS):
            # A failed or ended stream is opened again (resuming after the last seq), then polling takes over.
            with contextlib.suppress(
                TransportError, ServerError, httpx.TransportError, httpx.StreamError, _NoStream, ValueError
            ):
                self._follow(task_id, deadline, tracker)
            if tracker.finished is not None:
                return tracker.finished
            if deadline is not None and time.monotonic() >= deadline:
                break
        delay = POLL_FIRST_S
        while True:
            job = tracker.offer(self.get(task_id))
            if job.is_finished:
                return job
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(job, timeout or 0.0)
                time.sleep(min(delay, left))
            else:
                time.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)

    def _follow(self, task_id: str, deadline: float | None, tracker: _Tracker) -> None:
        """Read the job's event stream until a terminal snapshot, the deadline or the stream's end."""
        url = self._url(f"/v1/jobs/{_quoted(task_id)}/events")
        extra = {"Accept": "text/event-stream"}
        if tracker.seq is not None:
            extra["Last-Event-ID"] = str(tracker.seq)
        read_s = _stream_read_s(deadline)
        timeout = httpx.Timeout(connect=self.timeout.connect, read=read_s, write=self.timeout.write, pool=None)
        with self._http.stream("GET", url, headers=self._headers(url, extra), timeout=timeout) as response:
            if not response.is_success:
                response.read()
                raise error_from_response(response)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise _NoStream
            parser = SSEParser()
            for line in response.iter_lines():
                for event in parser.feed(line):
                    if event.event == "snapshot" and tracker.offer(Job.from_dict(json.loads(event.data))).is_finished:
                        return
                if deadline is not None and time.monotonic() >= deadline:
                    return

    # ------------------------------------------------------------------------------------------------------------
    # Results

    def download(
        self, job: str | Job, dest: str | os.PathLike[str], *, kinds: Iterable[str] = ARTIFACT_KINDS
    ) -> builtins.list[Path]:
        """Download the job's results, overlays and masks into the folder `dest` as `{kind}-{index}.png`, each
        checked against its sha256; returns the paths. A file already there with the right sha256 is kept (so an
        interrupted download resumes). Raises JobNotFinished, JobFailed / JobCanceled, IntegrityError.

        >>> farm.download("cat-1", "out/cat-1")                            # doctest: +SKIP
        [PosixPath('out/cat-1/result-0.png'), PosixPath('out/cat-1/mask-0.png')]
        """
        snapshot = self.get(job) if isinstance(job, str) else job
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
                    data = self.fetch(artifact)
                except APIError:
                    if isinstance(job, str):
                        raise
                    # The snapshot's URLs may have expired (they last an hour): take fresh ones once.
                    return self.download(snapshot.task_id, dest, kinds=wanted)
                write_atomically(path, data)
            paths.append(path)
        return paths

    def fetch(self, artifact: Artifact) -> bytes:
        """One artifact's bytes, checked against its sha256 (fetched twice before IntegrityError)."""
        for attempt in (1, 2):
            data = self._request("GET", artifact.url).content
            actual = _sha256(data)
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
    ) -> builtins.list[Image.Image]:
        """The simplest case: submit, wait, and return the result pictures. Raises JobFailed / JobCanceled when
        the job did not succeed, WaitTimeout after `timeout` seconds.

        >>> [picture] = farm.render(image="cat.png", prompt="a cat in a hat", steps=20)   # doctest: +SKIP
        >>> picture.save("hat.png")                                                     # doctest: +SKIP
        """
        job = self.submit(spec, image=image, mask=mask, task_id=task_id, **fields)
        job = self.wait(job.task_id, timeout=timeout).raise_for_state()
        return [_open_image(self.fetch(artifact)) for artifact in job.results]

    # ------------------------------------------------------------------------------------------------------------
    # Batches

    def submit_batch(
        self,
        jobs: Sequence[JobSpec] | None = None,
        *,
        grid: Grid | None = None,
        defaults: JobSpec | None = None,
        batch_id: str | None = None,
    ) -> BatchCreated:
        """Create many jobs in one request: a list of `jobs`, or a `grid`, with `defaults` under every item.

        Children get the task ids `{batch_id}-{index}` unless an item names its own `task_id`. Without
        `batch_id` one is generated here, so a retry finds the batch the first try created.

        >>> farm.submit_batch(grid=Grid.product(image=["a.png", "b.png"], seed=[1, 2, 3]),
        ...                   defaults={"prompt": "a fox", "steps": 20})     # doctest: +SKIP
        BatchCreated(batch_id='...', mode='product', requested=6, enqueued=6, ...)
        """
        body = self._batch_body(jobs, grid, defaults, batch_id)
        return BatchCreated.from_dict(self._request("POST", "/v1/batches", json_body=body).json())

    def _batch_body(
        self, jobs: Sequence[JobSpec] | None, grid: Grid | None, defaults: JobSpec | None, batch_id: str | None
    ) -> dict[str, Any]:
        body = batch_skeleton(defaults, batch_id)
        self._resolve_images(body["defaults"])
        if jobs is not None:
            body["jobs"] = [self._resolve_images(build_job_body(job)) for job in jobs]
        if grid is not None:
            axes = grid_body_axes(grid)
            for name in ("init_images", "mask", "latent_mask"):
                if name in axes:
                    axes[name] = [self._axis_image(value) for value in axes[name]]
            body["grid"] = {"mode": grid.mode, "axes": axes}
        check_batch_body(body)
        return body

    def _axis_image(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [self._image_ref(item) for item in value]
        return self._image_ref(value)

    def get_batch(
        self, batch_id: str, *, state: JobState | str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Batch:
        """The batch's counts by state, progress, ETA, and one page of its items (in the manifest's order)."""
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = JobState(state).value
        if cursor is not None:
            params["cursor"] = cursor
        return Batch.from_dict(self._request("GET", f"/v1/batches/{batch_id}", params=params).json())

    def batch_items(self, batch_id: str, *, state: JobState | str | None = None) -> Iterator[Job]:
        """Every item of the batch (optionally of one state), a page at a time."""
        cursor: str | None = None
        while True:
            batch = self.get_batch(batch_id, state=state, cursor=cursor, limit=1000)
            yield from batch.items
            cursor = batch.next_cursor
            if not cursor:
                return

    def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel what has not finished; returns the batch's status right after."""
        return Batch.from_dict(self._request("POST", f"/v1/batches/{batch_id}/cancel").json())


# --------------------------------------------------------------------------------------------------------------
# Helpers of both clients


class _NoStream(RenderfarmError):
    """The answer to an events request was not an event stream (a proxy in between): poll instead."""

    def __init__(self) -> None:
        super().__init__("the farm's answer was not an event stream")


class _Tracker:
    """The newest snapshot seen by one wait: older ones (a stream and a poll crossing) are dropped by `seq`."""

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
        if self.latest is None or job.seq > self.latest.seq:
            self.latest = job
            if self.on_update is not None:
                self.on_update(job)
        return self.latest


def _stream_read_s(deadline: float | None) -> float:
    if deadline is None:
        return STREAM_READ_S
    return max(min(STREAM_READ_S, deadline - time.monotonic()), 0.05)


def _open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def batch_skeleton(defaults: JobSpec | None, batch_id: str | None) -> dict[str, Any]:
    chosen = str(uuid.UUID(batch_id)) if batch_id else str(uuid.uuid4())
    return {"batch_id": chosen, "defaults": build_job_body(defaults) if defaults is not None else {}}


def check_batch_body(body: Mapping[str, Any]) -> None:
    if ("jobs" in body) == ("grid" in body):
        raise ValueError("give either jobs (a list) or grid (a Grid), not both or neither")
