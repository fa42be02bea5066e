"""renderfarm: a distributed img2img / inpainting render farm with AUTOMATIC1111 semantics on diffusers.

The SDK is this package's public surface (everything in `__all__`); modules starting with `_` are private.

    import renderfarm

    with renderfarm.Client() as farm:                     # RENDERFARM_URL, RENDERFARM_TOKEN
        [picture] = farm.render(image="cat.png", prompt="a cat in a hat", steps=20)

        job = farm.submit(image="cat.png", mask="mask.png", prompt="a hat", task_id="hat-1")
        job = farm.wait(job.task_id, timeout=600)
        farm.download(job, "out/hat-1")

        batch = farm.submit_batch(grid=renderfarm.Grid.product(seed=[1, 2, 3], prompt=["a fox", "a cat"]),
                                  defaults={"image": "cat.png", "steps": 20})

    try:
        farm.submit(image="cat.png", steps=1000)
    except renderfarm.ValidationError as exc:
        print(exc.field)                                  # "steps"

`AsyncClient` has the same methods as `Client`, awaited. Exceptions: see `renderfarm._errors` for the tree.
"""

from renderfarm._async_client import AsyncClient
from renderfarm._errors import (
    APIError,
    Conflict,
    ConnectError,
    Forbidden,
    IntegrityError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RenderfarmError,
    RequestTimeout,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from renderfarm._job import JobCanceled, JobFailed, JobNotFinished, Waiting, WaitTimeout
from renderfarm._transport import Retries, Timeout
from renderfarm._types import Artifact, Asset, Batch, BatchCreated, ErrorInfo, Grid, Job, JobState
from renderfarm._webhooks import WebhookVerificationError, verify_webhook
from renderfarm.client import Client, ImageInput, JobSpec, new_task_id

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "Artifact",
    "Asset",
    "AsyncClient",
    "Batch",
    "BatchCreated",
    "Client",
    "Conflict",
    "ConnectError",
    "ErrorInfo",
    "Forbidden",
    "Grid",
    "ImageInput",
    "IntegrityError",
    "Job",
    "JobCanceled",
    "JobFailed",
    "JobNotFinished",
    "JobSpec",
    "JobState",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RenderfarmError",
    "RequestTimeout",
    "Retries",
    "ServerError",
    "Timeout",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
    "WaitTimeout",
    "Waiting",
    "WebhookVerificationError",
    "__version__",
    "new_task_id",
    "verify_webhook",
]
