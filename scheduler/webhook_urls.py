"""The submission check of a job's `webhook_url` (docs/api.md "Events and webhooks"): a 422 naming the field for a
URL the farm would not call (shared.webhooks.check_webhook_url: scheme, credentials, and the addresses the host is
or resolves to, unless `RENDERFARM_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`)."""

from __future__ import annotations

from shared.config import Settings
from shared.errors import InputError
from shared.webhooks import Resolver, WebhookUrlRefused, check_webhook_url, system_resolver


def check_submitted_webhook_url(
    url: str | None, settings: Settings, field: str = "webhook_url", *, resolve: Resolver = system_resolver
) -> None:
    """Raise InputError (422) naming `field` unless the farm may call `url` (None: nothing to check)."""
    if url is None:
        return
    try:
        check_webhook_url(url, allow_private=settings.webhook_allow_private_addresses, resolve=resolve)
    except WebhookUrlRefused as refused:
        raise InputError(f"{field}: {refused.message}", code=refused.code, field=field) from None
