"""Admitting a job: the one path every job takes into the jobs table, alone (`PUT /v1/jobs`) or as a batch's child.

`admit` normalises the job's images, hashes the request and builds the row's values (`NewJob`); the single-job
path (scheduler.submission) then does create-or-get, the batch path (scheduler.batches) the bulk insert. So a job
is stored and hashed the same way whichever door it came in by.

The task id is the row's key, never part of the stored request (`Img2ImgJob.to_request_json` leaves
`force_task_id` out), so the id the caller chose is passed alongside the job, not written into it.

Normalising before hashing (docs/farm-design.md) makes the same picture sent inline or as `asset:<sha256>` the
same request, and keeps megabytes of base64 out of the jobs table:

- inline base64 → decoded within the limits → stored as the tenant's asset → `asset:<sha256>`;
- `asset:<sha256>` → must be one of this tenant's assets (422 naming the field otherwise);
- a URL → must name an object of the farm's own storage that belongs to this tenant: `s3://<bucket>/<prefix><key>`
  of the configured bucket, or `<public_url>/v1/files/<key>`; anything else is 422 naming the field. The URL is
  kept as sent (the worker maps it back to the key).

Every function here blocks (database, storage): call them from a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.assets import store_asset
from scheduler.deps import Services
from scheduler.model_checks import check_model_files
from scheduler.webhook_urls import check_submitted_webhook_url
from scheduler.worker_registry import unserved_model_warning
from shared.config import Settings
from shared.db import NewJob
from shared.errors import InputError, NotFound
from shared.images import ImageLimits
from shared.job.hashing import request_hash
from shared.job.image_refs import parse_image_ref
from shared.job.spec import Img2ImgJob
from shared.job.steps import sampling_steps
from shared.job.warnings import job_warnings
from shared.prompts import prompt_warnings
from shared.queueing import queue_name
from shared.storage import DOWNLOAD_ROUTE, Storage, key_of_farm_url, validate_key

QUEUE_LIMIT_RETRY_AFTER_S = 30.0  # what a client over its queued-jobs limit is told to wait (seconds)


def expected_total_steps(job: Img2ImgJob) -> int:
    """Sampling steps the whole job takes (all of its `n_iter` batches), for progress and ETA: exactly what the
    worker reports (`shared.job.steps.sampling_steps`)."""
    fix_steps = bool(job.override_settings.get("img2img_fix_steps", False))
    return sampling_steps(
        job.sampler.name,
        job.steps,
        job.denoising_strength,
        fix_steps=fix_steps,
        n_iter=job.n_iter,
        schedule=job.schedule.name,
        always_discard_penultimate_sigma=bool(job.override_settings.get("always_discard_next_to_last_sigma", False)),
    )


def farm_key_of_url(url: str, storage: Storage, settings: Settings) -> str | None:
    """The storage key a URL of the farm's own storage names, or None when the URL is not the farm's."""
    return key_of_farm_url(url, storage, [settings.public_url])


class ImageNormaliser:
    """Replaces a job's image references by their normal form; one instance per request (it dedupes inline data)."""

    def __init__(self, services: Services, tenant: str) -> None:
        self.services = services
        self.tenant = tenant
        self.limits = ImageLimits.from_settings(services.settings)
        self._done: dict[str, str] = {}

    def __call__(self, text: str, field: str) -> str:
        if text not in self._done:
            self._done[text] = self._normalise(text, field)
        return self._done[text]

    def _normalise(self, text: str, field: str) -> str:
        settings = self.services.settings
        ref = parse_image_ref(text, field=field, max_inline_bytes=settings.max_inline_image_bytes)
        if ref.kind == "inline":
            asset, _created = store_asset(
                self.services, self.tenant, ref.inline_bytes(), field=field, limits=self.limits
            )
            return f"asset:{asset.sha256}"
        if ref.kind == "asset":
            try:
                self.services.db.assets.get(self.tenant, ref.value)
            except NotFound:
                raise InputError(
                    f"{field}: no asset asset:{ref.value} (upload the image with POST /v1/assets first)",
                    code="unknown_asset",
                    field=field,
                ) from None
            return f"asset:{ref.value}"
        self._check_url(text, field)
        return text

    def _check_url(self, url: str, field: str) -> None:
        key = farm_key_of_url(url, self.services.storage, self.services.settings)
        if key is None:
            raise InputError(
                f"{field}: only URLs of the farm's own storage are accepted (its s3:// bucket or "
                f"{self.services.settings.public_url.rstrip('/')}{DOWNLOAD_ROUTE}...); upload other images with "
                "POST /v1/assets",
                code="foreign_url",
                field=field,
            )
        try:
            validate_key(key)
        except ValueError:
            raise InputError(f"{field}: the URL names no valid object", code="unknown_object", field=field) from None
        # Another tenant's objects are as unknown as missing ones (404-not-403, as everywhere else).
        if not key.startswith(f"{self.tenant}/") or not self.services.storage.exists(key):
            raise InputError(f"{field}: the URL names no object of yours", code="unknown_object", field=field)


