"""`verify_webhook`: check a webhook the farm sent (Standard Webhooks signatures, docs/api.md "Events and webhooks")
before trusting its body.

    event = renderfarm.verify_webhook(secret, request.headers, request.body)   # raises WebhookVerificationError
    if event["type"] == "job.succeeded": ...
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"  # noqa: S105 - the scheme's prefix, not a secret
DEFAULT_TOLERANCE_S = 300.0  # how far the webhook-timestamp may be from the receiver's clock


class WebhookVerificationError(ValueError):
    """The message is not a valid webhook of the farm: a header is missing, no signature verifies, or its
    timestamp is too far from now (a replay)."""


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The event in `body` if one of the `webhook-signature` signatures verifies with `secret` (`whsec_...`, from
    `GET /v1/webhooks/secret`) and `webhook-timestamp` is within `tolerance_s` seconds of `now` (default: the
    clock). Header names are matched case-insensitively. Raises WebhookVerificationError otherwise.

    During a secret rotation the farm signs with both secrets; verify with either.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp_text = lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"]
    except KeyError as missing:
        raise WebhookVerificationError(f"missing header {missing.args[0]}") from None
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance_s:g} s from now")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise WebhookVerificationError("the secret is not whsec_<base64>") from None
    payload = body.encode("utf-8") if isinstance(body, str) else body
    signed = f"{message_id}.{timestamp_text}.".encode() + payload
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
    for signature in signatures.split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            event: dict[str, Any] = json.loads(payload)
            return event
    raise WebhookVerificationError("no signature verifies with this secret")
