"""The farm's database behind one door: `Database`, whose attributes group the operations by who calls them.

    db = Database.from_url(url)       # or Database(engine) for an engine the caller owns
    db.jobs      create-or-get, reads, cancel (the API)           shared.db.jobs
    db.outbox    dispatch claims and lost-message repair          shared.db.outbox
    db.leases    claim, renew, succeed, fail, requeue (workers)   shared.db.leases
    db.stats     positions, depths, counts, run times, metrics    shared.db.stats
    db.batches   batches and their child jobs                     shared.db.batches
    db.assets    uploaded input images                            shared.db.assets
    db.workers   worker announcements: who serves which queues    shared.db.workers
    db.events    event feed, webhook outbox, webhook secrets      shared.db.events
    db.retention what the retention purge reads and deletes          shared.db.retention

Every operation runs its own transaction (shared.db.transaction) and returns frozen dataclasses (shared.db.rows),
never ORM objects tied to a session. A database that cannot be reached raises `DatabaseUnavailable`. Thread-safe.
Nothing outside shared/db/ touches the tables or opens connections (tests/unit/test_layering.py).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from shared.db.assets import Assets
from shared.db.batches import Batches
from shared.db.engine import make_engine
from shared.db.events import Events
from shared.db.jobs import Jobs
from shared.db.leases import Leases
from shared.db.outbox import Outbox
from shared.db.retention import Retention
from shared.db.stats import Stats
from shared.db.tables import utcnow
from shared.db.transaction import Clock, Transactions
from shared.db.workers import Workers


class Database:
    """The farm's tables on one engine: `.jobs`, `.outbox`, `.leases`, `.stats`, `.batches`, `.assets`, `.workers`."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._tx = Transactions(engine, clock=clock)
        self.jobs = Jobs(self._tx)
        self.outbox = Outbox(self._tx)
        self.leases = Leases(self._tx)
        self.stats = Stats(self._tx)
        self.batches = Batches(self._tx)
        self.assets = Assets(self._tx)
        self.workers = Workers(self._tx)
        self.events = Events(self._tx)
        self.retention = Retention(self._tx)

    @classmethod
    def from_url(cls, database_url: str | URL, *, clock: Clock = utcnow) -> Database:
        """A database on a new engine for `database_url` (see `make_engine`); `close()` disposes of it."""
        return cls(make_engine(database_url), clock=clock)

    def now(self) -> datetime:
        """The time by this database's clock (what it stamps rows with): snapshots compare `retry_at` with it."""
        return self._tx.now()

    def close(self) -> None:
        """Close the engine's pooled connections (call it once, at shutdown, when this database owns the engine)."""
        self._tx.engine.dispose()

    def ping(self) -> None:
        """A round trip to the database (`SELECT 1`). Raises `DatabaseUnavailable` when it cannot be reached."""
        with self._tx.begin(write=False) as conn:
            conn.execute(sa.text("SELECT 1"))

    def schema_revision(self) -> str | None:
        """The database's Alembic revision (None: never migrated). Raises `DatabaseUnavailable` when unreachable."""
        from alembic.runtime.migration import MigrationContext  # Alembic only where the schema is checked

        with self._tx.begin(write=False) as conn:
            return MigrationContext.configure(conn).get_current_revision()
