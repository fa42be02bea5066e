from __future__ import annotations

from shared.errors import (
    Conflict,
    FieldProblem,
    InputError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StorageUnavailable,
    TransientError,
)


def test_error_body_names_the_field() -> None:
    error = InputError("steps must be 1..150", code="out_of_range", field="steps")
    assert error.http_status == 422
    assert error.to_body() == {
        "error": {
            "type": "invalid_request",
            "code": "out_of_range",
            "message": "steps must be 1..150",
            "field": "steps",
            "details": [{"field": "steps", "code": "out_of_range", "message": "steps must be 1..150"}],
        }
    }


def test_several_problems_lead_with_the_first() -> None:
    error = InputError.from_problems(
        [FieldProblem("width", "must be a multiple of 8", "not_multiple_of_8"), FieldProblem("steps", "too many")]
    )
    assert error.field == "width"
    assert error.code == "not_multiple_of_8"
    assert "and 1 more" in error.message
    assert [d["field"] for d in error.to_body()["error"]["details"]] == ["width", "steps"]


def test_status_codes_and_retry_after() -> None:
    assert PayloadTooLarge("too big", field="init_images.0").http_status == 413
    assert isinstance(PayloadTooLarge("x"), InputError)
    assert NotFound("no such job").http_status == 404
    assert Conflict("other request").http_status == 409
    limited = RateLimited("slow down", retry_after_s=2.5)
    assert limited.http_status == 429
    assert limited.to_body()["error"]["retry_after_s"] == 2.5


def test_transient_errors_are_apart_from_input_errors() -> None:
    assert issubclass(StorageUnavailable, TransientError)
    assert not issubclass(StorageUnavailable, InputError)
    assert StorageUnavailable("s3 down").code == "storage_unavailable"
