"""Purged batches: the tombstone of a batch the retention purge deleted with its last job.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

A batch row stays while any job row names it; when the purge deletes a batch's last jobs it deletes the batch too,
with its `batch.finished` event (so a batch id used again gets an event of its own), and leaves a tombstone here:
reading the batch then answers 410 with when it was purged, as a purged job does (docs/api.md "Retention").

Frozen like 0001: column types are repeated here, not imported from `shared.db.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "purged_batches",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("purged_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "batch_id", name="pk_purged_batches"),
    )


def downgrade() -> None:
    op.drop_table("purged_batches")
