"""The request hash: what create-or-get compares to tell "the same request again" from "a different one".

`request_hash(job)` is the sha256 of `canonical_json(job)`, which has every default filled in, so a request that
omits a default hashes the same as one that sends it. Rows already stored keep their hash, so these bytes must
never change for a given request (tests/unit/test_job_hashing.py pins them).
"""

from __future__ import annotations

import hashlib
import json

from shared.job.spec import Img2ImgJob

__all__ = ["FIELDS_ADDED_LATER", "canonical_json", "request_hash"]

# Fields added to the job since hashes were first stored, with their defaults. At its default such a field is left
# out of the canonical JSON, so that a request that does not use it keeps the hash it had before the field existed.
FIELDS_ADDED_LATER: dict[str, object] = {
    "tiling": False,
    "s_min_uncond": None,
    "s_churn": None,
    "s_tmin": None,
    "s_tmax": None,
    "s_noise": None,
}


def canonical_json(job: Img2ImgJob) -> bytes:
    """The request as canonical UTF-8 JSON: every field with its default, sorted keys, no spaces.

    It is the stored request (`job.to_request_json()`, which leaves the task id out: the id is the key the hash is
    compared under). Spellings that mean the same render are made one: `mask_blur` is left out (its effect is
    already in mask_blur_x/_y), and the sampler and schedule are written as the resolved label and schedule id
    ("DPM++ 2M Karras" = "DPM++ 2M" + scheduler "karras"). Fields added since hashes were first stored are left out
    at their defaults (`FIELDS_ADDED_LATER`), so that the hash of an older request does not change.
    """
    data = job.to_request_json()
    del data["mask_blur"]
    for name, default in FIELDS_ADDED_LATER.items():
        if data[name] == default:
            del data[name]
    data["sampler_name"] = job.sampler.name
    data["scheduler"] = job.schedule.name
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def request_hash(job: Img2ImgJob) -> str:
    """sha256 hex of `canonical_json(job)`: equal for requests that mean the same job."""
    return hashlib.sha256(canonical_json(job)).hexdigest()
