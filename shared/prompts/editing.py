"""Prompt editing `[from:to:when]` and alternation `[a|b]`: the parser and the step schedules (docs/engine.md,
"Prompt language", "Editing and alternation").

The grammar of the reference, written out as a small recursive-descent parser instead of a parser library so that
`shared/` stays dependency-free and every failure mode is a line of code a reader can point at:

    whole      := ( prompt | stray )*              stray = one of  [ ] ( ) :   (only at the top level)
    prompt     := ( emphasis | scheduled | alternate | plain )*
    emphasis   := "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"    (passed through verbatim)
    scheduled  := "[" [ prompt ":" ] prompt ":" space? NUMBER space? "]"
    alternate  := "[" prompt ( "|" prompt? )+ "]"
    plain      := ( any character but \\ [ ] ( ) : |   or   \\ followed by any character but a newline )+

A bracket at the top level that does not open a complete construct is kept as a literal character. The whole prompt
fails to parse when a `|` is left outside every alternation or a backslash ends the text (or precedes a newline);
the reference then uses the prompt unchanged at every step, which `parse_schedule` reports as `None` so callers can
warn (docs/engine.md, "Deliberate differences", P3). Where the grammar is ambiguous (an opening bracket could be a
stray character or open a construct), the construct wins, as in the reference.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = [
    "Alternate",
    "Node",
    "Scheduled",
    "get_learned_conditioning_prompt_schedules",
    "parse_schedule",
    "schedule_switch_points",
]

# A signed number as the reference's grammar reads it: integer, decimal (`3.`, `.5`) or exponent form (`1e1`).
_NUMBER = re.compile(r"[+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+)")
# What closes a `[to:when]` / `[from:to:when]`: optional whitespace, the number, optional whitespace, `]`.
_WHEN_AND_CLOSE = re.compile(r"(\s*)(" + _NUMBER.pattern + r")(\s*)\]")
_SPECIAL = "\\[]():|"


@dataclass(frozen=True)
class Scheduled:
    """`[from:to:when]`; `before` is None for the `[to:when]` form. `when` is the number as written."""

    before: tuple[Node, ...] | None
    after: tuple[Node, ...]
    when: str


@dataclass(frozen=True)
class Alternate:
    """`[a|b|…]`: one option per step, in turn."""

    options: tuple[tuple[Node, ...], ...]


Node = str | Scheduled | Alternate  # str: text kept verbatim (plain text, emphasis brackets, stray characters)


class _NoMatch(Exception):
    """A construct does not match here (the caller tries something else)."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text

    def plain_end(self, i: int) -> int:
        """The end of the run of plain text starting at `i` (== i when there is none)."""
        text, n = self.text, len(self.text)
        while i < n:
            char = text[i]
            if char == "\\":
                if i + 1 < n and text[i + 1] != "\n":
                    i += 2
                    continue
                break
            if char in _SPECIAL:
                break
            i += 1
        return i

    def prompt(self, i: int) -> tuple[list[Node], int]:
        """A nested prompt from `i`: stops before the first character it cannot take (never fails: may be empty)."""
        nodes: list[Node] = []
        while i < len(self.text):
            char = self.text[i]
            if char in "([":
                try:
                    node, i = self.construct(i)
                except _NoMatch:
                    break
                nodes.extend(node)
                continue
            end = self.plain_end(i)
            if end == i:
                break
            nodes.append(self.text[i:end])
            i = end
        return nodes, i

    def expect(self, i: int, char: str) -> int:
        if i < len(self.text) and self.text[i] == char:
            return i + 1
        raise _NoMatch

    def construct(self, i: int) -> tuple[list[Node], int]:
        """Emphasis, prompt editing or alternation opening at `i` (a `(` or `[`), or _NoMatch."""
        if self.text[i] == "(":
            inner, j = self.prompt(i + 1)
            if j < len(self.text) and self.text[j] == ":":
                second, k = self.prompt(j + 1)
                k = self.expect(k, ")")
                return ["(", *inner, ":", *second, ")"], k
            j = self.expect(j, ")")
            return ["(", *inner, ")"], j
        first, j = self.prompt(i + 1)
        if j >= len(self.text):
            raise _NoMatch
        if self.text[j] == "]":
            return ["[", *first, "]"], j + 1
        if self.text[j] == "|":
            options = [tuple(first)]
            while j < len(self.text) and self.text[j] == "|":
                option, j = self.prompt(j + 1)
                options.append(tuple(option))
            j = self.expect(j, "]")
            return [Alternate(tuple(options))], j
        if self.text[j] == ":":
            closing = _WHEN_AND_CLOSE.match(self.text, j + 1)
            if closing:
                return [Scheduled(None, tuple(first), closing.group(2))], closing.end()
            second, k = self.prompt(j + 1)
            k = self.expect(k, ":")
            closing = _WHEN_AND_CLOSE.match(self.text, k)
            if closing:
                return [Scheduled(tuple(first), tuple(second), closing.group(2))], closing.end()
        raise _NoMatch

    def whole(self) -> list[Node] | None:
        text, n = self.text, len(self.text)
        nodes: list[Node] = []
        i = 0
        while i < n:
            char = text[i]
            if char in "([":
                try:
                    parsed, i = self.construct(i)
                except _NoMatch:
                    nodes.append(char)  # a stray bracket
                    i += 1
                    continue
                nodes.extend(parsed)
            elif char in "]):":
                nodes.append(char)
                i += 1
            else:
                end = self.plain_end(i)
                if end == i:  # `|` outside an alternation, or a backslash at the end or before a newline
                    return None
                nodes.append(text[i:end])
                i = end
        return nodes


