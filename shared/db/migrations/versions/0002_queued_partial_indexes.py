"""Partial indexes on queued jobs: queue position, a tenant's queued count, the outbox and the dispatch window.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

Reads made per request (a queued job's position, a tenant's queued count) and per dispatch round (queues with
unpublished jobs, messages in flight) scanned every queued job through `(state, queue, priority, created_at)`;
with a backlog of 25,000 jobs each took 30-40 ms of PostgreSQL time (bench/RESULTS.md). These indexes hold only the
rows each read needs. The old index is dropped: `ix_jobs_queued_order` serves all its queries.

Frozen like 0001: the predicates are repeated here as text, not imported from `shared.db.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = "state = 'queued'"
UNDISPATCHED = "state = 'queued' AND dispatched_at IS NULL"
IN_FLIGHT = "state = 'queued' AND dispatched_at IS NOT NULL"

INDEXES: dict[str, tuple[list[str], str]] = {
    "ix_jobs_queued_order": (["queue", "priority", "created_at", "id"], QUEUED),
    "ix_jobs_queued_tenant": (["tenant"], QUEUED),
    "ix_jobs_undispatched": (["queue", "tenant", "priority", "created_at", "id"], UNDISPATCHED),
    "ix_jobs_in_flight": (["queue", "tenant", "priority"], IN_FLIGHT),
}


def upgrade() -> None:
    for name, (columns, predicate) in INDEXES.items():
        op.create_index(name, "jobs", columns, postgresql_where=sa.text(predicate), sqlite_where=sa.text(predicate))
    op.drop_index("ix_jobs_state_queue_priority_created_at", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_state_queue_priority_created_at", "jobs", ["state", "queue", "priority", "created_at"])
    for name in INDEXES:
        op.drop_index(name, table_name="jobs")
