"""The prompt limit in CLIP tokens at the door (issue 15, "Limits at the edge"): the farm's route and the webui's
refuse a prompt or negative prompt past `max_prompt_tokens` with a 422 naming the field, before a job exists;
the character limit alone let a prompt of 32,768 digits (as many tokens) through."""

from __future__ import annotations

import base64

import pytest

from shared.job.limits import DEFAULT_MAX_PROMPT_TOKENS
from shared.job.spec import MAX_PROMPT_LENGTH
from tests.api.conftest import ALICE, Farm, FarmFactory, job_body, png_bytes, put_job

pytestmark = pytest.mark.integration

# "cat," is two tokens ("cat" and ","): a prompt of exactly `n` tokens, far inside the character limit.
PER_CAT = 2


def prompt_of(tokens: int) -> str:
    assert tokens % PER_CAT == 0
    return " ".join(["cat,"] * (tokens // PER_CAT))


def image() -> str:
    return base64.b64encode(png_bytes()).decode()


def test_the_default_limit_is_forty_chunks_and_the_character_limit_does_not_hide_it() -> None:
    assert DEFAULT_MAX_PROMPT_TOKENS == 40 * 75
    assert len("7" * DEFAULT_MAX_PROMPT_TOKENS * 2) < MAX_PROMPT_LENGTH  # each digit is a token


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_prompt_past_the_token_limit_is_422_naming_the_field(farm: Farm, field: str) -> None:
    at_limit = put_job(farm, f"at-{field}", job_body(image(), **{field: prompt_of(DEFAULT_MAX_PROMPT_TOKENS)}))
    assert at_limit.status_code == 201, at_limit.text

    for task_id, text in (
        (f"over-{field}", prompt_of(DEFAULT_MAX_PROMPT_TOKENS + 2)),
        (f"digits-{field}", "7" * 4000),  # 4,000 characters, 4,000 tokens
    ):
        response = put_job(farm, task_id, job_body(image(), **{field: text}))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (error["field"], error["details"][0]["code"]) == (field, "invalid_length")
        assert f"{DEFAULT_MAX_PROMPT_TOKENS} CLIP tokens" in error["message"]
        with pytest.raises(Exception, match="no job"):
            farm.job_row("alice", task_id)


def test_the_limit_is_a_setting_and_counts_what_the_worker_encodes(make_farm: FarmFactory) -> None:
    farm = make_farm(max_prompt_tokens=6)
    # Extra-network tags are removed before encoding and emphasis markup is not text: 5 tokens.
    within = "(cat:1.2), [dog], bird <hypo:thing:1>"
    assert put_job(farm, "within", job_body(image(), prompt=within)).status_code == 201
    # In the negative prompt the tag is text (the worker encodes it): more than 6.
    response = put_job(farm, "tag-as-text", job_body(image(), negative_prompt=within))
    assert (response.status_code, response.json()["error"]["field"]) == (422, "negative_prompt")
    response = put_job(farm, "over", job_body(image(), prompt="one two three four five six seven"))
    assert (response.status_code, response.json()["error"]["field"]) == (422, "prompt")


@pytest.mark.timeout(60)  # an accepted job would keep the webui's call waiting for a worker
@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_the_webui_route_refuses_it_too(farm: Farm, field: str) -> None:
    body = {"init_images": [image()], field: prompt_of(DEFAULT_MAX_PROMPT_TOKENS + 2)}
    response = farm.client.post("/sdapi/v1/img2img", json=body, headers=ALICE)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_a_batch_item_past_the_limit_is_named(farm: Farm) -> None:
    body = {"jobs": [job_body(image()), job_body(image(), negative_prompt=prompt_of(DEFAULT_MAX_PROMPT_TOKENS + 2))]}
    response = farm.client.post("/v1/batches", json=body, headers=ALICE)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "jobs.1.negative_prompt"


def test_the_document_states_the_token_limit(farm: Farm) -> None:
    schemas = farm.client.get("/openapi.json").json()["components"]["schemas"]
    for schema in ("Img2ImgJob", "Img2ImgRequest"):
        for field in ("prompt", "negative_prompt"):
            described = str(schemas[schema]["properties"][field])
            assert "max_prompt_tokens" in described, (schema, field)
            assert str(DEFAULT_MAX_PROMPT_TOKENS) in described, (schema, field)
