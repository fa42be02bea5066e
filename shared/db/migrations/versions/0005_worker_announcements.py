"""Worker announcements: what each live worker process serves, so the scheduler knows which queues have a consumer.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

One row per worker process (its Celery hostname): the queues it consumes, the models it can load, its device, when
it started, when it last announced itself and when the row stops counting (`expires_at`: a few heartbeats later).
A worker writes its row on start and every heartbeat and deletes it when it stops; rows past `expires_at` are
ignored by readers and deleted by the next announcement of any worker (docs/reliability.md "Who moves each job on").

Frozen like 0001: column types are repeated here, not imported from `shared.db.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "worker_announcements",
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("queues", JSON, nullable=False),
        sa.Column("models", JSON, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("seen_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("hostname", name="pk_worker_announcements"),
    )
    op.create_index("ix_worker_announcements_expires_at", "worker_announcements", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_worker_announcements_expires_at", table_name="worker_announcements")
    op.drop_table("worker_announcements")