def parse_schedule(prompt: str) -> list[Node] | None:
    """The editing/alternation tree of `prompt`, or None where the reference's grammar rejects it (then the prompt
    is used unchanged at every step)."""
    return _Parser(prompt).whole()


def _walk(nodes: tuple[Node, ...] | list[Node]) -> list[Scheduled | Alternate]:
    found: list[Scheduled | Alternate] = []
    for node in nodes:
        if isinstance(node, Scheduled):
            found.append(node)
            found.extend(_walk(node.before or ()))
            found.extend(_walk(node.after))
        elif isinstance(node, Alternate):
            found.append(node)
            for option in node.options:
                found.extend(_walk(option))
    return found


@dataclass(frozen=True)
class _Timeline:
    steps: int  # N: the length of the timeline
    int_offset: int  # subtracted from an absolute `when` (hires pass: the first pass's N)
    float_offset: float  # subtracted from a fractional `when` (hires pass: 1.0)
    old: bool  # use_old_scheduling: when < 1 is a fraction, else absolute

    def step_of(self, when: str) -> int:
        """The last step (evaluation counter value) at which `from` is still used."""
        value = float(when)
        if self.old:
            value = value * self.steps if value < 1 else value
        elif "." in when:
            value = (value - self.float_offset) * self.steps
        else:
            value = value - self.int_offset
        if math.isinf(value):
            # The reference raises OverflowError here (int of an infinite float): checks.py refuses such prompts.
            raise OverflowError(f"prompt editing step {when!r} is out of range")
        return min(self.steps, int(value))


def schedule_switch_points(nodes: list[Node], timeline: _Timeline) -> list[int]:
    points = {timeline.steps}
    for node in _walk(nodes):
        if isinstance(node, Scheduled):
            step = timeline.step_of(node.when)
            if step >= 1:
                points.add(step)
        else:
            points.update(range(1, timeline.steps + 1))
    return sorted(points)


def _text_at(nodes: tuple[Node, ...] | list[Node], step: int, timeline: _Timeline) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, Scheduled):
            chosen = (node.before or ()) if step <= timeline.step_of(node.when) else node.after
            parts.append(_text_at(chosen, step, timeline))
        else:
            parts.append(_text_at(node.options[(step - 1) % len(node.options)], step, timeline))
    return "".join(parts)


def get_learned_conditioning_prompt_schedules(
    prompts: list[str],
    base_steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[list[int | str]]]:
    """For each prompt, its schedule `[[end_at_step, text], …]`: `text` is used while the denoiser's evaluation
    counter is at most `end_at_step` (docs/engine.md, "Prompt language", "Which step").

    `base_steps` is N = steps × (2 for the second-order samplers, else 1); `hires_steps`, given, builds the
    timeline of a hires-fix second pass. Raises OverflowError for an infinite `when` (as the reference does).
    """
    if hires_steps is None or use_old_scheduling:
        timeline = _Timeline(base_steps, 0, 0.0, use_old_scheduling)
    else:
        timeline = _Timeline(hires_steps, base_steps, 1.0, False)

    def schedule(prompt: str) -> list[list[int | str]]:
        nodes = parse_schedule(prompt)
        if nodes is None:
            return [[timeline.steps, prompt]]
        return [[step, _text_at(nodes, step, timeline)] for step in schedule_switch_points(nodes, timeline)]

    by_prompt = {prompt: schedule(prompt) for prompt in dict.fromkeys(prompts)}
    return [by_prompt[prompt] for prompt in prompts]
