"""The prompt language at the native API (docs/engine.md, "Prompt language", "Deliberate differences"): prompts the
reference crashes on and extra-network tags are 422s naming the field; silent reference behaviours are warnings in
the job's status."""

from __future__ import annotations

import base64

import pytest

from tests.api.conftest import ALICE, Farm, job_body, put_job

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"prompt": "(x:1..2)"}, "prompt", "invalid_prompt"),
        ({"negative_prompt": "[a:(x:1..2):3]"}, "negative_prompt", "invalid_prompt"),
        ({"prompt": "a <lora:x:abc>"}, "prompt", "invalid_lora_tag"),
        ({"prompt": "a <hypernet:x:1>"}, "prompt", "unsupported"),
        ({"styles": ["cinematic"]}, "styles", "unsupported"),
    ],
)
def test_refused_prompts_are_422_naming_the_field(
    farm: Farm, image_png: bytes, change: dict[str, object], field: str, code: str
) -> None:
    response = put_job(farm, "prompt-bad", {**job_body(b64(image_png)), **change})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["field"], error["code"]) == (field, code)
    if "lora" in str(change):
        assert error["details"][0]["message"] == "<lora:x:abc>: the text-encoder multiplier 'abc' is not a number"


def test_prompt_warnings_are_in_the_job_status(farm: Farm, image_png: bytes) -> None:
    body = job_body(b64(image_png), prompt="a | [red:blue:0.5] square", negative_prompt="blurry <lora:x:1>")
    response = put_job(farm, "prompt-warned", body)
    assert response.status_code == 201, response.text
    codes = {(w["code"], w.get("field")) for w in response.json()["warnings"]}
    assert codes == {("prompt_editing_ignored", "prompt"), ("extra_network_in_negative", "negative_prompt")}
    status = farm.client.get("/v1/jobs/prompt-warned", headers=ALICE)
    assert status.json()["warnings"] == response.json()["warnings"]


def test_an_ordinary_prompt_has_no_warnings(farm: Farm, image_png: bytes) -> None:
    body = job_body(b64(image_png), prompt="a (red:1.2) [square:circle:0.5] AND blue:0.5", negative_prompt="[x|y]")
    response = put_job(farm, "prompt-fine", body)
    assert response.status_code == 201, response.text
    assert response.json()["warnings"] == []
