"""The farm's database: tables, migrations, engines and the one repository every process writes through.

Typical use: `upgrade(url)` once at start (idempotent; `renderfarm db upgrade`), then
`JobRepository(make_engine(url))` for every read and write; `engine.dispose()` at shutdown.
"""

from __future__ import annotations

from shared.db.engine import make_engine, session_factory
from shared.db.migrate import current_revision, head_revision, upgrade
from shared.db.repository import JobRepository
from shared.db.rows import (
    ArtifactRecord,
    ArtifactRow,
    AssetRow,
    BatchRow,
    BulkResult,
    JobError,
    JobRow,
    LeaseStatus,
    NewJob,
)

__all__ = [
    "ArtifactRecord",
    "ArtifactRow",
    "AssetRow",
    "BatchRow",
    "BulkResult",
    "JobError",
    "JobRepository",
    "JobRow",
    "LeaseStatus",
    "NewJob",
    "current_revision",
    "head_revision",
    "make_engine",
    "session_factory",
    "upgrade",
]
