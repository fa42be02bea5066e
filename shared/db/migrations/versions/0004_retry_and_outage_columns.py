"""Retries with backoff, outages that are not attempts, and the sweep of orphaned uploads (reliability.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

- `retry_at`: a re-queued job is not published (nor claimed) before this time, the backoff of its retry.
- `outage_requeues`: how many of the job's claims ended in a storage, broker or database outage; they are not
  attempts (the attempt limit counts `attempt - outage_requeues`).
- `outage_since`: when the first of those outages hit the job; past `outage_deadline_s` the job fails.
- `storage_swept_at`: when the reconciler removed the objects that attempts which never committed left in storage;
  `ix_jobs_unswept` lists the finished jobs still to sweep. Jobs that finished before this migration are swept too
  (at most `SWEEP_LIMIT` per reconciler run), removing what earlier versions left behind.

Frozen like 0001: column types are repeated here, not imported from `shared.db.tables` (`UTCDateTime` is a
`DateTime(timezone=True)` underneath).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPS = ("retry_at", "outage_since", "storage_swept_at")
UNSWEPT = (
    "storage_swept_at IS NULL AND attempt >= 1 AND state IN ('succeeded', 'failed', 'canceled') "
    "AND (state <> 'succeeded' OR attempt > 1)"
)


def upgrade() -> None:
    # Plain ADD / DROP COLUMN (SQLite 3.35+ has both): no table rebuild, so the partial indexes of 0002 stay as
    # they are, and none of them names these columns.
    for name in TIMESTAMPS:
        op.add_column("jobs", sa.Column(name, sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("outage_requeues", sa.Integer(), server_default=sa.text("0"), nullable=False))
    # The sweep's work list: it holds only finished jobs not swept yet, so a table of old successes costs nothing.
    op.create_index(
        "ix_jobs_unswept",
        "jobs",
        ["finished_at", "id"],
        postgresql_where=sa.text(UNSWEPT),
        sqlite_where=sa.text(UNSWEPT),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unswept", table_name="jobs")
    op.drop_column("jobs", "outage_requeues")
    for name in reversed(TIMESTAMPS):
        op.drop_column("jobs", name)
