"""Retention: when a job's results were purged, tombstones of purged jobs, and the indexes the purge reads.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

- `jobs.results_purged_at`: set when the purge deleted the job's stored outputs (results, overlays, masks) and
  their artifact rows; the job row stays until its own retention passes.
- `purged_jobs`: one tombstone per deleted job row (tenant, task id, when it was purged), so that reading a purged
  job answers 410 with that time instead of a 404 that hides it (docs/api.md "Retention").
- Partial indexes on the terminal jobs by `finished_at` (all of them, and those whose results are still stored),
  and `assets.created_at`: each purge pass reads the oldest few rows past a cutoff, never a scan of the table.

Frozen like 0001: column types are repeated here, not imported from `shared.db.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
TERMINAL = "state IN ('succeeded', 'failed', 'canceled')"
RESULTS_STORED = f"{TERMINAL} AND results_purged_at IS NULL"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("results_purged_at", TIMESTAMP, nullable=True))
    for name, predicate in (("ix_jobs_finished", TERMINAL), ("ix_jobs_results_stored", RESULTS_STORED)):
        op.create_index(
            name,
            "jobs",
            ["finished_at", "id"],
            postgresql_where=sa.text(predicate),
            sqlite_where=sa.text(predicate),
        )
    op.create_index("ix_assets_created_at", "assets", ["created_at"])
    op.create_table(
        "purged_jobs",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("purged_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "task_id", name="pk_purged_jobs"),
    )


def downgrade() -> None:
    op.drop_table("purged_jobs")
    op.drop_index("ix_assets_created_at", table_name="assets")
    op.drop_index("ix_jobs_results_stored", table_name="jobs")
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_column("jobs", "results_purged_at")
