"""The webhook loop: delivers the outbox of webhook calls (`webhook_deliveries`) from a thread of the scheduler
(docs/api.md "Events and webhooks").

Each round claims the due deliveries no other scheduler holds (`Database.events.claim_due`: SKIP LOCKED on
PostgreSQL, the write lock on SQLite, a claim that expires), sends each one signed (shared.webhooks) from a small
pool of threads, and records the attempt fenced by its claim: delivered on a 2xx answer; otherwise due again after
an exponential, jittered backoff (shared.backoff), until `webhook_retry_period_s` after the event, then failed. A
worker or a request never waits for a webhook: they only write rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx

from scheduler.background import BackgroundLoop
from shared.backoff import backoff_delay
from shared.config import Settings
from shared.db import Database, utcnow
from shared.db.events import ClaimedDelivery
from shared.errors import DatabaseUnavailable
from shared.webhooks import Resolver, WebhookUrlRefused, delivery_target, headers_for, system_resolver

log = logging.getLogger("scheduler.webhooks")

CLAIM_LIMIT = 16  # deliveries claimed per round
SEND_THREADS = 8  # deliveries sent at once
STOP_TIMEOUT_S = 5.0
MAX_ERROR_CHARS = 300


def body_bytes(body: Any) -> bytes:
    """The exact bytes a delivery sends and signs (the feed returns the same JSON value)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class WebhookSender(BackgroundLoop):
    """Claims due deliveries, sends them, records the outcome. `deliver_due()` is one round (tests call it with a
    test clock); `run_in_thread()` runs rounds every `webhook_poll_s` seconds until `stop()`."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        transport: httpx.BaseTransport | None = None,
        resolve: Resolver = system_resolver,
    ) -> None:
        super().__init__("webhooks", STOP_TIMEOUT_S + settings.webhook_timeout_s)
        self._db = db
        self._settings = settings
        self._clock = clock
        self._resolve = resolve
        self._http = httpx.Client(
            timeout=settings.webhook_timeout_s, follow_redirects=False, transport=transport, trust_env=False
        )
        self._pool = ThreadPoolExecutor(max_workers=SEND_THREADS, thread_name_prefix="webhook-send")
        # Long enough for a full claim to be sent in turns by the pool, each send up to the timeout.
        self._claim_s = settings.webhook_timeout_s * (CLAIM_LIMIT // SEND_THREADS + 1) + 30.0

    def deliver_due(self) -> int:
        """One round: claim, send and record the due deliveries. Returns how many were attempted."""
        claimed = self._db.events.claim_due(self._claim_s, CLAIM_LIMIT, now=self._clock())
        list(self._pool.map(self._attempt, claimed))
        return len(claimed)

    def _attempt(self, claimed: ClaimedDelivery) -> None:
        delivery = claimed.delivery
        when = self._clock()
        status: int | None = None
        error: str | None = None
        try:
            # Checked again now (the name may point elsewhere since submission), and sent to the address checked.
            target = delivery_target(
                delivery.url, allow_private=self._settings.webhook_allow_private_addresses, resolve=self._resolve
            )
            payload = body_bytes(claimed.body)
            secrets = self._db.events.tenant_secrets(delivery.tenant).signing_secrets(when)
            headers = headers_for(secrets, delivery.event_id, int(when.timestamp()), payload)
            if target.host_header is not None:
                headers["host"] = target.host_header
            extensions = {"sni_hostname": target.tls_server_name} if target.tls_server_name else None
            response = self._http.post(target.url, content=payload, headers=headers, extensions=extensions)
            status = response.status_code
        except WebhookUrlRefused as refused:
            error = f"{refused.code}: {refused.message}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except DatabaseUnavailable as exc:
            # The claim expires and the row is due again; nothing to record now.
            log.warning("webhook delivery %s skipped: %s", delivery.id, exc.message)
            return
        delivered = status is not None and 200 <= status < 300
        entry: dict[str, Any] = {"at": when.isoformat().replace("+00:00", "Z"), "status": status}
        if error is not None:
            entry["error"] = error[:MAX_ERROR_CHARS]
        next_attempt_at = None if delivered else self._next_attempt(delivery.attempts + 1, delivery.created_at, when)
        entry["next_attempt_at"] = next_attempt_at.isoformat().replace("+00:00", "Z") if next_attempt_at else None
        try:
            self._db.events.record_attempt(
                delivery, entry, delivered=delivered, next_attempt_at=next_attempt_at, now=when
            )
        except DatabaseUnavailable as exc:
            log.warning("recording webhook delivery %s failed: %s", delivery.id, exc.message)

    def _next_attempt(self, failures: int, created_at: datetime, now: datetime) -> datetime | None:
        """When to try again after `failures` failed attempts; None once the retry period would be over."""
        settings = self._settings
        delay = backoff_delay(failures, settings.webhook_backoff_base_s, settings.webhook_backoff_max_s)
        next_at = now + timedelta(seconds=delay)
        if next_at > created_at + timedelta(seconds=settings.webhook_retry_period_s):
            return None
        return next_at

    def _loop(self) -> None:
        while not self._stopping.is_set():
            busy = False
            try:
                busy = self.deliver_due() == CLAIM_LIMIT
            except DatabaseUnavailable as exc:
                log.warning("webhook round skipped: %s", exc.message)
            except Exception:
                log.exception("webhook round failed")
            if busy:
                continue
            self._wake.wait(self._settings.webhook_poll_s)
            self._wake.clear()

    def _close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