def normalise_images(normalise: ImageNormaliser, job: Img2ImgJob, field_prefix: str = "") -> Img2ImgJob:
    """`job` with every image reference in its normal form (see the module docstring; one copy of the job, as
    10,000 children of a batch add up). Errors name the field as `{field_prefix}init_images.0`. Raises InputError
    (422) or PayloadTooLarge (413) naming the field, and 503s when storage or the database is down."""
    update: dict[str, Any] = {
        "init_images": [normalise(text, f"{field_prefix}init_images.{i}") for i, text in enumerate(job.init_images)]
    }
    if job.mask is not None:
        update["mask"] = normalise(job.mask, f"{field_prefix}mask")
    if job.latent_mask is not None:
        update["latent_mask"] = normalise(job.latent_mask, f"{field_prefix}latent_mask")
    return job.model_copy(update=update)


def check_priority_ceiling(services: Services, tenant: str, priority: int, field_prefix: str = "") -> None:
    """Raise InputError (422 naming `priority`) when `priority` is over the tenant's ceiling (docs/api.md
    "Priority"): refused, not clamped, so a job never runs at a priority other than the one it asked for."""
    ceiling = services.priority_ceiling.of(tenant)
    if ceiling is not None and priority > ceiling:
        raise InputError(
            f"{field_prefix}priority: {priority} is over your ceiling of {ceiling}; ask the farm's operators to "
            "raise it (RENDERFARM_TENANT_MAX_PRIORITY)",
            code="priority_over_ceiling",
            field=f"{field_prefix}priority",
        )


def admit(
    normalise: ImageNormaliser,
    job: Img2ImgJob,
    *,
    task_id: str,
    batch: bool,
    max_attempts: int,
    field_prefix: str = "",
    warnings: Sequence[Mapping[str, Any]] = (),
) -> NewJob:
    """The row's values for `job` under `task_id`: its images normalised, its stored request (without the task id)
    and that request's hash, its queue (the batch tier's for a batch's child), model, expected steps and warnings:
    `warnings` (the door's own, e.g. the A1111 request's fields), the job contract's (`shared.job.warnings`), the
    prompt's, then `no_worker_serves_model` when no live worker consumes the job's queue
    (`scheduler.worker_registry`).

    Raises InputError (422) or PayloadTooLarge (413) naming `{field_prefix}<field>`, and 503s when storage or the
    database is down.
    """
    check_priority_ceiling(normalise.services, normalise.tenant, job.priority, field_prefix)
    check_submitted_webhook_url(job.webhook_url, normalise.services.settings, f"{field_prefix}webhook_url")
    # Model, VAE and LoRA names before the images: the model's canonical name is what is stored and hashed.
    job = check_model_files(normalise.services, job, field_prefix)
    normalised = normalise_images(normalise, job, field_prefix)
    model = normalised.resolved_model
    queue = queue_name(model, batch=batch)
    services = normalise.services
    unserved = unserved_model_warning(services.workers, normalised, queue, services.settings.model)
    return NewJob(
        task_id=task_id,
        request=normalised.to_request_json(),
        request_hash=request_hash(normalised),
        priority=normalised.priority,
        queue=queue,
        model=model,
        max_attempts=max_attempts,
        total_steps=expected_total_steps(normalised),
        warnings=(
            *warnings,
            *job_warnings(normalised),
            *prompt_warnings(normalised.prompt, normalised.negative_prompt),
            *([unserved] if unserved is not None else []),
        ),
    )
