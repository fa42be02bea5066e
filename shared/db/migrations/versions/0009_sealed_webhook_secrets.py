"""Sealed webhook secrets: room for a secret stored sealed.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

With RENDERFARM_WEBHOOK_SECRETS_KEY set, a tenant's signing secret is stored sealed (shared/secret_box.py: a Fernet
token, about 170 characters for a `whsec_` secret), longer than the 128 characters `tenant_webhooks.secret` and
`previous_secret` had. Both become 512. Unsealed secrets are unchanged, and sealed ones are written on first read.

SQLite keeps no length on VARCHAR, but the table is rebuilt in batch mode all the same so that its declared
schema matches the models. Frozen like 0001: column types are repeated here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _resize(length_from: int, length_to: int) -> None:
    with op.batch_alter_table("tenant_webhooks") as table:
        table.alter_column("secret", type_=sa.String(length_to), existing_type=sa.String(length_from), nullable=False)
        table.alter_column(
            "previous_secret", type_=sa.String(length_to), existing_type=sa.String(length_from), nullable=True
        )


def upgrade() -> None:
    _resize(128, 512)


def downgrade() -> None:
    # Only sound while every stored secret is unsealed (sealed ones do not fit 128 characters): rotate or clear the
    # key's secrets first. PostgreSQL refuses the change otherwise, naming the column.
    _resize(512, 128)
