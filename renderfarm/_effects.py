"""What a flow (renderfarm/_flows.py) asks of the client that runs it, and the machinery that runs one.

A flow is a generator: it yields an effect (`Call`, `Sleep`, the steps of reading a stream), the client performs it
(blocking in `Client`, awaited in `AsyncClient`) and hands the outcome back through a `Stepper`: the value is sent
into the generator, an exception is thrown into it, so the flow's own `try` decides about retries and fallbacks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator, Mapping
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
    "outcome_of",
    "shell_signature",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------------------
# What a flow asks of its shell


@dataclass(frozen=True)
class Call:
    """Send one request and hand back the response (its body read, unless `stream`); a failure to reach the farm is
    thrown in as the SDK's TransportError."""

    method: str
    url: str
    headers: Mapping[str, str]
    json_body: Any = None
    content: bytes | None = None
    params: Mapping[str, Any] | None = None
    timeout: httpx.Timeout | None = None  # None: the client's
    stream: bool = False

    def request_arguments(self) -> dict[str, Any]:
        """The call as the arguments of httpx's `build_request`."""
        arguments: dict[str, Any] = {"method": self.method, "url": self.url, "headers": dict(self.headers)}
        arguments.update(json=self.json_body, content=self.content, params=self.params)
        if self.timeout is not None:
            arguments["timeout"] = self.timeout
        return arguments


@dataclass(frozen=True)
class Sleep:
    """Pause for `seconds`."""

    seconds: float


@dataclass(frozen=True)
class ReadBody:
    """Read the rest of a streamed response's body (to build the error of a refused stream)."""

    response: httpx.Response


@dataclass(frozen=True)
class Lines:
    """Start reading a streamed response's lines: hand back the (async) iterator of them."""

    response: httpx.Response


@dataclass(frozen=True)
class NextLine:
    """The next line of `Lines`' iterator, or None at the stream's end."""

    lines: Any


@dataclass(frozen=True)
class Close:
    """Close a streamed response."""

    response: httpx.Response


Effect: TypeAlias = Call | Sleep | ReadBody | Lines | NextLine | Close
Flow: TypeAlias = Generator[Effect, Any, T]


@dataclass(frozen=True)
class Outcome:
    """What performing an effect gave: a value, or the exception it raised."""

    value: Any = None
    error: Exception | None = None


def outcome_of(perform: Callable[[Effect], Any], effect: Effect) -> Outcome:
    try:
        return Outcome(perform(effect))
    except Exception as exc:  # handed to the flow, which decides (a retry, a fallback) or lets it rise
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
