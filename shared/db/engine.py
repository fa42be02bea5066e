"""Engines for the farm's two databases: SQLite (the embedded default) and PostgreSQL (cluster mode).

SQLite is set up so that several threads and processes (the API, the in-process worker, `renderfarm reconcile`) can
share one file safely:

- WAL journal: readers never block the writer and the writer never blocks readers.
- `busy_timeout`: a second writer waits for the lock (up to `SQLITE_BUSY_TIMEOUT_S`) instead of failing at once.
- write transactions start with `BEGIN IMMEDIATE`: the write lock is taken at the start, so a transaction that read
  first cannot fail later with SQLITE_BUSY when it tries to upgrade its lock (the busy handler is not used for that
  case). Read-only work may ask for a plain deferred `BEGIN` with `execution_options(sqlite_begin="DEFERRED")`.
- `foreign_keys=ON`: SQLite ignores foreign keys unless told per connection.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_S = 30.0  # seconds a writer waits for another writer's lock before giving up
POSTGRES_CONNECT_TIMEOUT_S = 10  # seconds; a dead server must surface as DatabaseUnavailable, not a hang
# Connections kept open per engine. The API runs its synchronous routes in up to 40 threads (anyio's default), each
# holding one connection at a time; with SQLAlchemy's default (5 kept + 10 overflow) every request beyond the fifth
# opened and closed a PostgreSQL connection (a backend fork and an authentication each), which made status reads
# under 16 concurrent clients several times slower (bench/RESULTS.md). Connections are opened lazily,
# so a single-threaded worker still holds one or two.
POSTGRES_POOL_SIZE = 20
POSTGRES_MAX_OVERFLOW = 20
SQLITE_BEGIN_OPTION = "sqlite_begin"  # execution option: "IMMEDIATE" (default) or "DEFERRED"
IDLE_PING_S = 5.0  # a pooled PostgreSQL connection idle this long is tested before use (_ping_idle_connections)
_CHECKED_IN_AT = "renderfarm_checked_in_at"  # key in the pool's per-connection info: time.monotonic() of checkin


def normalize_url(database_url: str | URL) -> URL:
    """Parse a database URL and pick the driver the farm ships: psycopg 3 for PostgreSQL.

    `postgres://` and `postgresql://` (which SQLAlchemy would map to psycopg2, not installed) become
    `postgresql+psycopg://`. Raises `sqlalchemy.exc.ArgumentError` for a malformed URL.
    """
    url = make_url(database_url)
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def url_for_display(database_url: str | URL) -> str:
    """The database URL with its password replaced by `***`: what may be printed or logged."""
    return make_url(database_url).render_as_string(hide_password=True)


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def ensure_sqlite_parent(database_url: str | URL) -> None:
    """Create the folder that will hold a SQLite database file (SQLite creates the file, not its folder)."""
    url = normalize_url(database_url)
    if is_sqlite(url):
        path = _sqlite_file(url)
        if path is not None:
            path.expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (which would BEGIN DEFERRED lazily before the first
        # write) so that the "begin" hook below decides how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL is durable against a crash of the process; only an OS crash or power loss may
            # lose the last transactions. FULL would fsync on every commit.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = str(connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")).upper()
        if mode not in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            raise ValueError(f"{SQLITE_BEGIN_OPTION} must be IMMEDIATE, DEFERRED or EXCLUSIVE, not {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(database_url: str | URL, *, echo: bool = False) -> Engine:
    """An engine for `database_url` (sqlite:///PATH or postgresql+psycopg://...), configured for the farm.

    For SQLite, the file's parent folder is created. Call `engine.dispose()` when done with it.
    Raises `sqlalchemy.exc.ArgumentError` for a malformed URL or an unknown driver.
    """
    url = normalize_url(database_url)
    if is_sqlite(url):
        ensure_sqlite_parent(url)
        kwargs: dict[str, Any] = {
            # Connections move between threads through the pool; each is used by one thread at a time.
            "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        }
        if _sqlite_file(url) is None:
            # Every new connection to ":memory:" is a new, empty database: share one connection.
            kwargs["poolclass"] = StaticPool
        engine = sa.create_engine(url, echo=echo, **kwargs)
        _configure_sqlite(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    engine = sa.create_engine(
        url,
        echo=echo,
        pool_size=POSTGRES_POOL_SIZE,
        max_overflow=POSTGRES_MAX_OVERFLOW,
        connect_args=connect_args,
    )
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Test a pooled connection on checkout only when it sat idle for `IDLE_PING_S` or more.

    A connection dropped by a database restart or a proxy's idle timeout is then replaced on checkout instead of
    failing the first statement of a request. SQLAlchemy's `pool_pre_ping` does the same on every checkout: one
    more round trip per transaction, a fifth of a status read's time (bench/RESULTS.md). A connection in steady use
    is not pinged; if the database goes away under it, the statement fails (DatabaseUnavailable, a retryable 503),
    and SQLAlchemy then replaces every pooled connection made before the failure.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_CHECKED_IN_AT)
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_S:
            return  # new, or in steady use
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"pooled connection failed its ping: {exc}") from exc
        if not alive:
            raise sa.exc.DisconnectionError("pooled connection failed its ping")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker bound to `engine`; use `with factory.begin() as session:` so sessions always close."""
    return sessionmaker(bind=engine, expire_on_commit=False)
