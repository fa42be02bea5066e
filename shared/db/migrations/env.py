"""Alembic's environment for the farm: migrates the connection handed over by `shared.db.migrate`.

`shared.db.migrate` passes an open connection (inside its transaction, holding the migration lock) in
`config.attributes["connection"]`; the `alembic` command line, for developers writing a new revision, may instead
set `sqlalchemy.url` in its own alembic.ini. Nothing here reads an ini file at run time.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from shared.db.engine import make_engine
from shared.db.tables import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table (future revisions need it).
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_migrations_offline() -> None:
    """Write the SQL to stdout (`alembic upgrade --sql`) instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and no sqlalchemy.url set: use shared.db.migrate.upgrade")
    engine = make_engine(url)
    try:
        with engine.connect() as own_connection:
            _configure(own_connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
