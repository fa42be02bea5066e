"""Both SDK clients behind one interface, so every behaviour test of `Client` runs against `AsyncClient` too.

`AsyncDriven` puts an `AsyncClient` behind the blocking interface: each method call runs the coroutine to its end
on the object's own event loop, and `list` / `batch_items` step the async iterator one item at a time. The test
bodies are then the same for both clients; what they exercise is each client's own I/O.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal, cast

import httpx

from renderfarm import AsyncClient, Client

ClientKind = Literal["sync", "async"]
CLIENT_KINDS: tuple[ClientKind, ...] = ("sync", "async")


class AsyncDriven:
    """An `AsyncClient` with the blocking methods of `Client` (see the module's docstring)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._runner = asyncio.Runner()
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.client, name)
        if inspect.isasyncgenfunction(value):
            return functools.partial(self._iterate, value)
        if inspect.iscoroutinefunction(value):
            return functools.partial(self._call, value)
        return value

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._runner.run(method(*args, **kwargs))

    def _iterate(self, method: Callable[..., AsyncIterator[Any]], *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = method(*args, **kwargs)

        async def next_item() -> Any:
            return await anext(items)

        while True:
            try:
                yield self._runner.run(next_item())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._runner.run(self.client.aclose())
            self._runner.close()

    def __enter__(self) -> AsyncDriven:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ClientMaker:
    """Makes the clients of one test, all of one kind, and closes any the test left open."""

    def __init__(self, kind: ClientKind) -> None:
        self.kind = kind
        self._made: list[Client | AsyncDriven] = []

    def __call__(
        self, base_url: str | None = None, *, on_request: Callable[[httpx.Request], None] | None = None, **kwargs: Any
    ) -> Client:
        """A client of this kind (`Client`'s arguments); `on_request` sees every request it sends."""
        made: Client | AsyncDriven
        if self.kind == "sync":
            made = Client(base_url, **kwargs)
            if on_request is not None:
                made._http.event_hooks["request"].append(on_request)
        else:
            made = AsyncDriven(AsyncClient(base_url, **kwargs))
            if on_request is not None:
                made.client._http.event_hooks["request"].append(_awaitable(on_request))
        self._made.append(made)
        return cast(Client, made)

    def close_all(self) -> None:
        for made in self._made:
            made.close()


def _awaitable(hook: Callable[[httpx.Request], None]) -> Callable[[httpx.Request], Any]:
    async def awaited(request: httpx.Request) -> None:
        hook(request)

    return awaited
