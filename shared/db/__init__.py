"""The farm's database: tables, migrations, engines and the one door every process reads and writes through.

Typical use: `upgrade(url)` once at start (idempotent; `renderfarm db upgrade`), then `Database.from_url(url)` for
every read and write (`db.jobs`, `db.outbox`, `db.leases`, `db.stats`, `db.batches`, `db.assets`, `db.workers`; see
shared.db.database); `db.close()` at shutdown.
"""

from __future__ import annotations

from shared.db.database import Database
from shared.db.engine import make_engine, session_factory, url_for_display
from shared.db.jobs import MAX_LIST_LIMIT
from shared.db.migrate import current_revision, head_revision, upgrade
from shared.db.rows import (
    ArtifactRecord,
    ArtifactRow,
    AssetRow,
    BatchRow,
    BulkResult,
    FinishedJob,
    JobError,
    JobRow,
    LeaseStatus,
    NewJob,
    QueueCounts,
    QueueStanding,
    WorkerRow,
)
from shared.db.tables import utcnow

__all__ = [
    "MAX_LIST_LIMIT",
    "ArtifactRecord",
    "ArtifactRow",
    "AssetRow",
    "BatchRow",
    "BulkResult",
    "Database",
    "FinishedJob",
    "JobError",
    "JobRow",
    "LeaseStatus",
    "NewJob",
    "QueueCounts",
    "QueueStanding",
    "WorkerRow",
    "current_revision",
    "head_revision",
    "make_engine",
    "session_factory",
    "upgrade",
    "url_for_display",
    "utcnow",
]
