"""What the farm refuses (422 naming the field) or warns about in prompts (docs/engine.md, "Prompt language",
"Deliberate differences")."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import InputError
from shared.job.spec import SpecLimits, parse_job
from shared.prompts import prompt_problems, prompt_warnings

LIMITS = SpecLimits(max_image_pixels=4096 * 4096, max_inline_image_bytes=1024, max_batch_size=16, max_n_iter=64)
BASE: dict[str, Any] = {"init_images": ["asset:" + "0123456789abcdef" * 4]}


@pytest.mark.parametrize(
    "prompt",
    [
        "(x:1..2)",  # P2: float() rejects the weight
        "a, (x: 1.2.3 )",
        "[a:(x:1..2):5]",  # in a branch of an edit, whatever the step count
        "[a|b|(x:..)]",  # in an alternative
        "a AND (x:1..2):2",  # in an AND part
        "[a:b:1e999]",  # P2: an edit step too large to be a number (OverflowError in the reference)
        "[a:[b:c:-1e400]:2]",
    ],
)
def test_p2_prompts_the_reference_crashes_on_are_refused(prompt: str) -> None:
    for field in ("prompt", "negative_prompt"):
        (problem,) = prompt_problems(field, prompt)
        assert (problem.field, problem.code) == (field, "invalid_prompt")


@pytest.mark.parametrize(
    "prompt",
    [
        "x:1..2)",  # no open bracket: text
        "(x:1..2",  # unclosed: text
        "(x:1e2)",  # text at ×1.1
        "(x:1.5) [a:b:0.5] [c|d] AND e:2",
        "a | (x:1..2",
        "[a:b:1e300]",
    ],
)
def test_prompts_the_reference_renders_are_accepted(prompt: str) -> None:
    assert prompt_problems("prompt", prompt) == []


def test_a_malformed_weight_in_a_prompt_the_grammar_rejects_is_still_found() -> None:
    (problem,) = prompt_problems("prompt", "a | (x:1..2)")
    assert problem.code == "invalid_prompt"


HYPERNET_MESSAGE = "hypernetworks (<hypernet:…>) are not supported: diffusers has no equivalent; use a LoRA"


@pytest.mark.parametrize(
    ("prompt", "messages"),
    [
        ("a <lora:x:1>", []),  # unknown names are the scheduler's check (it knows the model files)
        ("<lyco:y:0.5:te=1>", []),
        ("<lora:a> <lora:b>", []),
        ("<lora:x:abc>", [("invalid_lora_tag", "<lora:x:abc>: the text-encoder multiplier 'abc' is not a number")]),
        ("<hypernet:h:1>", [("unsupported", HYPERNET_MESSAGE)]),
        (
            "<lora:a:z> <hypernet:h>",
            [
                ("invalid_lora_tag", "<lora:a:z>: the text-encoder multiplier 'z' is not a number"),
                ("unsupported", HYPERNET_MESSAGE),
            ],
        ),
        ("<lora:>", []),  # not a tag: ARGS needs a character
        ("<other:thing>", []),  # unknown types are removed and warned about
    ],
)
def test_extra_network_tags_in_the_positive_prompt(prompt: str, messages: list[tuple[str, str]]) -> None:
    problems = prompt_problems("prompt", prompt)
    assert [(p.field, p.code, p.message) for p in problems] == [("prompt", code, m) for code, m in messages]


def test_p9_tags_in_the_negative_prompt_are_accepted_with_a_warning() -> None:
    assert prompt_problems("negative_prompt", "<lora:x:1>") == []
    (warning,) = prompt_warnings("a cat", "blurry <lora:x:1>")
    assert (warning["code"], warning["field"]) == ("extra_network_in_negative", "negative_prompt")
    assert "<lora:x:1>" in warning["message"]


def codes(prompt: str, negative: str = "") -> list[str]:
    return [w["code"] for w in prompt_warnings(prompt, negative)]


def test_p3_a_stray_bar_that_disables_editing_is_warned() -> None:
    assert codes("a | [b:c:3]") == ["prompt_editing_ignored"]
    assert codes("", "a | [b:c:3]") == ["prompt_editing_ignored"]
    assert codes("[b:c:3] x\\") == ["prompt_editing_ignored"]
    assert codes("a AND b | [c:d:2]") == ["prompt_editing_ignored"]
    assert codes("a | b") == []  # nothing to disable
    assert codes(r"a \| [b:c:3]") == []
    assert codes("[a|b] [c:d:3]") == []


def test_p3_a_trailing_number_read_as_a_weight_is_warned() -> None:
    (warning,) = prompt_warnings("1girl, score:9", "")
    assert warning["code"] == "prompt_weight_from_suffix"
    assert "':9'" in warning["message"]
    assert codes("a AND b:2") == []  # with AND the weight is meant
    assert codes("score:9,") == []
    assert codes("", "score:9") == []  # negatives have no weights


def test_unknown_extra_network_types_are_warned() -> None:
    assert codes("a <foo:bar>") == ["extra_network_unknown"]


def test_no_warnings_for_ordinary_prompts() -> None:
    assert prompt_warnings("a (red:1.2) [cat:dog:0.5], BREAK [x|y]", "blurry, (ugly)") == []


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("prompt", "(x:1..2)", "invalid_prompt"),
        ("negative_prompt", "(x:1..2)", "invalid_prompt"),
        ("prompt", "<lora:x:1:dyn=a>", "invalid_lora_tag"),
        ("styles", ["s"], "unsupported"),  # still refused
    ],
)
def test_the_job_refuses_naming_the_field(field: str, value: Any, code: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_job({**BASE, field: value}, LIMITS)
    assert [(p.field, p.code) for p in caught.value.problems] == [(field, code)]


def test_the_job_accepts_tags_in_the_negative_prompt() -> None:
    assert parse_job({**BASE, "negative_prompt": "<lora:x:1>"}, LIMITS).negative_prompt == "<lora:x:1>"
