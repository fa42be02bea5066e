"""Field problems: how a validator says what is wrong, and how pydantic's errors become the farm's `FieldProblem`s.

A validator raises `problem(code, message)`; the code is stable (what a client switches on) and the message names
what is allowed. A check of several fields at once raises `several([...])`, so every problem is reported, not only
the first. `field_problems` turns one pydantic error (ours or pydantic's own) into FieldProblems with a dotted field
path; `headline_first` decides which error type the whole list makes (an inline image over the limit makes it a
413, and that problem goes first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import annotated_types
from pydantic_core import PydanticCustomError

from shared.errors import FieldProblem, InputError, PayloadTooLarge

__all__ = ["Loc", "field_problems", "headline_first", "problem", "several"]

Loc = tuple[int | str, ...]  # where in the body: ("override_settings", "sd_vae"), ("init_images", 0)

_SEVERAL = "several"  # the error type of `several`

_CODE_BY_TYPE: dict[str, str] = {
    "missing": "missing",
    "extra_forbidden": "unknown_field",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
    "literal_error": "invalid_choice",
    "enum": "invalid_choice",
    "too_long": "too_many",
    "too_short": "too_few",
    "string_too_long": "invalid_length",
    "string_too_short": "invalid_length",
}

_KIND_BY_TYPE_PREFIX: dict[str, str] = {
    "int": "an integer",
    "float": "a number",
    "finite_number": "a finite number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "an object",
    "typed_dict": "an object",
    "model": "an object",
}


def problem(code: str, message: str, **extra: Any) -> PydanticCustomError:
    """The error a validator raises for one field: `code` becomes the FieldProblem's code, `message` its text."""
    # The message goes through the context, so braces in it are never taken for format fields.
    return PydanticCustomError(code, "{message}", {"message": message, **extra})


def several(problems: Sequence[tuple[str, str, str]]) -> PydanticCustomError:
    """One error for several problems found together, each `(field, code, message)`. pydantic reports one error per
    validator, so a validator that checks several fields collects them and raises this."""
    return PydanticCustomError(_SEVERAL, "{message}", {"message": problems[0][2], "problems": list(problems)})


def _path(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def field_problems(
    error: Any,
    *,
    metadata_at: Callable[[Loc], Sequence[Any]],
    unknown_field: Callable[[Loc], tuple[str, str]],
) -> list[FieldProblem]:
    """The FieldProblems of one pydantic error (an item of `ValidationError.errors()`).

    `metadata_at(loc)` gives the annotated_types constraints of the field at `loc` (to say "from 1 to 150");
    `unknown_field(loc)` gives `(message, code)` for a field the model does not have.
    """
    error_type: str = error["type"]
    loc: Loc = tuple(error["loc"])
    ctx: dict[str, Any] = error.get("ctx") or {}
    if error_type == _SEVERAL:
        return [FieldProblem(field, message, code) for field, code, message in ctx["problems"]]
    field = _path(loc)
    if "message" in ctx:  # one of ours: the type is already the stable code
        return [FieldProblem(field, ctx["message"], error_type)]
    code = _CODE_BY_TYPE.get(error_type)
    bounds = _bounds_text(metadata_at(loc))
    given = _shown(error.get("input"))
    if error_type == "extra_forbidden":
        message, code = unknown_field(loc)
        return [FieldProblem(field, message, code)]
    if error_type == "missing":
        return [FieldProblem(field, "is required", "missing")]
    if code == "out_of_range":
        return [FieldProblem(field, f"must be {bounds or 'in range'} (got {given})", code)]
    if code is not None:
        return [FieldProblem(field, f"{error['msg']} (got {given})", code)]
    kind = next((k for prefix, k in _KIND_BY_TYPE_PREFIX.items() if error_type.startswith(prefix)), None)
    if kind is not None or error_type == "int_from_float":
        kind = "a whole number" if error_type == "int_from_float" else kind
        return [FieldProblem(field, f"must be {kind}{' ' + bounds if bounds else ''} (got {given})", "invalid_type")]
    return [FieldProblem(field, f"{error['msg']} (got {given})", "invalid")]


def headline_first(problems: Sequence[FieldProblem]) -> tuple[type[InputError], list[FieldProblem]]:
    """The error type a list of problems makes and the problems in the order to report them: an inline image over
    the limit makes it PayloadTooLarge (413) and is the headline; anything else is InputError (422)."""
    too_large = [p for p in problems if p.code == "too_large"]
    if too_large:
        return PayloadTooLarge, too_large + [p for p in problems if p.code != "too_large"]
    return InputError, list(problems)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _bounds_text(metadata: Sequence[Any]) -> str:
    """'from 1 to 150', 'at least 0', 'at most 1000', or '' for a field with these constraints."""
    low = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)
    if low is not None and high is not None:
        return f"from {low} to {high}"
    if low is not None:
        return f"at least {low}"
    if high is not None:
        return f"at most {high}"
    return ""
