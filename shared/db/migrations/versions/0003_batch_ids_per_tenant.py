"""Batch ids per tenant: the batches' key is (tenant, id), and a job's batch is (its tenant, batch_id).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

A client chooses its batch ids. With the id alone as the key, a batch id another tenant had used answered 409 where
an unused one created the batch: an oracle telling any tenant which batch ids exist (issue 15, finding 8). Keyed per
tenant, every tenant's ids are its own, and another tenant's id behaves exactly as an unused one.

SQLite rebuilds both tables (batch mode). Its copy of `jobs` keeps the plain indexes; the partial ones of 0002 are
dropped and created again here with their predicates, which the copy would not carry over reliably.

Frozen like 0001: nothing is imported from `shared.db.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = "state = 'queued'"
UNDISPATCHED = "state = 'queued' AND dispatched_at IS NULL"
IN_FLIGHT = "state = 'queued' AND dispatched_at IS NOT NULL"

PARTIAL_INDEXES: dict[str, tuple[list[str], str]] = {
    "ix_jobs_queued_order": (["queue", "priority", "created_at", "id"], QUEUED),
    "ix_jobs_queued_tenant": (["tenant"], QUEUED),
    "ix_jobs_undispatched": (["queue", "tenant", "priority", "created_at", "id"], UNDISPATCHED),
    "ix_jobs_in_flight": (["queue", "tenant", "priority"], IN_FLIGHT),
}


def _drop_partial_indexes() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in PARTIAL_INDEXES:
            op.drop_index(name, table_name="jobs")


def _create_partial_indexes() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name, (columns, predicate) in PARTIAL_INDEXES.items():
            op.create_index(name, "jobs", columns, sqlite_where=sa.text(predicate))


def upgrade() -> None:
    _drop_partial_indexes()
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_constraint("fk_jobs_batch_id_batches", type_="foreignkey")
    with op.batch_alter_table("batches") as batches:
        batches.drop_constraint("pk_batches", type_="primary")
        batches.create_primary_key("pk_batches", ["tenant", "id"])
    with op.batch_alter_table("jobs") as jobs:
        jobs.create_foreign_key("fk_jobs_tenant_batches", "batches", ["tenant", "batch_id"], ["tenant", "id"])
    _create_partial_indexes()


def downgrade() -> None:
    _drop_partial_indexes()
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_constraint("fk_jobs_tenant_batches", type_="foreignkey")
    with op.batch_alter_table("batches") as batches:
        batches.drop_constraint("pk_batches", type_="primary")
        batches.create_primary_key("pk_batches", ["id"])
    with op.batch_alter_table("jobs") as jobs:
        jobs.create_foreign_key("fk_jobs_batch_id_batches", "batches", ["batch_id"], ["id"])
    _create_partial_indexes()
