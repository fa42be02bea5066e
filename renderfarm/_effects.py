"""What a flow (renderfarm/_flows.py) asks of the client that runs it, and the machinery that runs one.

A flow is a generator: it yields an effect (`Call`, `Sleep`, the steps of reading a stream), the client performs it
and hands the outcome back through a `Stepper`: the value is sent into the generator, an exception is thrown into
it, so the flow's own `try` decides about retries and fallbacks. Each effect says how it is performed, blocking
(`run`, for `Client`) and awaited (`arun`, for `AsyncClient`), side by side: the only place the two clients differ.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

import httpx

__all__ = [
    "Call",
    "Close",
    "Effect",
    "Flow",
    "Lines",
    "NextLine",
    "Outcome",
    "ReadBody",
    "Sleep",
    "Stepper",
    "awaited_outcome_of",
    "outcome_of",
    "shell_signature",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------------------
# What a flow asks of its shell


@dataclass(frozen=True)
class Call:
    """Send one request and hand back the response (its body read, unless `stream`). A failure to reach the farm is
    thrown in as httpx's TransportError, which carries the request."""

    method: str
    url: str
    headers: Mapping[str, str]
    json_body: Any = None
    content: bytes | None = None
    params: Mapping[str, Any] | None = None
    timeout: httpx.Timeout | None = None  # None: the client's
    stream: bool = False

    def run(self, http: httpx.Client) -> httpx.Response:
        return http.send(http.build_request(**self._arguments()), stream=self.stream)

    async def arun(self, http: httpx.AsyncClient) -> httpx.Response:
        return await http.send(http.build_request(**self._arguments()), stream=self.stream)

    def _arguments(self) -> dict[str, Any]:
        """The call as the arguments of httpx's `build_request` (the client adds its own headers and defaults)."""
        arguments: dict[str, Any] = {"method": self.method, "url": self.url, "headers": dict(self.headers)}
        arguments.update(json=self.json_body, content=self.content, params=self.params)
        if self.timeout is not None:
            arguments["timeout"] = self.timeout
        return arguments


@dataclass(frozen=True)
class Sleep:
    """Pause for `seconds`."""

    seconds: float

    def run(self, http: httpx.Client) -> None:
        time.sleep(self.seconds)

    async def arun(self, http: httpx.AsyncClient) -> None:
        await asyncio.sleep(self.seconds)


@dataclass(frozen=True)
class ReadBody:
    """Read the rest of a streamed response's body (to build the error of a refused stream)."""

    response: httpx.Response

    def run(self, http: httpx.Client) -> bytes:
        return self.response.read()

    async def arun(self, http: httpx.AsyncClient) -> bytes:
        return await self.response.aread()


@dataclass(frozen=True)
class Lines:
    """Start reading a streamed response's lines: hand back the iterator of them (an async one when awaited)."""

    response: httpx.Response

    def run(self, http: httpx.Client) -> Iterator[str]:
        return self.response.iter_lines()

    async def arun(self, http: httpx.AsyncClient) -> AsyncIterator[str]:
        return self.response.aiter_lines()


@dataclass(frozen=True)
class NextLine:
    """The next line of `Lines`' iterator, or None at the stream's end."""

    lines: Any

    def run(self, http: httpx.Client) -> str | None:
        return next(self.lines, None)

    async def arun(self, http: httpx.AsyncClient) -> str | None:
        return await anext(self.lines, None)


@dataclass(frozen=True)
class Close:
    """Close a streamed response."""

    response: httpx.Response

    def run(self, http: httpx.Client) -> None:
        self.response.close()

    async def arun(self, http: httpx.AsyncClient) -> None:
        await self.response.aclose()


Effect: TypeAlias = Call | Sleep | ReadBody | Lines | NextLine | Close
Flow: TypeAlias = Generator[Effect, Any, T]


@dataclass(frozen=True)
class Outcome:
    """What performing an effect gave: a value, or the exception it raised."""

    value: Any = None
    error: Exception | None = None


def outcome_of(effect: Effect, http: httpx.Client) -> Outcome:
    """Perform the effect, blocking."""
    try:
        return Outcome(effect.run(http))
    except Exception as exc:  # handed to the flow, which decides (a retry, a fallback) or lets it rise
        return Outcome(error=exc)


async def awaited_outcome_of(effect: Effect, http: httpx.AsyncClient) -> Outcome:
    """Perform the effect, awaited."""
    try:
        return Outcome(await effect.arun(http))
    except Exception as exc:  # as in outcome_of
        return Outcome(error=exc)


class Stepper(Generic[T]):
    """Runs a flow one effect at a time: `effect` is what it waits for; `resume` hands in the outcome. When the
    flow returns, `done` is True and `result` holds its value; an exception it does not handle rises from `resume`."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self.done = False
        self.result: T
        self.effect: Effect
        self._advance(lambda: next(flow))

    def resume(self, outcome: Outcome) -> None:
        if outcome.error is not None:
            error = outcome.error
            self._advance(lambda: self._flow.throw(error))
        else:
            self._advance(lambda: self._flow.send(outcome.value))

    def _advance(self, step: Callable[[], Effect]) -> None:
        try:
            self.effect = step()
        except StopIteration as stop:
            self.done = True
            self.result = stop.value


def shell_signature(flow: Callable[..., Any], returns: str | None = None) -> inspect.Signature:
    """The signature a client's method shows for an operation: the flow's, returning what the flow returns (or
    `returns`) instead of the flow itself."""
    signature = inspect.signature(flow)
    flow_returns = str(signature.return_annotation).removeprefix("Flow[").removesuffix("]")
    return signature.replace(return_annotation=returns or flow_returns)
