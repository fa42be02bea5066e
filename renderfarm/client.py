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

import functools
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from renderfarm._effects import Flow, Stepper, outcome_of, shell_signature
from renderfarm._flows import ClientBase, Operations, Pager, new_task_id
from renderfarm._job import Job
from renderfarm._requests import ImageInput, JobSpec, file_sha256, job_request, write_atomically
from shared.job.artifacts import ARTIFACT_KINDS

__all__ = [
    "ARTIFACT_KINDS",
    "Client",
    "ImageInput",
    "JobSpec",
    "file_sha256",
    "job_request",
    "new_task_id",
    "write_atomically",
]

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(flow: Callable[Concatenate[Operations, P], Flow[T]]) -> Callable[Concatenate[Client, P], T]:
    """A Client method that runs the operation's flow to its end (its parameters and docstring are the flow's)."""

    @functools.wraps(flow)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(flow(self._ops, *args, **kwargs))

    method.__signature__ = shell_signature(flow)  # type: ignore[attr-defined]
    return method


def _blocking_pages(
    listing: Callable[Concatenate[Operations, P], Pager],
) -> Callable[Concatenate[Client, P], Iterator[Job]]:
    """A Client method that iterates a listing's jobs, reading the next page when the last one is used up."""

    @functools.wraps(listing)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[Job]:
        pager, cursor = listing(self._ops, *args, **kwargs), None
        while True:
            jobs, cursor = self._run(pager(cursor))
            yield from jobs
            if not cursor:
                return

    method.__signature__ = shell_signature(listing, "Iterator[Job]")  # type: ignore[attr-defined]
    return method


class Client(ClientBase[httpx.BaseTransport]):
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

    def _open_http(self, **options: Any) -> None:
        self._http = httpx.Client(**options)

    def close(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------------
    # The I/O: everything else is the operations' flows (renderfarm/_flows.py)

    def _run(self, flow: Flow[T]) -> T:
        step = Stepper(flow)
        while not step.done:
            step.resume(outcome_of(step.effect, self._http))
        return step.result

    # ------------------------------------------------------------------------------------------------------------
    # The operations

    upload = _blocking(Operations.upload)
    submit = _blocking(Operations.submit)
    get = _blocking(Operations.get)
    cancel = _blocking(Operations.cancel)
    list = _blocking_pages(Operations.list)
    wait = _blocking(Operations.wait)
    download = _blocking(Operations.download)
    fetch = _blocking(Operations.fetch)
    render = _blocking(Operations.render)
    submit_batch = _blocking(Operations.submit_batch)
    get_batch = _blocking(Operations.get_batch)
    batch_items = _blocking_pages(Operations.batch_items)
    cancel_batch = _blocking(Operations.cancel_batch)

    def events(self, after: str | None = None, *, follow: bool = False, wait_s: float = 25.0) -> Iterator[Any]:
        """Your job and batch events after the cursor `after` (None: from the first), oldest first: the same ids
        and bodies as the webhooks, each with its `cursor` (keep the last one to resume from it). Ends when it has
        caught up, unless `follow`: then it long-polls (`wait_s` per request) for new events until the caller
        stops iterating.

        >>> [event["type"] for event in farm.events(after=saved_cursor)]  # doctest: +SKIP
        """
        cursor = after
        while True:
            page, next_cursor = self._run(self._ops.events(cursor, wait_s=wait_s if follow else 0.0))
            yield from page
            cursor = next_cursor
            if not page and not follow:
                return
