"""The first schema: batches, jobs, artifacts, assets.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written by hand and frozen: it does not import `shared.db.tables`, so later changes to the models need a new revision
(and `test_migrations.py` fails until there is one).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("requested", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("manifest", JSON, nullable=False),
        sa.Column("canceled_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("mode IN ('list', 'zip', 'product')", name="ck_batches_mode"),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
    )
    op.create_index("ix_batches_tenant_created_at", "batches", ["tenant", "created_at"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_until", TIMESTAMP, nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("queue", sa.String(128), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("request", JSON, nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("dispatched_at", TIMESTAMP, nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error", JSON, nullable=True),
        sa.Column("warnings", JSON, nullable=False),
        sa.Column("seq", sa.BigInteger(), server_default=sa.text("1"), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=True),
        sa.CheckConstraint("state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')", name="ck_jobs_state"),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name="fk_jobs_batch_id_batches"),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("tenant", "task_id", name="uq_jobs_tenant_task_id"),
    )
    op.create_index("ix_jobs_state_queue_priority_created_at", "jobs", ["state", "queue", "priority", "created_at"])
    op.create_index("ix_jobs_tenant_created_at_id", "jobs", ["tenant", "created_at", "id"])
    op.create_index("ix_jobs_batch_id_state", "jobs", ["batch_id", "state"])
    op.create_index("ix_jobs_state_lease_until", "jobs", ["state", "lease_until"])
    op.create_index("ix_jobs_state_dispatched_at", "jobs", ["state", "dispatched_at"])

    op.create_table(
        "artifacts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("infotext", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("kind IN ('result', 'overlay', 'mask')", name="ck_artifacts_kind"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_artifacts_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_artifacts"),
        sa.UniqueConstraint("job_id", "kind", "index", name="uq_artifacts_job_id_kind_index"),
    )

    op.create_table(
        "assets",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.String(1024), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("mime", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "sha256", name="pk_assets"),
    )


def downgrade() -> None:
    op.drop_table("assets")
    op.drop_table("artifacts")
    for name in (
        "ix_jobs_state_dispatched_at",
        "ix_jobs_state_lease_until",
        "ix_jobs_batch_id_state",
        "ix_jobs_tenant_created_at_id",
        "ix_jobs_state_queue_priority_created_at",
    ):
        op.drop_index(name, table_name="jobs")
    op.drop_table("jobs")
    op.drop_index("ix_batches_tenant_created_at", table_name="batches")
    op.drop_table("batches")
