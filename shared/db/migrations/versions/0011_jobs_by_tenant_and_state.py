"""Jobs by tenant and state: one tenant's jobs of one state, newest first, without reading its others.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

`ix_jobs_tenant_state (tenant, state, created_at, id)` serves `GET /v1/jobs?state=...` (and the dashboard's
`?state=`) as a range scan in the list's own order with its keyset cursor, and the dashboard's capped counts by state.
Before it, a tenant's failed jobs were found by reading the tenant's whole history through `(tenant, created_at,
id)` and filtering (tests/integration/test_query_plans.py).

Building it reads the jobs table once; on PostgreSQL it blocks writes to `jobs` while it builds, so run this
migration in a quiet moment on a large farm (or build the index first with CREATE INDEX CONCURRENTLY under the same
name: the migration then finds it and only records the revision).

Frozen like 0001: column names are repeated here, not imported from `shared.db.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_jobs_tenant_state"


def upgrade() -> None:
    existing = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("jobs")}
    if NAME not in existing:
        op.create_index(NAME, "jobs", ["tenant", "state", "created_at", "id"])


def downgrade() -> None:
    op.drop_index(NAME, table_name="jobs")
