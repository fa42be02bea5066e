"""The request hash must never change for a given request: it decides create-or-get for rows already stored.

The digests below were computed by the code before the task id left the stored request (when hashing deleted
`force_task_id` from a dump that had it); leaving the id out of the dump must give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from shared.job.hashing import FIELDS_ADDED_LATER, canonical_json, request_hash
from shared.job.spec import Img2ImgJob, SpecLimits, parse_job

FIXED_REQUEST: dict[str, Any] = {
    "init_images": ["asset:" + "ab" * 32],
    "mask": "asset:" + "cd" * 32,
    "prompt": "a red fox ☕",
    "negative_prompt": "blur",
    "seed": 1234,
    "steps": 20,
    "denoising_strength": 0.6,
    "sampler_name": "DPM++ 2M Karras",
    "mask_blur": 6,
    "width": 768,
    "height": 512,
    "override_settings": {"CLIP_stop_at_last_layers": 2},
    "tags": ["x"],
    "priority": 3,
    "force_task_id": "task(img2img-ABC1234)",
}
MINIMAL_REQUEST: dict[str, Any] = {"init_images": ["asset:" + "ab" * 32]}

# sha256 of the canonical JSON, as stored in rows admitted before this change.
PINNED = [
    (FIXED_REQUEST, "715df5cf9c36504365184e3af78aaa4e351ecc35f2fc2e9d78716829bf4d8d59"),
    (MINIMAL_REQUEST, "bb9a0b45db5662319e0a27c8dbb83c3cefe722597fb6066f0acbdd933030f714"),
]


def _hash_as_before(job: Img2ImgJob) -> str:
    """The hash as it was computed when the dump carried the task id and hashing deleted it again."""
    data = job.model_dump(mode="json")
    del data["force_task_id"], data["mask_blur"]
    for name, default in FIELDS_ADDED_LATER.items():
        if data[name] == default:
            del data[name]  # the field did not exist then; a job that leaves it at its default is one of those
    data["sampler_name"] = job.sampler.name
    data["scheduler"] = job.schedule.name
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(("body", "digest"), PINNED)
def test_the_hash_of_a_fixed_request_is_pinned(body: dict[str, Any], digest: str) -> None:
    assert request_hash(parse_job(body, SpecLimits())) == digest


@pytest.mark.parametrize("body", [FIXED_REQUEST, MINIMAL_REQUEST, {**FIXED_REQUEST, "force_task_id": None}])
def test_the_hash_is_the_one_computed_with_the_id_deleted(body: dict[str, Any]) -> None:
    job = parse_job(body, SpecLimits())
    assert request_hash(job) == _hash_as_before(job)


def test_the_hash_is_over_the_stored_request() -> None:
    job = parse_job(FIXED_REQUEST, SpecLimits())
    stored = job.to_request_json()
    assert "force_task_id" not in stored
    assert request_hash(Img2ImgJob.from_request_json(stored)) == request_hash(job)
    assert b"force_task_id" not in canonical_json(job)


def test_sampler_noise_fields_change_the_hash_only_when_set() -> None:
    plain = request_hash(parse_job(FIXED_REQUEST, SpecLimits()))
    churned = request_hash(parse_job({**FIXED_REQUEST, "s_churn": 0.5}, SpecLimits()))
    assert churned != plain
    assert request_hash(parse_job({**FIXED_REQUEST, "s_churn": None}, SpecLimits())) == plain
