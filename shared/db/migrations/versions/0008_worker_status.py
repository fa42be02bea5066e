"""Worker status: what each worker process is doing now, carried by its announcement.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

`worker_announcements.status`: a small JSON object the worker rewrites every heartbeat (`worker.status`): its GPU,
the models it has loaded, the job it is rendering (task id, step, total steps), its step speed and how many times it
ran out of GPU memory since it started. Nullable: a worker of an older version announces none, and the dashboard
shows a dash (docs/dashboard.md "Workers").

Frozen like 0001: column types are repeated here, not imported from `shared.db.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("worker_announcements", sa.Column("status", JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("worker_announcements", "status")
