"""PostgreSQL connections: an idle pooled connection killed by the server is replaced on checkout, and reads run
without BEGIN/COMMIT round trips."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from shared.db import Database, make_engine, upgrade
from shared.db import engine as db_engine
from tests.services import fresh_postgres_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        upgrade(url)
        yield url


def backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def terminate(url: str, pid: int) -> None:
    killer = make_engine(url)
    try:
        with killer.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    finally:
        killer.dispose()


def test_an_idle_connection_killed_by_the_server_is_replaced_on_checkout(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(url)
    try:
        engine.pool.dispose()
        first = backend_pid(engine)
        terminate(url, first)
        monkeypatch.setattr(db_engine, "IDLE_PING_S", 0.0)  # every pooled connection counts as idle now
        assert backend_pid(engine) != first  # the ping failed, the pool connected again: no error
    finally:
        engine.dispose()


def test_a_connection_in_steady_use_is_not_pinged(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(url)
    pings: list[Any] = []
    real_ping = engine.dialect.do_ping

    def counted_ping(conn: Any) -> bool:
        pings.append(conn)
        return real_ping(conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counted_ping)
    try:
        for _ in range(5):
            backend_pid(engine)
        assert pings == []
        monkeypatch.setattr(db_engine, "IDLE_PING_S", 0.0)
        backend_pid(engine)
        assert len(pings) == 1
    finally:
        engine.dispose()


def test_reads_run_outside_a_transaction(url: str) -> None:
    """After a read's SELECT the server-side session is idle: no BEGIN was sent, so there is no COMMIT to send."""
    from psycopg.pq import TransactionStatus

    engine = make_engine(url)
    db = Database(engine)
    statuses: list[TransactionStatus] = []

    def after(conn: sa.Connection, *_args: Any) -> None:
        statuses.append(conn.connection.dbapi_connection.info.transaction_status)  # type: ignore[union-attr]

    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        db.stats.queued_count("alice")
        assert statuses == [TransactionStatus.IDLE]
        with engine.connect() as conn:  # the pooled connection is transactional again for the writers
            conn.execute(sa.text("SELECT 1"))
            assert statuses[-1] == TransactionStatus.INTRANS
    finally:
        engine.dispose()
