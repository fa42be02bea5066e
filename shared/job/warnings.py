"""Admission warnings: what a job asked for that the farm accepts but does not do as the webui would.

The farm's rule is that nothing a client sends is silently rendered differently (docs/api.md "What the farm
honours, warns about, or refuses"): a field or setting the farm does not honour is either refused (422 naming it)
or named in the job's `warnings`. Warnings found when a job is admitted are stored with it (`NewJob.warnings`) and
shown wherever the job is (`GET /v1/jobs/{task_id}`, the A1111 answer's `info.warnings`); the worker appends its own
when it finishes.

A warning is a plain JSON object: `{"code": "snake_case", "message": "...", "field": "dotted.path"}`. `job_warnings`
holds the rules that concern the job contract itself (`shared.job.spec.Img2ImgJob`), so that both doors (`/v1` and
the A1111 API) give them; the A1111 door adds its own for its request fields (`scheduler/a1111/field_policy.py`).

Pure: no I/O, importable by the SDK.
"""

from __future__ import annotations

from typing import TypedDict

from shared.job.spec import Img2ImgJob

__all__ = ["JobWarning", "job_warnings", "warning"]


class JobWarning(TypedDict):
    code: str
    message: str
    field: str


def warning(code: str, field: str, message: str) -> JobWarning:
    """One warning about `field` (a dotted path, as the client spelled it)."""
    return {"code": code, "message": f"{field}: {message}", "field": field}


def job_warnings(job: Img2ImgJob) -> list[JobWarning]:
    """The warnings a job earns at admission from its own fields (the job contract's rules; see the module text)."""
    found: list[JobWarning] = []
    overrides = job.override_settings
    if "initial_noise_multiplier" in overrides:
        # The webui resolves the noise multiplier before it applies overrides, so this override never has an
        # effect there either (img2img-semantics.md §1); the farm renders what the webui renders, and says so.
        found.append(
            warning(
                "no_effect",
                "override_settings.initial_noise_multiplier",
                "has no effect (as in the webui, which reads it before overrides apply); send the job field "
                "initial_noise_multiplier instead",
            )
        )
    return found
