"""Composable prompts: `AND` and the `:weight` suffix of each part (docs/engine.md, "Prompt language", "AND")."""

from __future__ import annotations

import re

__all__ = ["and_parts", "get_multicond_prompt_list", "split_weight"]

_AND = re.compile(r"\bAND\b")
# A part: its text (lazily), then optionally `:number` with spaces around the colon, then trailing whitespace. The
# trailing whitespace goes in any case; leading whitespace stays.
_WEIGHTED = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_weight(part: str) -> tuple[str, float, bool]:
    """`(text, weight, had_suffix)` of one AND part."""
    match = _WEIGHTED.search(part)
    if match is None:  # cannot happen (the pattern accepts any text); kept for the type checker
        return part, 1.0, False
    text, weight = match.group(1), match.group(2)
    return text, (float(weight) if weight is not None else 1.0), weight is not None


def get_multicond_prompt_list(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """Split each prompt on `AND`; returns, per prompt, `(index into the flat list, weight)` per part; the flat list
    of distinct part texts (each encoded once); and text → index."""
    res_indexes: list[list[tuple[int, float]]] = []
    prompt_flat_list: list[str] = []
    prompt_indexes: dict[str, int] = {}
    for prompt in prompts:
        indexes: list[tuple[int, float]] = []
        for part in _AND.split(prompt):
            text, weight, _ = split_weight(part)
            index = prompt_indexes.get(text)
            if index is None:
                index = len(prompt_flat_list)
                prompt_flat_list.append(text)
                prompt_indexes[text] = index
            indexes.append((index, weight))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list, prompt_indexes


def and_parts(prompt: str) -> list[str]:
    """The parts of `prompt` split on AND, weights not yet removed."""
    return _AND.split(prompt)
