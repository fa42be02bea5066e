"""The one way into the database: a transaction per operation, and the one translation of driver errors.

Every operation of `shared.db.database.Database` runs in `Transactions.begin()`: its own pooled connection (the
pool and the idle-connection ping are set up by `shared.db.engine.make_engine`), its own transaction, and a
connection failure raised as `DatabaseUnavailable` (a transient error: retry later). Nothing outside `shared/db/`
opens connections.

Times come from the calling process's clock (`clock`, UTC), not from the database, so SQLite and PostgreSQL behave
the same. Leases are minutes long; hosts are expected to run NTP, so a skew of seconds does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, RowMapping

from shared.db.engine import SQLITE_BEGIN_OPTION
from shared.db.tables import utcnow
from shared.errors import DatabaseUnavailable
from shared.redact import redact

Clock = Callable[[], datetime]


@contextmanager
def unavailable_as_error(doing: str = "the database is unavailable") -> Iterator[None]:
    """The one translation of the driver's connection failures into `DatabaseUnavailable` ("`doing`: why")."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        # The driver's text names the server (`connection to server at "10.0.0.5", port 5432`) and this message
        # reaches clients in a 503: only its first line, with addresses and credentials masked.
        detail = redact(str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else "")
        raise DatabaseUnavailable(f"{doing}: {detail}" if detail else doing) from exc


class Transactions:
    """Transactions on one engine (the caller's: dispose of it when done) with one clock. Thread-safe."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock
        self.dialect = engine.dialect.name
        if self.dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported database {self.dialect!r}: use PostgreSQL or SQLite")

    def now(self, now: datetime | None = None) -> datetime:
        """`now` when given (tests and callers that fix the time), else the clock's time."""
        return self.clock() if now is None else now

    @contextmanager
    def begin(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction on its own connection; connection failures become DatabaseUnavailable.

        `write=False` (reads only): on SQLite a deferred BEGIN (readers need no write lock, see shared.db.engine);
        on PostgreSQL no transaction at all (autocommit), which saves the BEGIN and COMMIT round trips. Nothing is
        lost by that: at PostgreSQL's READ COMMITTED every statement takes its own snapshot in a transaction too.
        """
        with unavailable_as_error(), self.engine.connect() as conn:
            if not write:
                if self.dialect == "postgresql":
                    conn.execution_options(isolation_level="AUTOCOMMIT")
                else:
                    conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
            with conn.begin():
                yield conn

    def read_one(self, statement: sa.Select[Any], missing: Exception) -> RowMapping:
        """The first row `statement` reads (in a read-only transaction); raises `missing` when there is none."""
        with self.begin(write=False) as conn:
            row = conn.execute(statement).mappings().first()
        if row is None:
            raise missing
        return row

    def insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT in the dialect's own flavour (both have ON CONFLICT)."""
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    def insert_or_get(
        self, conn: Connection, table: sa.Table, values: Mapping[str, Any], key: Sequence[sa.Column[Any]]
    ) -> tuple[RowMapping, bool]:
        """Insert `values` into `table` unless a row with the same `key` columns exists; `(row, inserted)`.

        Race-safe: INSERT ... ON CONFLICT (key) DO NOTHING RETURNING *, then a read of the existing row. On
        PostgreSQL a conflicting insert waits for the other transaction to commit, and the read (a new statement
        at READ COMMITTED) sees its row.
        """
        statement = (
            self.insert(table).values(values).on_conflict_do_nothing(index_elements=key).returning(*table.columns)
        )
        inserted = conn.execute(statement).mappings().first()
        if inserted is not None:
            return inserted, True
        same_key = [column == values[column.name] for column in key]
        return conn.execute(sa.select(table).where(*same_key)).mappings().one(), False


class Operations:
    """One group of the database's operations (`Database.jobs`, `.outbox`, ...), run on the shared transactions."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx
