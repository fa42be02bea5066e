"""Admitting a job: validate, normalise its images to assets, then create-or-get the row (docs/farm-design.md).

Normalising before hashing makes the same picture sent inline or as `asset:<sha256>` the same request, and keeps
megabytes of base64 out of the jobs table:

- inline base64 → decoded within the limits → stored as the tenant's asset → `asset:<sha256>`;
- `asset:<sha256>` → must be one of this tenant's assets (422 naming the field otherwise);
- a URL → must name an object of the farm's own storage that belongs to this tenant: `s3://<bucket>/<prefix><key>`
  of the configured bucket, or `<public_url>/v1/files/<key>`; anything else is 422 naming the field. The URL is
  kept as sent (the worker maps it back to the key).

Every function here blocks (database, storage): call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.deps import Services
from scheduler.errors import TaskIdConflict
from shared.config import Settings
from shared.db import AssetRow, JobRow
from shared.errors import Conflict, InputError, NotFound, RateLimited
from shared.images import ImageLimits, decode_image, image_info
from shared.queueing import queue_name
from shared.spec import Img2ImgJob, SpecLimits, parse_image_ref, parse_job, request_hash
from shared.storage import DOWNLOAD_ROUTE, Storage, asset_key, key_of_farm_url, validate_key

log = logging.getLogger("scheduler.submission")

QUEUE_LIMIT_RETRY_AFTER_S = 30.0  # what a client over its queued-jobs limit is told to wait (seconds)


@dataclass(frozen=True)
class Submission:
    """The job as it is after create-or-get; `created` is False when the task id already had this request."""

    row: JobRow
    created: bool


def new_task_id() -> str:
    """A server-chosen task id: `job-` and 32 hex digits of a random UUID."""
    return f"job-{uuid.uuid4().hex}"


def expected_total_steps(job: Img2ImgJob) -> int:
    """Sampling steps the whole job takes (all of its `n_iter` batches), for progress and ETA: exactly what the
    worker reports (`shared.job.steps.sampling_steps`)."""
    from shared.job.steps import sampling_steps  # hoist into the imports at merge (kept inside to touch only this)

    fix_steps = bool(job.override_settings.get("img2img_fix_steps", False))
    return sampling_steps(job.sampler.name, job.steps, job.denoising_strength, fix_steps=fix_steps, n_iter=job.n_iter)


# --------------------------------------------------------------------------------------------------------------
# Assets


def store_asset(
    services: Services, tenant: str, data: bytes, *, field: str, limits: ImageLimits
) -> tuple[AssetRow, bool]:
    """Store an input image as the tenant's asset (content-addressed by sha256); returns `(asset, created)`.

    An asset the tenant already has is returned as it is. A new one must decode within `limits`: PayloadTooLarge
    (413) over them, InputError (422, naming `field`) for data that is no supported image. StorageUnavailable or
    DatabaseUnavailable (503) when a dependency is down.
    """
    digest = hashlib.sha256(data).hexdigest()
    try:
        return services.db.assets.get(tenant, digest), False
    except NotFound:
        pass
    image = decode_image(data, field=field, limits=limits)
    try:
        # The size after EXIF orientation: what the worker will see.
        width, height = image.width, image.height
    finally:
        image.close()
    mime = image_info(data, field=field).mime
    key = asset_key(tenant, digest)
    # Object first, row second: a row always names an object that exists.
    services.storage.put(key, data, mime, sha256=digest)
    return services.db.assets.add(
        tenant, digest, storage_key=key, size_bytes=len(data), mime=mime, width=width, height=height
    )


def asset_body(asset: AssetRow) -> dict[str, Any]:
    """The API's description of an asset."""
    return {
        "asset_id": f"asset:{asset.sha256}",
        "sha256": asset.sha256,
        "width": asset.width,
        "height": asset.height,
        "mime": asset.mime,
        "bytes": asset.bytes,
    }


# --------------------------------------------------------------------------------------------------------------
# Image references


def farm_key_of_url(url: str, storage: Storage, settings: Settings) -> str | None:
    """The storage key a URL of the farm's own storage names, or None when the URL is not the farm's."""
    return key_of_farm_url(url, storage, [settings.public_url])


class _Normaliser:
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


