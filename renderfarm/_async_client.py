"""`renderfarm.AsyncClient`: the same surface as `renderfarm.Client`, for asyncio programs.

    import asyncio
    import renderfarm

    async def main() -> None:
        async with renderfarm.AsyncClient("http://farm:7860", token="...") as farm:
            jobs = [await farm.submit(image="cat.png", prompt=p, steps=20) for p in ("a cat", "a dog")]
            done = await asyncio.gather(*(farm.wait(job.task_id, timeout=600) for job in jobs))
            for job in done:
                await farm.download(job, f"out/{job.task_id}")

    asyncio.run(main())

Everything that does no I/O (request bodies, image inputs, retry decisions, the event-stream parser, the result
types) is shared with the blocking client, so the two cannot drift apart; only the awaiting differs.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from renderfarm._errors import (
    APIError,
    IntegrityError,
    JobNotFinished,
    NotFound,
    ServerError,
    TransportError,
    WaitTimeout,
    error_from_response,
)
from renderfarm._transport import Retries, SSEParser, Timeout, checked, transport_error
from renderfarm._types import Artifact, Asset, Batch, BatchCreated, Grid, Job, JobState
from renderfarm.client import (
    ARTIFACT_KINDS,
    POLL_FIRST_S,
    POLL_MAX_S,
    STREAM_CONNECTS,
    USER_AGENT,
    ImageInput,
    JobSpec,
    _ClientBase,
    _NoStream,
    _open_image,
    _quoted,
    _sha256,
    _stream_read_s,
    _Tracker,
    batch_skeleton,
    build_job_body,
    check_batch_body,
    file_sha256,
    grid_body_axes,
    image_bytes,
    image_slots,
    is_reference,
    new_task_id,
    set_slot,
    write_atomically,
)

__all__ = ["AsyncClient"]


class AsyncClient(_ClientBase):
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
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        chosen = timeout if isinstance(timeout, Timeout) else Timeout(timeout) if timeout is not None else Timeout()
        super().__init__(base_url, token, chosen, retries or Retries())
        self._http = httpx.AsyncClient(
            timeout=chosen.to_httpx(),
            transport=transport,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            follow_redirects=True,
        )

    async def aclose(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------------------------------
    # Plumbing

    async def _request(
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
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                delay = self.retries.delay_after_failure(attempt)
                if delay is None:
                    raise transport_error(exc, request) from exc
                await asyncio.sleep(delay)
                continue
            delay = self.retries.delay_after_answer(response, attempt)
            if delay is None:
                return checked(response)
            await response.aclose()
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------------------------------------------------
    # Assets

    async def upload(self, image: ImageInput) -> Asset:
        """Upload a picture as an asset, unless the farm has its sha256 already; returns the asset.

        >>> farm.upload("cat.png").asset_id                               # doctest: +SKIP
        'asset:9f86d08...'
        """
        data = image_bytes(image)
        digest = _sha256(data)
        try:
            asset = Asset.from_dict((await self._request("GET", f"/v1/assets/asset:{digest}")).json())
        except NotFound:
            response = await self._request(
                "POST", "/v1/assets", content=data, headers={"Content-Type": "application/octet-stream"}
            )
            asset = Asset.from_dict(response.json())
        self._assets[asset.sha256] = asset.asset_id
        return asset

    async def _image_ref(self, image: ImageInput) -> str:
        if is_reference(image):
            return str(image)
        known, data, _digest = self._known_asset(image)
        if known is not None:
            return known
        return (await self.upload(data if data is not None else image)).asset_id

    async def _resolve_images(self, body: dict[str, Any]) -> dict[str, Any]:
        for name, index, value in builtins.list(image_slots(body)):
            set_slot(body, name, index, await self._image_ref(value))
        return body

    # ------------------------------------------------------------------------------------------------------------
    # Jobs

    async def submit(
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
        body = await self._resolve_images(build_job_body(spec, image=image, mask=mask, task_id=task_id, fields=fields))
        chosen = body.pop("force_task_id", None) or new_task_id()
        return Job.from_dict((await self._request("PUT", f"/v1/jobs/{_quoted(chosen)}", json_body=body)).json())

    async def get(self, task_id: str) -> Job:
        """The job's current snapshot. Raises NotFound for an unknown id (and for another tenant's)."""
        return Job.from_dict((await self._request("GET", f"/v1/jobs/{_quoted(task_id)}")).json())

    async def cancel(self, task_id: str) -> Job:
        """Cancel the job: a queued one at once, a running one at its next step; a finished one is unchanged.
        Returns the snapshot right after the request (a running job may still show `running`)."""
        return Job.from_dict((await self._request("POST", f"/v1/jobs/{_quoted(task_id)}/cancel")).json())

    async def list(
        self, *, state: JobState | str | None = None, batch: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Job]:
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
            page = (await self._request("GET", "/v1/jobs", params=params)).json()
            for item in page["jobs"]:
                yield Job.from_dict(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def wait(
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
                await self._follow(task_id, deadline, tracker)
            if tracker.finished is not None:
                return tracker.finished
            if deadline is not None and time.monotonic() >= deadline:
                break
        delay = POLL_FIRST_S
        while True:
            job = tracker.offer(await self.get(task_id))
            if job.is_finished:
                return job
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(job, timeout or 0.0)
                await asyncio.sleep(min(delay, left))
            else:
                await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)

    async def _follow(self, task_id: str, deadline: float | None, tracker: _Tracker) -> None:
        """Read the job's event stream until a terminal snapshot, the deadline or the stream's end."""
        url = self._url(f"/v1/jobs/{_quoted(task_id)}/events")
        extra = {"Accept": "text/event-stream"}
        if tracker.seq is not None:
            extra["Last-Event-ID"] = str(tracker.seq)
        read_s = _stream_read_s(deadline)
        timeout = httpx.Timeout(connect=self.timeout.connect, read=read_s, write=self.timeout.write, pool=None)
        async with self._http.stream("GET", url, headers=self._headers(url, extra), timeout=timeout) as response:
            if not response.is_success:
                await response.aread()
                raise error_from_response(response)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise _NoStream
            parser = SSEParser()
            async for line in response.aiter_lines():
                for event in parser.feed(line):
                    if event.event == "snapshot" and tracker.offer(Job.from_dict(json.loads(event.data))).is_finished:
                        return
                if deadline is not None and time.monotonic() >= deadline:
                    return

    # ------------------------------------------------------------------------------------------------------------
    # Results

    async def download(
        self, job: str | Job, dest: str | os.PathLike[str], *, kinds: Iterable[str] = ARTIFACT_KINDS
    ) -> builtins.list[Path]:
        """Download the job's results, overlays and masks into the folder `dest` as `{kind}-{index}.png`, each
        checked against its sha256; returns the paths. A file already there with the right sha256 is kept (so an
        interrupted download resumes). Raises JobNotFinished, JobFailed / JobCanceled, IntegrityError.

        >>> farm.download("cat-1", "out/cat-1")                            # doctest: +SKIP
        [PosixPath('out/cat-1/result-0.png'), PosixPath('out/cat-1/mask-0.png')]
        """
        snapshot = await self.get(job) if isinstance(job, str) else job
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
                    data = await self.fetch(artifact)
                except APIError:
                    if isinstance(job, str):
                        raise
                    # The snapshot's URLs may have expired (they last an hour): take fresh ones once.
                    return await self.download(snapshot.task_id, dest, kinds=wanted)
                write_atomically(path, data)
            paths.append(path)
        return paths

    async def fetch(self, artifact: Artifact) -> bytes:
        """One artifact's bytes, checked against its sha256 (fetched twice before IntegrityError)."""
        for attempt in (1, 2):
            data = (await self._request("GET", artifact.url)).content
            actual = _sha256(data)
            if actual == artifact.sha256:
                return data
            if attempt == 2:
                raise IntegrityError(artifact.url, artifact.sha256, actual)
        raise AssertionError("unreachable")  # pragma: no cover

    async def render(
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
        job = await self.submit(spec, image=image, mask=mask, task_id=task_id, **fields)
        job = (await self.wait(job.task_id, timeout=timeout)).raise_for_state()
        return [_open_image(await self.fetch(artifact)) for artifact in job.results]

    # ------------------------------------------------------------------------------------------------------------
    # Batches

    async def submit_batch(
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
        return BatchCreated.from_dict((await self._request("POST", "/v1/batches", json_body=body)).json())

    async def _batch_body(
        self, jobs: Sequence[JobSpec] | None, grid: Grid | None, defaults: JobSpec | None, batch_id: str | None
    ) -> dict[str, Any]:
        body = batch_skeleton(defaults, batch_id)
        await self._resolve_images(body["defaults"])
        if jobs is not None:
            body["jobs"] = [await self._resolve_images(build_job_body(job)) for job in jobs]
        if grid is not None:
            axes = grid_body_axes(grid)
            for name in ("init_images", "mask", "latent_mask"):
                if name in axes:
                    axes[name] = [await self._axis_image(value) for value in axes[name]]
            body["grid"] = {"mode": grid.mode, "axes": axes}
        check_batch_body(body)
        return body

    async def _axis_image(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [await self._image_ref(item) for item in value]
        return await self._image_ref(value)

    async def get_batch(
        self, batch_id: str, *, state: JobState | str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Batch:
        """The batch's counts by state, progress, ETA, and one page of its items (in the manifest's order)."""
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = JobState(state).value
        if cursor is not None:
            params["cursor"] = cursor
        return Batch.from_dict((await self._request("GET", f"/v1/batches/{batch_id}", params=params)).json())

    async def batch_items(self, batch_id: str, *, state: JobState | str | None = None) -> AsyncIterator[Job]:
        """Every item of the batch (optionally of one state), a page at a time."""
        cursor: str | None = None
        while True:
            batch = await self.get_batch(batch_id, state=state, cursor=cursor, limit=1000)
            for item in batch.items:
                yield item
            cursor = batch.next_cursor
            if not cursor:
                return

    async def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel what has not finished; returns the batch's status right after."""
        return Batch.from_dict((await self._request("POST", f"/v1/batches/{batch_id}/cancel")).json())
