"""Job events, their webhook deliveries and the per-tenant webhook secrets (docs/api.md "Events and webhooks").

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

- `events`: one row per terminal transition (`job.succeeded`, `job.failed`, `job.canceled`) and per finished batch
  (`batch.finished`), written in the same transaction as the change that causes it. `position` is the feed's
  cursor (`GET /v1/events?after=`); `event_id` is the webhook's `webhook-id`; `dedup_key` makes a second
  `batch.finished` of one batch impossible.
- `webhook_deliveries`: the outbox of webhook calls, one row per event and URL, claimed by one scheduler at a time
  (`claimed_until`), retried with backoff for the configured period after `created_at`; `log` keeps its attempts.
- `tenant_webhooks`: each tenant's signing secret, the previous one while a rotation's overlap lasts, and the
  tenant's default webhook URL.

Frozen like 0001: column types are repeated here, not imported from `shared.db.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a BIGINT identity.
POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("position", POSITION, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("dedup_key", sa.String(200), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("body", JSON, nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_events"),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
        sa.UniqueConstraint("dedup_key", name="uq_events_dedup_key"),
        # SQLite: never reuse the position of a deleted newest event (a feed cursor must only grow).
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_tenant_position", "events", ["tenant", "position"])
    op.create_index("ix_events_job_id", "events", ["job_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("url", sa.String(4096), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=True),
        sa.Column("claimed_until", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("log", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_state"),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )
    op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])
    op.create_index("ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id"])
    op.create_table(
        "tenant_webhooks",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("previous_secret", sa.String(128), nullable=True),
        sa.Column("previous_until", TIMESTAMP, nullable=True),
        sa.Column("rotated_at", TIMESTAMP, nullable=False),
        sa.Column("default_url", sa.String(4096), nullable=True),
        sa.PrimaryKeyConstraint("tenant", name="pk_tenant_webhooks"),
    )


def downgrade() -> None:
    op.drop_table("tenant_webhooks")
    op.drop_index("ix_webhook_deliveries_event_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_job_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_events_job_id", table_name="events")
    op.drop_index("ix_events_tenant_position", table_name="events")
    op.drop_table("events")
