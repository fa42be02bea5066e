"""Databases for the tests that run on both kinds (a migrated SQLite file, an emptied PostgreSQL database), and what
tests do through `shared.db` that production does another way (insert a batch of plain jobs, count
the messages in flight)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from shared.db import BulkResult, Database, JobRow, NewJob, make_engine, upgrade
from shared.db.ids import new_id
from shared.db.tables import metadata
from tests.clock import FakeClock


def empty_tables(database_url: str) -> None:
    """Delete every row of every table (PostgreSQL: one session's database serves many tests)."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            names = ", ".join(table.name for table in metadata.sorted_tables)
            conn.execute(sa.text(f"TRUNCATE {names} CASCADE"))
    finally:
        engine.dispose()


def prepare_database(kind: str, tmp_path: Path, postgres_url: str | None) -> str:
    """A migrated, empty database of `kind` ("sqlite": a temp file; "postgresql": the session's, truncated)."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'renderfarm.db'}"
        upgrade(url)
        return url
    assert postgres_url is not None
    upgrade(postgres_url)  # idempotent: a no-op after the first test
    empty_tables(postgres_url)
    return postgres_url


@contextmanager
def open_database(database_url: str, clock: FakeClock | None = None) -> Iterator[Database]:
    """A database on its own engine (disposed afterwards); `clock` None means the real clock."""
    engine = make_engine(database_url)
    try:
        yield Database(engine) if clock is None else Database(engine, clock=clock)
    finally:
        engine.dispose()


def in_flight(db: Database) -> dict[str, int]:
    """Messages in flight per queue (published, not yet claimed), queues with none left out."""
    return {queue: state.in_flight for queue, state in db.outbox.outbox_by_queue().items() if state.in_flight}


def insert_batch(db: Database, tenant: str, items: Sequence[NewJob]) -> BulkResult:
    """Insert `items` as a new batch of `tenant`'s, the way the API's batch admission does; what was inserted."""
    _, result = db.batches.create_if_absent(tenant, items, mode="list", manifest={}, batch_id=new_id())
    assert result is not None
    return result


def attempt_of(claimed: JobRow | None) -> int | None:
    """The attempt a claim started, None when the claim found nothing to claim."""
    return None if claimed is None else claimed.attempt