def normalise_images(services: Services, tenant: str, job: Img2ImgJob) -> Img2ImgJob:
    """`job` with every image reference in its normal form (see the module docstring). Raises InputError (422)
    or PayloadTooLarge (413) naming the field, and 503s when storage or the database is down."""
    normalise = _Normaliser(services, tenant)
    update: dict[str, Any] = {
        "init_images": [normalise(text, f"init_images.{i}") for i, text in enumerate(job.init_images)]
    }
    if job.mask is not None:
        update["mask"] = normalise(job.mask, "mask")
    if job.latent_mask is not None:
        update["latent_mask"] = normalise(job.latent_mask, "latent_mask")
    return job.model_copy(update=update)


# --------------------------------------------------------------------------------------------------------------
# Create-or-get


def _within_queue_limit(services: Services, tenant: str) -> bool:
    """Whether one more queued job fits under the tenant's limit (a soft limit: refusals are decided by an exact
    count, admissions far from the limit by an estimate; scheduler/queue_limit.py)."""
    return services.queue_limit.admit(tenant, 1, services.settings.max_queued_jobs_per_tenant) is None


def _existing(services: Services, tenant: str, task_id: str) -> JobRow | None:
    try:
        return services.db.jobs.get(tenant, task_id)
    except NotFound:
        return None


def submit_job(services: Services, tenant: str, body: Any, *, task_id: str | None = None) -> Submission:
    """Admit one job for `tenant`: create it, or return the existing job with the same task id and request.

    `task_id` is the id of `PUT /v1/jobs/{task_id}`; without it the body's `force_task_id` or a new server id
    is used. Raises InputError (422 naming the field), PayloadTooLarge (413, an inline image over the limit),
    TaskIdConflict (409, the id is taken by a different request), RateLimited (429, too many queued jobs),
    and DatabaseUnavailable / StorageUnavailable (503).
    """
    if not isinstance(body, Mapping):
        raise InputError("the body must be a JSON object with the job's fields", code="invalid_type", field="body")
    settings = services.settings
    job = parse_job(body, SpecLimits.from_settings(settings))
    if task_id is not None and job.force_task_id not in (None, task_id):
        raise InputError(
            f"force_task_id {job.force_task_id!r} differs from the task id {task_id!r} of the URL; send one of them",
            code="task_id_mismatch",
            field="force_task_id",
        )
    final_id = task_id or job.force_task_id or new_task_id()
    # The queue limit first (usually answered without a query, scheduler/queue_limit.py). A resubmission of an
    # existing id must answer even when the tenant is at its limit (the SDK resubmits after a timeout to learn what
    # happened), so only a refusal looks for the existing job; everything else goes straight to create-or-get.
    existing = None
    if not _within_queue_limit(services, tenant):
        existing = _existing(services, tenant, final_id) if (task_id or job.force_task_id) else None
        if existing is None:
            raise RateLimited(
                f"you have {services.settings.max_queued_jobs_per_tenant} or more queued jobs, the most one tenant "
                "may have; wait for some to finish",
                retry_after_s=QUEUE_LIMIT_RETRY_AFTER_S,
                code="too_many_queued_jobs",
            )
    normalised = normalise_images(services, tenant, job).model_copy(update={"force_task_id": final_id})
    digest = request_hash(normalised)
    if existing is not None:
        if existing.request_hash != digest:
            raise TaskIdConflict(final_id, existing.request_hash, digest)
        return Submission(existing, created=False)
    model = normalised.resolved_model
    try:
        row, created = services.db.jobs.create_or_get(
            tenant,
            final_id,
            normalised.to_request_json(),
            digest,
            queue=queue_name(model, batch=False),
            max_attempts=settings.max_attempts,
            priority=normalised.priority,
            model=model,
            total_steps=expected_total_steps(normalised),
        )
    except Conflict as exc:
        # The id is taken by a different request; name both hashes.
        current = _existing(services, tenant, final_id)
        raise TaskIdConflict(final_id, current.request_hash if current else "unknown", digest) from exc
    if created:
        _wake_dispatcher(services, row)
    return Submission(row, created)


def _wake_dispatcher(services: Services, row: JobRow) -> None:
    """Nudge the dispatcher to publish the new job now. A failure is logged, not raised: the row is committed and
    the dispatcher's next tick (or the reconciler) publishes whatever it missed. (Nobody can be watching a job
    created just now, so there is no live notification to send.)"""
    if services.dispatcher is not None:
        try:
            services.dispatcher.wake()
        except Exception:
            log.exception("waking the dispatcher failed for job %s", row.id)
