"""Emphasis: `(x)`, `[x]`, `(x:w)`, escapes and BREAK, turned into `[text, weight]` pairs (docs/engine.md,
"Prompt language", "Emphasis")."""

from __future__ import annotations

import re

__all__ = ["BREAK", "ROUND", "SQUARE", "WeightError", "parse_prompt_attention"]

ROUND = 1.1  # `(x)` multiplies by this
SQUARE = 1 / 1.1  # `[x]` multiplies by this
BREAK: tuple[str, int] = ("BREAK", -1)  # the pair recorded for a BREAK separator

# One lexeme at a time, in this order of preference: an escape (`\(` `\)` `\[` `\]` `\\`), a lone backslash
# (dropped), an opening bracket, `:w)` (an explicit weight closing a round bracket), a closing bracket, a run of text,
# a lone colon.
_LEXEME = re.compile(
    r"""
    \\[()\[\]\\]
  | \\
  | [(\[]
  | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
  | [)\]]
  | [^\\()\[\]:]+
  | :
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


class WeightError(ValueError):
    """`(x:w)` where `w` is not a number (`1..2`): the reference crashes on it; the farm refuses it (P2)."""

    def __init__(self, weight: str, position: int) -> None:
        super().__init__(f"the emphasis weight {weight!r} is not a number")
        self.weight = weight
        self.position = position


def parse_prompt_attention(text: str) -> list[list[str | float]]:
    """`text` as `[segment, weight]` pairs, neighbours of exactly equal weight merged, BREAK as `["BREAK", -1]`.

    Raises WeightError where the reference raises (an explicit weight that float() rejects, inside an open `(`).
    """
    pairs: list[list[str | float]] = []
    round_opened: list[int] = []  # index into pairs where each open `(` starts
    square_opened: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for pair in pairs[start:]:
            pair[1] = float(pair[1]) * factor

    for match in _LEXEME.finditer(text):
        lexeme, weight = match.group(0), match.group("weight")
        if lexeme.startswith("\\"):
            pairs.append([lexeme[1:], 1.0])  # the escaped character; a lone backslash leaves ""
        elif lexeme == "(":
            round_opened.append(len(pairs))
        elif lexeme == "[":
            square_opened.append(len(pairs))
        elif weight is not None and round_opened:
            try:
                factor = float(weight)
            except ValueError:
                raise WeightError(weight, match.start("weight")) from None
            multiply_from(round_opened.pop(), factor)
        elif lexeme == ")" and round_opened:
            multiply_from(round_opened.pop(), ROUND)
        elif lexeme == "]" and square_opened:
            multiply_from(square_opened.pop(), SQUARE)
        else:  # text, or a bracket/colon/weight that closes nothing: literal
            for i, part in enumerate(_BREAK.split(lexeme)):
                if i > 0:
                    pairs.append(list(BREAK))
                pairs.append([part, 1.0])

    # Brackets left open apply to everything after them.
    for start in round_opened:
        multiply_from(start, ROUND)
    for start in square_opened:
        multiply_from(start, SQUARE)

    if not pairs:
        return [["", 1.0]]

    merged = [pairs[0]]
    for pair in pairs[1:]:
        if merged[-1][1] == pair[1]:  # exact float equality, as the reference (BREAK's -1 merges too)
            merged[-1][0] = str(merged[-1][0]) + str(pair[0])
        else:
            merged.append(pair)
    return merged
