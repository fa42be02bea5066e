"""The OpenAPI document tells the truth (issue 15, finding 9): schemathesis generates requests from `/openapi.json`
for every operation and checks each answer against the document: no 5xx, only documented statuses, documented
content types, bodies that match the documented schemas (the farm's `{error: ...}` body for every 4xx).

It runs against the real app in-process (ASGI: `schemathesis.openapi.from_asgi`), authenticated as a tenant, with a
small example budget per operation so it fits CI. A larger budget is one command (docs/reliability.md "API
contract"):

    RENDERFARM_SCHEMATHESIS_EXAMPLES=1000 ./dev.sh test tests/api/test_openapi_schemathesis.py
"""

from __future__ import annotations

import os
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

from tests.api.conftest import ALICE, Farm

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
