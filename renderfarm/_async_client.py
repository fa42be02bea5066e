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

Both clients run the same operations (renderfarm/_flows.py: request building, retries, the wait's stream then poll,
downloads, uploads); each only does the I/O, this one awaiting it. So the two cannot drift apart.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from renderfarm._effects import Flow, Stepper, awaited_outcome_of, shell_signature
from renderfarm._flows import ClientBase, Operations, Pager
from renderfarm._job import Job

__all__ = ["AsyncClient"]

P = ParamSpec("P")
T = TypeVar("T")


def _awaiting(
    flow: Callable[Concatenate[Operations, P], Flow[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    """An AsyncClient method that runs the operation's flow to its end (its parameters and docstring are the
    flow's)."""

    @functools.wraps(flow)
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(flow(self._ops, *args, **kwargs))

    method.__signature__ = shell_signature(flow)  # type: ignore[attr-defined]
    return method


def _awaiting_pages(
    listing: Callable[Concatenate[Operations, P], Pager],
) -> Callable[Concatenate[AsyncClient, P], AsyncIterator[Job]]:
    """An AsyncClient method that iterates a listing's jobs, reading the next page when the last one is used up."""

    @functools.wraps(listing)
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Job]:
        pager, cursor = listing(self._ops, *args, **kwargs), None
        while True:
            jobs, cursor = await self._run(pager(cursor))
            for job in jobs:
                yield job
            if not cursor:
                return

    method.__signature__ = shell_signature(listing, "AsyncIterator[Job]")  # type: ignore[attr-defined]
    return method


class AsyncClient(ClientBase[httpx.AsyncBaseTransport]):
    """An asyncio client of one farm, with the methods of `Client`, awaited (`list` and `batch_items` are async
    iterators). Use it as an async context manager, or call `aclose()`.

    base_url: the farm's address (default RENDERFARM_URL, else http://127.0.0.1:7860).
    token: the API token (default RENDERFARM_TOKEN; a farm without tokens serves its own machine without one).
    timeout: per-request `Timeout` (seconds). retries: `Retries` of transport failures and 429/502/503/504.
    transport: an httpx async transport (for tests, proxies, or `httpx.MockTransport`).

    >>> async with AsyncClient("http://127.0.0.1:7860") as farm:           # doctest: +SKIP
    ...     job = await farm.submit(image="cat.png", prompt="a cat", steps=20, seed=7)
    ...     job = await farm.wait(job.task_id, timeout=300)
    ...     await farm.download(job, "out")
    """

    def _open_http(self, **options: Any) -> None:
        self._http = httpx.AsyncClient(**options)

    async def aclose(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------------------------------
    # The I/O: everything else is the operations' flows (renderfarm/_flows.py)

    async def _run(self, flow: Flow[T]) -> T:
        step = Stepper(flow)
        while not step.done:
            step.resume(await awaited_outcome_of(step.effect, self._http))
        return step.result

    # ------------------------------------------------------------------------------------------------------------
    # The operations

    upload = _awaiting(Operations.upload)
    submit = _awaiting(Operations.submit)
    get = _awaiting(Operations.get)
    cancel = _awaiting(Operations.cancel)
    list = _awaiting_pages(Operations.list)
    wait = _awaiting(Operations.wait)
    download = _awaiting(Operations.download)
    fetch = _awaiting(Operations.fetch)
    render = _awaiting(Operations.render)
    submit_batch = _awaiting(Operations.submit_batch)
    get_batch = _awaiting(Operations.get_batch)
    batch_items = _awaiting_pages(Operations.batch_items)
    cancel_batch = _awaiting(Operations.cancel_batch)

    async def events(
        self, after: str | None = None, *, follow: bool = False, wait_s: float = 25.0
    ) -> AsyncIterator[Any]:
        """`Client.events`, iterated with `async for`."""
        cursor = after
        while True:
            page, next_cursor = await self._run(self._ops.events(cursor, wait_s=wait_s if follow else 0.0))
            for event in page:
                yield event
            cursor = next_cursor
            if not page and not follow:
                return
