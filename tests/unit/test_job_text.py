"""Strings a job may not carry (NUL, unpaired surrogates), found anywhere in a body and named by their path."""

from __future__ import annotations

import json

from shared.job.text import INVALID_TEXT_CODE, text_problems


def fields(body: object) -> list[str]:
    found = list(text_problems(body))
    assert all(code == INVALID_TEXT_CODE for _, code, _ in found)
    return [field for field, _, _ in found]


def test_clean_text_passes_whatever_its_script() -> None:
    assert fields({"prompt": "ein Fuchs 🦊, 猫, (word:1.3)", "tags": ["a", "b"], "n": 3, "x": None}) == []
    # A surrogate *pair* escaped in JSON decodes to one character (here 🦊): fine.
    assert fields(json.loads('{"prompt": "\\ud83e\\udd8a"}')) == []


def test_every_bad_string_is_named_by_its_path() -> None:
    body = {
        "prompt": "a\x00b",
        "tags": ["fine", "lone \ud800"],
        "override_settings": {"sd_vae": ["nested", {"deep": "\udfff"}]},
    }
    assert fields(body) == ["prompt", "tags.1", "override_settings.sd_vae.1.deep"]


def test_a_bad_field_name_is_named_by_its_mapping() -> None:
    assert fields({"override_settings": {"bad\x00key": 1}}) == ["override_settings"]
    assert fields({"\ud800": 1}) == ["body"]


def test_json_escapes_that_decode_to_a_lone_surrogate_are_caught() -> None:
    # What a client sends as JSON: the escape is valid JSON, the decoded string is not encodable as UTF-8.
    assert fields(json.loads('{"negative_prompt": "x\\ud83d"}')) == ["negative_prompt"]
    assert fields(json.loads('{"prompt": "x\\u0000"}')) == ["prompt"]
