"""Extra-network tags `<type:args>` in a prompt (docs/engine.md, "Prompt language", "Extra-network tags")."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["HYPERNET_TYPE", "LORA_TYPES", "ExtraNetworkTag", "find_extra_networks", "strip_extra_networks"]

# TYPE = word characters, ARGS = one or more characters other than `>`.
_TAG = re.compile(r"<(\w+):([^>]+)>")

LORA_TYPES = ("lora", "lyco")  # one handler, two names
HYPERNET_TYPE = "hypernet"


@dataclass(frozen=True)
class ExtraNetworkTag:
    type: str
    positional: tuple[str, ...]
    named: tuple[tuple[str, str], ...]  # items with exactly one `=`: `te=0.5`
    text: str  # the tag as written
    start: int  # its position in the prompt


def _tag(match: re.Match[str]) -> ExtraNetworkTag:
    positional: list[str] = []
    named: list[tuple[str, str]] = []
    for item in match.group(2).split(":"):
        parts = item.split("=")
        if len(parts) == 2:
            named.append((parts[0], parts[1]))
        else:
            positional.append(item)
    return ExtraNetworkTag(match.group(1), tuple(positional), tuple(named), match.group(0), match.start())


def find_extra_networks(prompt: str) -> list[ExtraNetworkTag]:
    """Every tag of `prompt`, in order."""
    return [_tag(match) for match in _TAG.finditer(prompt)]


def strip_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """A positive prompt without its tags (each replaced by nothing; spaces and commas around it stay) and the tags.
    Negative prompts keep their tags as text (the reference encodes them literally)."""
    return _TAG.sub("", prompt), find_extra_networks(prompt)
