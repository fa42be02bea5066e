"""Events, webhook deliveries and webhook secrets: the feed's reads, the webhook loop's claims and results, and the
tenant's secret and default URL (docs/api.md "Events and webhooks"). The events themselves are written with the
changes that cause them (shared.db.event_writes).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from shared.db.event_writes import add_delivery
from shared.db.rows import plain_row
from shared.db.tables import events, tenant_webhooks, webhook_deliveries
from shared.db.transaction import Operations, Transactions
from shared.errors import NotFound
from shared.secret_box import SecretBox
from shared.webhooks import SECRET_PREFIX

SECRET_BYTES = 32
MAX_LOG_ENTRIES = 20  # attempts kept in a delivery's log (the first attempts are dropped first)


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


@dataclass(frozen=True)
class EventRow:
    position: int
    event_id: str
    tenant: str
    type: str
    job_id: uuid.UUID | None
    batch_id: uuid.UUID | None
    created_at: datetime
    body: Any


@dataclass(frozen=True)
class DeliveryRow:
    id: uuid.UUID
    event_id: str
    tenant: str
    job_id: uuid.UUID | None
    url: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    claimed_until: datetime | None
    created_at: datetime
    finished_at: datetime | None
    log: Any


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this process may attempt until `delivery.claimed_until`, with the event body it sends."""

    delivery: DeliveryRow
    body: Any


