"""Prompt editing and alternation (docs/engine.md, "Prompt language", "Editing and alternation", "Which step"):
schedules derived by hand from the rules."""

from __future__ import annotations

import pytest

from shared.prompts import get_learned_conditioning_prompt_schedules
from shared.prompts.editing import parse_schedule


def schedule(prompt: str, steps: int = 10, hires: int | None = None, old: bool = False) -> list[list[int | str]]:
    return get_learned_conditioning_prompt_schedules([prompt], steps, hires, old)[0]


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("a cat", 10, [[10, "a cat"]]),
        ("", 10, [[10, ""]]),
        ("a [b:3]", 10, [[3, "a "], [10, "a b"]]),
        ("a [b: 3]", 10, [[3, "a "], [10, "a b"]]),
        ("[a:b: 3 ]", 10, [[3, "a"], [10, "b"]]),
        ("[a:b:0.5]", 20, [[10, "a"], [20, "b"]]),  # a fraction of N
        ("[a:b:.5]", 20, [[10, "a"], [20, "b"]]),
        ("[a:b:0.33]", 20, [[6, "a"], [20, "b"]]),  # int() truncates 6.6
        ("[a:b:1.0]", 20, [[20, "a"]]),  # the end of the timeline: never switches
        ("[a:b:3.]", 20, [[20, "a"]]),  # written with a dot: a fraction, 3·N, capped at N
        ("[a:b:1e1]", 20, [[10, "a"], [20, "b"]]),  # no dot: absolute, 10 steps
        ("[a:b:+4]", 20, [[4, "a"], [20, "b"]]),
        ("[a:b:30]", 20, [[20, "a"]]),  # capped at N
        ("[a:b:0]", 20, [[20, "b"]]),  # 0 and negatives: `to` from the start
        ("[a:b:-3]", 20, [[20, "b"]]),
        ("[a::3]", 10, [[3, "a"], [10, ""]]),
        ("[:b:3]", 10, [[3, ""], [10, "b"]]),
        ("a [b : c : 1] d", 10, [[1, "a b  d"], [10, "a  c  d"]]),  # spaces belong to the texts
        ("a[b:[c:d:2]:1]e", 10, [[1, "abe"], [2, "ace"], [10, "ade"]]),  # nesting
        ("[[a:b:2]:c:3]", 10, [[2, "a"], [3, "b"], [10, "c"]]),
        ("[(a:2):3]", 10, [[3, ""], [10, "(a:2)"]]),  # emphasis passes through verbatim
        ("(a:[b:c:2])", 10, [[2, "(a:b)"], [10, "(a:c)"]]),
        ("a [[[b]]:2]", 10, [[2, "a "], [10, "a [[b]]"]]),
        ("[a:b:2][c:d:4]", 10, [[2, "ac"], [4, "bc"], [10, "bd"]]),
        ("[a BREAK b:c:5]", 10, [[5, "a BREAK b"], [10, "c"]]),
        # alternation: every step is a switch point, option (t-1) mod n
        ("[a|b]", 4, [[1, "a"], [2, "b"], [3, "a"], [4, "b"]]),
        ("[a|b|c]", 4, [[1, "a"], [2, "b"], [3, "c"], [4, "a"]]),
        ("[fe|]male", 3, [[1, "female"], [2, "male"], [3, "female"]]),
        ("[fe|||]male", 5, [[1, "female"], [2, "male"], [3, "male"], [4, "male"], [5, "female"]]),
        ("[a|(b:1.1)]", 2, [[1, "a"], [2, "(b:1.1)"]]),
        ("[[a|b]:c:2]", 4, [[1, "a"], [2, "b"], [3, "c"], [4, "c"]]),
        ("[a:b:3] x", 4, [[3, "a x"], [4, "b x"]]),
        # stray brackets and colons at the top level are text; editing elsewhere still works
        ("((a][:b:c [d:3]", 10, [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
        ("[a:b:c:3] [x:y:2]", 10, [[2, "[a:b:c:3] x"], [10, "[a:b:c:3] y"]]),
        ("[a:b:3] [c", 10, [[3, "a [c"], [10, "b [c"]]),
        ("x [a:b:3", 10, [[10, "x [a:b:3"]]),
        ("[a:b:c]", 10, [[10, "[a:b:c]"]]),  # no number: not an edit
        ("[a:b:1 2]", 10, [[10, "[a:b:1 2]"]]),
        ("[a:1e]", 10, [[10, "[a:1e]"]]),
        (r"a \| [b:c:3]", 10, [[3, r"a \| b"], [10, r"a \| c"]]),  # an escaped bar is text
        (r"[\]:3]", 10, [[3, ""], [10, r"\]"]]),
        # where the reference's parser is ambiguous (and its choice varies between processes), the edit wins
        ("[a:b:3]]", 10, [[3, "a]"], [10, "b]"]]),
        ("[a:2]:", 10, [[2, ":"], [10, "a:"]]),
        ("[a:0.5](", 10, [[5, "("], [10, "a("]]),
    ],
)
def test_schedules(prompt: str, steps: int, expected: list[list[int | str]]) -> None:
    assert schedule(prompt, steps) == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "a | b [c:d:3]",  # a bar outside any alternation
        "(a|b) [c:d:3]",
        "[a|b:c:2]",  # a bar inside an edit
        "[c:d:3] a\\",  # a backslash at the end
        "[c:d:3] a\\\nb",  # a backslash before a newline
    ],
)
def test_a_prompt_the_grammar_rejects_is_used_unchanged_at_every_step(prompt: str) -> None:
    assert parse_schedule(prompt) is None
    assert schedule(prompt) == [[10, prompt]]


def test_hires_timelines_offset_the_first_pass() -> None:
    assert schedule("a [b:.5] c", 10, hires=10) == [[10, "a b c"]]  # fractions 1.0…2.0 map onto the second pass
    assert schedule("a [b:1.5] c", 10, hires=10) == [[5, "a  c"], [10, "a b c"]]
    assert schedule("[a:b:15]", 10, hires=20) == [[5, "a"], [20, "b"]]  # absolute: counted from the first pass
    assert schedule("[a:b:8]", 10, hires=20) == [[20, "b"]]  # before the second pass: `to` throughout


def test_old_timelines() -> None:
    assert schedule("[a:b:0.5]", 10, old=True) == [[5, "a"], [10, "b"]]  # < 1: a fraction
    assert schedule("[a:b:1.5]", 10, old=True) == [[1, "a"], [10, "b"]]  # ≥ 1: absolute, truncated
    assert schedule("[a:b:1.5]", 10) == [[10, "a"]]  # the new reading: 1.5·N, capped
    assert schedule("[a:b:0.5]", 10, hires=20, old=True) == [[5, "a"], [10, "b"]]  # old: no hires offsets


def test_an_infinite_step_raises_as_in_the_reference() -> None:
    with pytest.raises(OverflowError):
        schedule("[a:b:1e999]")
    with pytest.raises(OverflowError):
        schedule("[a:b:-1.5e999]")


def test_each_prompt_gets_its_schedule() -> None:
    got = get_learned_conditioning_prompt_schedules(["[a:b:1]", "c", "[a:b:1]"], 2)
    assert got == [[[1, "a"], [2, "b"]], [[2, "c"]], [[1, "a"], [2, "b"]]]
