"""Emphasis (docs/engine.md, "Prompt language", "Emphasis"): every rule of the reference, expected values by hand."""

from __future__ import annotations

import pytest

from shared.prompts import WeightError, parse_prompt_attention

UP = 1.1
DOWN = 1 / 1.1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [["", 1.0]]),
        ("a cat", [["a cat", 1.0]]),
        ("a (b) c", [["a ", 1.0], ["b", UP], [" c", 1.0]]),
        ("[x]", [["x", DOWN]]),
        ("(x:1.3)", [["x", 1.3]]),
        ("(x: 1.3 )", [["x", 1.3]]),  # spaces around the number
        ("(x:-1)", [["x", -1.0]]),  # negative weights pass
        ("(x:0)", [["x", 0.0]]),
        ("((x))", [["x", 1.2100000000000002]]),  # multiplicative, in float
        ("[(x:1.5)]", [["x", 1.5 * DOWN]]),  # inner weight first, then the square bracket
        ("((a) b)", [["a", UP * UP], [" b", UP]]),
        # escapes keep the character; any other backslash is dropped
        (r"\(a\)", [["(a)", 1.0]]),
        (r"\[a\]", [["[a]", 1.0]]),
        (r"a\\b", [["a\\b", 1.0]]),
        (r"a\xb", [["axb", 1.0]]),
        (r"(a\)b)", [["a)b", UP]]),
        # unclosed brackets weigh everything after them; unmatched closers and stray colons are text
        ("(a:1.2", [["a:1.2", UP]]),
        ("x [b", [["x ", 1.0], ["b", DOWN]]),
        ("a) b] :c", [["a) b] :c", 1.0]]),
        ("a:1.2)", [["a:1.2)", 1.0]]),  # a weight closing no bracket is text
        ("(x:1e2)", [["x:1e2", UP]]),  # not a weight: the text at ×1.1
        # equal neighbours merge before tokenisation
        ("(red)(dish)", [["reddish", UP]]),
        ("(a)(b:1.1)", [["ab", UP]]),  # 1.1 == 1.1 exactly
        ("(a)(b:1.10000001)", [["a", UP], ["b", 1.10000001]]),
        # BREAK
        ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
        ("BREAK a", [["", 1.0], ["BREAK", -1], ["a", 1.0]]),
        ("a BREAK", [["a", 1.0], ["BREAK", -1], ["", 1.0]]),
        ("a\nBREAK\tb", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
        ("(a BREAK b)", [["a", UP], ["BREAK", -1 * UP], ["b", UP]]),  # weighted BREAK: becomes text later
        ("BREAKS ABREAK break", [["BREAKS ABREAK break", 1.0]]),  # whole upper-case word only
    ],
)
def test_parse_prompt_attention(text: str, expected: list[list[str | float]]) -> None:
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize("text", ["(x:1..2)", "(x:.)", "(x:-.)", "(a (x:1.2.3))", "(x: .. )"])
def test_a_weight_float_rejects_raises_where_the_reference_crashes(text: str) -> None:
    with pytest.raises(WeightError):
        parse_prompt_attention(text)


@pytest.mark.parametrize("text", ["x:1..2)", "(x:1..2", "[x:1..2]"])
def test_a_malformed_weight_outside_an_open_round_bracket_is_text(text: str) -> None:
    joined = "".join(str(segment) for segment, _ in parse_prompt_attention(text))
    assert joined == text.replace("(", "").replace("[", "").replace("]", "")
