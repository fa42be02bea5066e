"""AND and the `:weight` suffix (docs/engine.md, "Prompt language", "AND")."""

from __future__ import annotations

import pytest

from shared.prompts import get_multicond_prompt_list


@pytest.mark.parametrize(
    ("prompt", "parts"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a AND b", [("a", 1.0), (" b", 1.0)]),  # trailing spaces go, leading spaces stay
        ("a:2 AND b :  -.5 ", [("a", 2.0), (" b", -0.5)]),
        ("1girl, score:9", [("1girl, score", 9.0)]),  # also without AND
        ("a:1.2.3", [("a:1.2.3", 1.0)]),  # not a number: no weight
        ("a:5.", [("a", 5.0)]),
        ("a:1e2", [("a:1e2", 1.0)]),
        ("x AND", [("x", 1.0), ("", 1.0)]),
        ("ANDROID and BRAND", [("ANDROID and BRAND", 1.0)]),  # the upper-case whole word only
        ("a\nAND\nb", [("a", 1.0), ("\nb", 1.0)]),
    ],
)
def test_parts_and_weights(prompt: str, parts: list[tuple[str, float]]) -> None:
    indexes, flat, by_text = get_multicond_prompt_list([prompt])
    assert [(flat[index], weight) for index, weight in indexes[0]] == parts
    assert all(flat[by_text[text]] == text for text in flat)


def test_identical_parts_are_encoded_once() -> None:
    indexes, flat, by_text = get_multicond_prompt_list(["a", "a AND b", "a:2 AND  b"])
    assert flat == ["a", " b", "  b"]
    assert indexes == [[(0, 1.0)], [(0, 1.0), (1, 1.0)], [(0, 2.0), (2, 1.0)]]
    assert by_text == {"a": 0, " b": 1, "  b": 2}
