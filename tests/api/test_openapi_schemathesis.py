"""The OpenAPI document tells the truth (issue 15, finding 9): schemathesis generates requests from `/openapi.json`
for every operation and checks each answer against the document: no 5xx, only documented statuses, documented
content types, bodies that match the documented schemas (the farm's `{error: ...}` body for every 4xx).

It runs against the real app in-process (ASGI: `schemathesis.openapi.from_asgi`), authenticated as a tenant, with a
small example budget per operation so it fits CI. A larger budget is one command (docs/reliability.md "API
contract"):

    RENDERFARM_SCHEMATHESIS_EXAMPLES=1000 ./dev.sh test tests/api/test_openapi_schemathesis.py
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.job.spec import MAX_PROMPT_LENGTH
from tests.api.conftest import ALICE, Farm, png_bytes

EXAMPLES = int(os.environ.get("RENDERFARM_SCHEMATHESIS_EXAMPLES", "20"))  # per operation and mode
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# The webui's txt2img route answers its documented 501 (the farm renders img2img only): a "server error" by
# status, by design.
DOCUMENTED_5XX = {("POST", "/sdapi/v1/txt2img")}


@pytest.fixture
def farm_kind() -> str:
    return "embedded"  # the routes are the same in both modes; the in-process farm is the quick one


def _check_operation(operation: Any, mode: GenerationMode) -> None:
    key = (operation.method.upper(), operation.path)
    checks = [check for check in CHECKS if not (check is not_a_server_error and key in DOCUMENTED_5XX)]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers=ALICE, checks=checks)

    run()


def test_every_operation_answers_as_documented(farm: Farm) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", farm.app)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        operations += 1
        # Requests that fit the document, and requests that do not (their answers must be the farm's errors).
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _check_operation(operation, mode)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.path  # an operation without input: none invalid
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    assert operations > 10
    assert not failures, "\n\n".join(failures)


def _concrete(path: str) -> str:
    """A path template with a well-formed value in each parameter."""
    values = {"task_id": "t-1", "asset_id": "a" * 64, "batch_id": "00000000-0000-4000-8000-000000000000", "key": "k"}
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def test_a_wrong_method_answers_405_with_every_method_of_the_path(farm: Farm) -> None:
    document = farm.client.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        documented = {method.upper() for method in operations}
        wrong = next(m for m in ("PATCH", "DELETE", "PUT", "POST") if m not in documented)
        response = farm.client.request(wrong, _concrete(path), headers=ALICE)
        assert response.status_code == 405, (wrong, path)
        assert set(response.headers["Allow"].split(", ")) == documented, (wrong, path)
        assert response.json()["error"]["code"] == "method_not_allowed"


def test_the_document_describes_the_farms_errors_and_ids(farm: Farm) -> None:
    document = farm.client.get("/openapi.json").json()
    assert "HTTPValidationError" not in str(document)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            errors = {status: answer for status, answer in operation["responses"].items() if int(status) >= 400}
            assert "500" in errors, (method, path)
            for status, answer in errors.items():
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    [task_id] = [p for p in document["paths"]["/v1/jobs/{task_id}"]["get"]["parameters"] if p["name"] == "task_id"]
    pattern = re.compile(task_id["schema"]["pattern"])
    for good in ("job-1", "task(img2img-ABC1234)", "a.b", "x" * 128):
        assert pattern.search(good), good
    for bad in ("", ".", "..", "tâche", "a/b", "x" * 129):
        assert not pattern.search(bad), bad
        # ... and the route refuses what the document excludes.
        if bad not in ("", ".", "..", "a/b"):  # those change the path itself
            assert farm.client.get(f"/v1/jobs/{bad}", headers=ALICE).status_code == 422, bad


def test_the_document_states_the_limits_the_routes_enforce(farm: Farm) -> None:
    schemas = farm.client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["Img2ImgJob"]["properties"]["init_images"]["minItems"] == 1
    webui = schemas["Img2ImgRequest"]["properties"]
    assert webui["prompt"]["maxLength"] == MAX_PROMPT_LENGTH
    assert [b.get("minItems") for b in webui["init_images"]["anyOf"] if b.get("type") == "array"] == [1]
    # ... which the routes do enforce.
    empty = farm.client.put("/v1/jobs/t-empty", json={"init_images": [], "prompt": "x"}, headers=ALICE)
    assert (empty.status_code, empty.json()["error"]["field"]) == (422, "init_images")
    webui_body = {"init_images": [base64.b64encode(png_bytes()).decode()], "prompt": "x" * (MAX_PROMPT_LENGTH + 1)}
    long = farm.client.post("/sdapi/v1/img2img", json=webui_body, headers=ALICE)
    assert (long.status_code, long.json()["error"]["field"]) == (422, "prompt")
