"""`<lora:…>` / `<lyco:…>` tag arguments (prompts-and-models.md §3.2) and the farm's refusals (P6, P8)."""

from __future__ import annotations

import pytest

from shared.prompts import prompt_problems, prompt_warnings
from shared.prompts.extra_networks import LoraTagError, lora_requests


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a <lora:x>", [("x", 1.0, 1.0, None)]),
        ("<lora:x:0.7>", [("x", 0.7, 0.7, None)]),  # unet defaults to the resolved te
        ("<lora:x:te=0.5>", [("x", 0.5, 0.5, None)]),
        ("<lora:x:0.2:0.9>", [("x", 0.2, 0.9, None)]),
        ("<lora:x:1:0:8>", [("x", 1.0, 0.0, 8)]),
        ("<lora:x:0.3:unet=0.6:dyn=4>", [("x", 0.3, 0.6, 4)]),
        ("<lora:x:0.3:0.4:te=1>", [("x", 1.0, 0.4, None)]),  # named te overrides the positional one
        ("<lora:x:te=2:te=3>", [("x", 3.0, 3.0, None)]),  # the last of a repeated named argument wins
        ("<lyco:a:0.5> b <lora:c>", [("a", 0.5, 0.5, None), ("c", 1.0, 1.0, None)]),  # one handler, prompt order
        ("<hypernet:h> <foo:x>", []),
    ],
)
def test_lora_arguments(prompt: str, expected: list[tuple[str, float, float, int | None]]) -> None:
    assert [(r.name, r.te, r.unet, r.dyn) for r in lora_requests(prompt)] == expected


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("<lora:x:abc>", "not a number"),
        ("<lora:x: >", "not a number"),
        ("<lora:x:nan>", "not a finite number"),
        ("<lora:te=1>", "first argument must be the network's name"),
        ("<lora::1>", "first argument must be the network's name"),
        ("<lora:x:1:1:1.5>", "dyn '1.5' is not a whole number"),
        ("<lora:x:dyn=-1>", "must not be negative"),
        ("<lora:x:1:1:1:1>", "too many arguments"),
        ("<lora:x:weight=1>", "unknown argument 'weight'"),
        ("<lora:x:0.5> <lyco:x:1>", "more than one tag"),  # P8
    ],
)
def test_malformed_or_duplicate_tags_are_refused(prompt: str, fragment: str) -> None:
    with pytest.raises(LoraTagError, match=fragment):
        lora_requests(prompt)
    (problem,) = prompt_problems("prompt", prompt)
    assert (problem.field, problem.code) == ("prompt", "invalid_lora_tag")
    assert fragment in problem.message


def test_well_formed_lora_tags_pass_the_prompt_checks() -> None:
    assert prompt_problems("prompt", "a cat <lora:x:0.5> <lyco:y:unet=1:dyn=2>") == []


def test_hypernetworks_stay_refused_with_the_reason() -> None:
    (problem,) = prompt_problems("prompt", "a <hypernet:h:1>")
    assert problem.code == "unsupported"
    assert "diffusers has no equivalent" in problem.message


def test_tags_in_the_negative_prompt_are_kept_and_warned() -> None:
    assert prompt_problems("negative_prompt", "<lora:x:abc> <lora:x>") == []  # text there: never parsed
    (warning,) = prompt_warnings("a cat", "blurry <lora:x:1>")
    assert warning["code"] == "extra_network_in_negative"


def test_a_named_first_item_is_no_name() -> None:
    with pytest.raises(LoraTagError, match="first argument"):
        lora_requests("<lora:a,b=c:1>")  # the reference would take "1" as the name


def test_the_infotext_label_drops_commas() -> None:
    (request,) = lora_requests("<lora:a,b:1>")
    assert (request.name, request.label) == ("a,b", "ab")
