"""Uploaded input images, by tenant and content hash (api.md "Submit")."""

from __future__ import annotations

import sqlalchemy as sa

from shared.db.rows import AssetRow, plain_row
from shared.db.tables import assets
from shared.db.transaction import Operations
from shared.errors import NotFound


class Assets(Operations):
    """The tenant's uploaded images: record one (idempotent) and look one up."""

    def add(
        self,
        tenant: str,
        sha256: str,
        *,
        storage_key: str,
        size_bytes: int,
        mime: str,
        width: int,
        height: int,
    ) -> tuple[AssetRow, bool]:
        """Record an uploaded input image; returns `(asset, created)`. Uploading the same bytes again changes nothing
        but `created_at`, which becomes the time of the latest upload: retention counts from it (shared.retention)."""
        values = {
            "tenant": tenant,
            "sha256": sha256,
            "storage_key": storage_key,
            "bytes": size_bytes,
            "mime": mime,
            "width": width,
            "height": height,
            "created_at": self._tx.clock(),
        }
        with self._tx.begin() as conn:
            row, created = self._tx.insert_or_get(conn, assets, values, [assets.c.tenant, assets.c.sha256])
            if not created:
                same = [assets.c.tenant == tenant, assets.c.sha256 == sha256]
                conn.execute(sa.update(assets).where(*same).values(created_at=values["created_at"]))
                row = conn.execute(sa.select(assets).where(*same)).mappings().one()
        return plain_row(AssetRow, row), created

    def get(self, tenant: str, sha256: str) -> AssetRow:
        """The tenant's asset with this sha256. Raises `NotFound` for an unknown one and another tenant's alike."""
        statement = sa.select(assets).where(assets.c.tenant == tenant, assets.c.sha256 == sha256)
        missing = NotFound(f"no asset with sha256 {sha256}", code="asset_not_found")
        return plain_row(AssetRow, self._tx.read_one(statement, missing))