@dataclass(frozen=True)
class TenantSecrets:
    """A tenant's current secret and, during a rotation's overlap, the previous one (until `previous_until`)."""

    secret: str
    previous_secret: str | None
    previous_until: datetime | None
    rotated_at: datetime
    default_url: str | None

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets a delivery at `now` is signed with: the current one, and the previous while it overlaps."""
        if self.previous_secret is not None and self.previous_until is not None and now < self.previous_until:
            return [self.secret, self.previous_secret]
        return [self.secret]


class Events(Operations):
    """The per-tenant feed, the webhook outbox and the tenants' webhook secrets.

    `box` seals the secrets as they are stored and opens them as they are read (shared.secret_box; without keys
    they are stored as they are). The scheduler sets it from RENDERFARM_WEBHOOK_SECRETS_KEY."""

    def __init__(self, tx: Transactions) -> None:
        super().__init__(tx)
        self.box = SecretBox()

    # ------------------------------------------------------------------------------------------------------------
    # The feed

    def feed(self, tenant: str, after: int, limit: int) -> list[EventRow]:
        """The tenant's events with a position above `after`, oldest first, at most `limit`."""
        statement = (
            sa.select(events)
            .where(events.c.tenant == tenant, events.c.position > after)
            .order_by(events.c.position)
            .limit(limit)
        )
        with self._tx.begin(write=False) as conn:
            return [plain_row(EventRow, row) for row in conn.execute(statement).mappings()]

    def of_job(self, tenant: str, job_id: uuid.UUID) -> list[EventRow]:
        statement = (
            sa.select(events).where(events.c.tenant == tenant, events.c.job_id == job_id).order_by(events.c.position)
        )
        with self._tx.begin(write=False) as conn:
            return [plain_row(EventRow, row) for row in conn.execute(statement).mappings()]

    # ------------------------------------------------------------------------------------------------------------
    # Deliveries

    def deliveries_of_job(self, tenant: str, job_id: uuid.UUID) -> list[DeliveryRow]:
        """Every webhook delivery of the job's events (redeliveries included), oldest first."""
        statement = (
            sa.select(webhook_deliveries)
            .where(webhook_deliveries.c.tenant == tenant, webhook_deliveries.c.job_id == job_id)
            .order_by(webhook_deliveries.c.created_at, webhook_deliveries.c.id)
        )
        with self._tx.begin(write=False) as conn:
            return [plain_row(DeliveryRow, row) for row in conn.execute(statement).mappings()]

    def claim_due(self, claim_s: float, limit: int, *, now: datetime | None = None) -> list[ClaimedDelivery]:
        """Claim up to `limit` pending deliveries that are due and not claimed by anyone, for `claim_s` seconds.

        One UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) on PostgreSQL, so several schedulers claim
        disjoint rows without waiting for each other; on SQLite the same UPDATE under the write lock of
        `BEGIN IMMEDIATE`. A claim that outlives its process expires at `claimed_until`, and the row is due again.
        """
        when = self._tx.now(now)
        until = when + timedelta(seconds=claim_s)
        due = (
            sa.select(webhook_deliveries.c.id)
            .where(
                webhook_deliveries.c.state == "pending",
                webhook_deliveries.c.next_attempt_at <= when,
                sa.or_(webhook_deliveries.c.claimed_until.is_(None), webhook_deliveries.c.claimed_until < when),
            )
            .order_by(webhook_deliveries.c.next_attempt_at)
            .limit(limit)
        )
        if self._tx.dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        claim = (
            sa.update(webhook_deliveries)
            .where(webhook_deliveries.c.id.in_(due.scalar_subquery()))
            .values(claimed_until=until)
            .returning(*webhook_deliveries.columns)
        )
        with self._tx.begin() as conn:
            claimed = [plain_row(DeliveryRow, row) for row in conn.execute(claim).mappings()]
            if not claimed:
                return []
            ids = sorted({row.event_id for row in claimed})
            found = conn.execute(sa.select(events.c.event_id, events.c.body).where(events.c.event_id.in_(ids)))
            bodies = {event_id: body for event_id, body in found}
        return [ClaimedDelivery(row, bodies.get(row.event_id)) for row in claimed]

    def record_attempt(
        self,
        claimed: DeliveryRow,
        entry: dict[str, Any],
        *,
        delivered: bool,
        next_attempt_at: datetime | None,
        now: datetime | None = None,
    ) -> bool:
        """Record one attempt of a claimed delivery: delivered, due again at `next_attempt_at`, or (neither) failed
        for good. Fenced by the claim: a process whose claim expired (and another took the row) writes nothing.
        Returns whether it was recorded."""
        when = self._tx.now(now)
        log = [*list(claimed.log or []), entry][-MAX_LOG_ENTRIES:]
        if delivered:
            values: dict[str, Any] = {"state": "delivered", "finished_at": when, "next_attempt_at": None}
        elif next_attempt_at is None:
            values = {"state": "failed", "finished_at": when, "next_attempt_at": None}
        else:
            values = {"next_attempt_at": next_attempt_at}
        statement = (
            sa.update(webhook_deliveries)
            .where(
                webhook_deliveries.c.id == claimed.id,
                webhook_deliveries.c.state == "pending",
                webhook_deliveries.c.claimed_until == claimed.claimed_until,
            )
            .values(**values, attempts=webhook_deliveries.c.attempts + 1, claimed_until=None, log=log)
        )
        with self._tx.begin() as conn:
            return conn.execute(statement).rowcount == 1

    def redeliver(self, tenant: str, job_id: uuid.UUID, event_id: str, url: str | None) -> DeliveryRow:
        """A new delivery of one of the job's events, due now, to `url` (None: the URL of its latest delivery).
        Raises NotFound when the job has no such event, or no URL is known."""
        when = self._tx.now()
        with self._tx.begin() as conn:
            found = conn.execute(
                sa.select(events.c.event_id).where(
                    events.c.tenant == tenant, events.c.job_id == job_id, events.c.event_id == event_id
                )
            ).first()
            if found is None:
                raise NotFound(f"the job has no event {event_id!r}", code="event_not_found")
            if url is None:
                url = conn.execute(
                    sa.select(webhook_deliveries.c.url)
                    .where(webhook_deliveries.c.event_id == event_id)
                    .order_by(webhook_deliveries.c.created_at.desc())
                    .limit(1)
                ).scalar()
            if url is None:
                raise NotFound("the event was never delivered and no url was given", code="no_webhook_url")
            delivery_id = add_delivery(conn, event_id, tenant, job_id, url, when)
            row = conn.execute(sa.select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id))
            return plain_row(DeliveryRow, row.mappings().one())

    # ------------------------------------------------------------------------------------------------------------
    # Secrets and the default URL

    def tenant_secrets(self, tenant: str) -> TenantSecrets:
        """The tenant's secrets; the first call creates its secret (race-safe: one of two first calls wins).

        Secrets stored unsealed while the box has a key (written before the key was set), or sealed with a key
        other than its first, are sealed again with the first key here (a compare-and-set: a rotation that
        lands meanwhile wins)."""
        values = {
            "tenant": tenant,
            "secret": self.box.seal(new_secret()),
            "previous_secret": None,
            "previous_until": None,
            "rotated_at": self._tx.now(),
            "default_url": None,
        }
        with self._tx.begin() as conn:
            row, _ = self._tx.insert_or_get(conn, tenant_webhooks, values, [tenant_webhooks.c.tenant])
        found, stale = self._read_secrets(row)
        if stale:
            self._reseal(tenant, (row["secret"], row["previous_secret"]), found)
        return found

    def _reseal(self, tenant: str, stored: tuple[str, str | None], found: TenantSecrets) -> None:
        sealed_previous = self.box.seal(found.previous_secret) if found.previous_secret is not None else None
        statement = (
            sa.update(tenant_webhooks)
            .where(
                tenant_webhooks.c.tenant == tenant,
                tenant_webhooks.c.secret == stored[0],
                tenant_webhooks.c.previous_secret.is_(None)
                if stored[1] is None
                else tenant_webhooks.c.previous_secret == stored[1],
            )
            .values(secret=self.box.seal(found.secret), previous_secret=sealed_previous)
        )
        with self._tx.begin() as conn:
            conn.execute(statement)

    def rotate_secret(self, tenant: str, overlap_s: float, *, now: datetime | None = None) -> TenantSecrets:
        """A new secret for the tenant; the current one keeps signing deliveries for `overlap_s` seconds more."""
        self.tenant_secrets(tenant)
        when = self._tx.now(now)
        statement = (
            sa.update(tenant_webhooks)
            .where(tenant_webhooks.c.tenant == tenant)
            .values(
                previous_secret=tenant_webhooks.c.secret,
                previous_until=when + timedelta(seconds=overlap_s),
                secret=self.box.seal(new_secret()),
                rotated_at=when,
            )
            .returning(*tenant_webhooks.columns)
        )
        with self._tx.begin() as conn:
            return self._secrets(conn.execute(statement).mappings().one())

    def set_default_url(self, tenant: str, url: str | None) -> TenantSecrets:
        """Set (or clear, with None) the URL of events whose job names no `webhook_url`."""
        self.tenant_secrets(tenant)
        statement = (
            sa.update(tenant_webhooks)
            .where(tenant_webhooks.c.tenant == tenant)
            .values(default_url=url)
            .returning(*tenant_webhooks.columns)
        )
        with self._tx.begin() as conn:
            return self._secrets(conn.execute(statement).mappings().one())

    def _secrets(self, row: Any) -> TenantSecrets:
        return self._read_secrets(row)[0]

    def _read_secrets(self, row: Any) -> tuple[TenantSecrets, bool]:
        """The row's secrets opened, and whether either should be sealed again (`SecretBox.read`)."""
        secret, stale = self.box.read(row["secret"])
        previous = None
        if row["previous_secret"] is not None:
            previous, previous_stale = self.box.read(row["previous_secret"])
            stale = stale or previous_stale
        found = TenantSecrets(
            secret=secret,
            previous_secret=previous,
            previous_until=row["previous_until"],
            rotated_at=row["rotated_at"],
            default_url=row["default_url"],
        )
        return found, stale
