"""Text a job may carry: no NUL characters and no unpaired surrogates, in any string of the request.

PostgreSQL refuses a NUL in text and JSON columns, and an unpaired surrogate (which JSON's `\\ud800` escapes can
produce) cannot be encoded as UTF-8, so the request hash fails on it. Both reached the database or the hash as a 500
before; they are refused at the edge instead, naming the field, before any other work is done.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

INVALID_TEXT_CODE = "invalid_text"


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain a NUL character (\\u0000)"
    if text.isascii():  # most text, and all base64 image data: no surrogate, and no copy made to find out
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text: it has an unpaired surrogate (a lone \\ud800-\\udfff escape)"
    return None


def text_problems(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str, str]]:
    """`(field, code, message)` for every string in a request body (keys included) that a job may not carry.

    `field` is the dotted path of the value (`prompt`, `tags.1`, `override_settings.sd_vae`); for a bad key, the
    path of the mapping it is a key of.
    """
    if isinstance(value, str):
        message = _text_problem(value)
        if message is not None:
            yield ".".join(path) or "body", INVALID_TEXT_CODE, message
    elif isinstance(value, Mapping):
        for key, item in value.items():
            key_text = str(key)
            key_message = _text_problem(key_text)
            if key_message is not None:
                yield ".".join(path) or "body", INVALID_TEXT_CODE, f"has a field name that {key_message}"
                continue
            yield from text_problems(item, (*path, key_text))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from text_problems(item, (*path, str(index)))
