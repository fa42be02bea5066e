"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL, and are idempotent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from shared.db import current_revision, head_revision, make_engine, upgrade
from shared.db.migrate import alembic_config
from shared.db.tables import metadata
from tests.services import fresh_postgres_database

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all. The SQLite file's folder does not exist yet: upgrade must create it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'not' / 'yet' / 'renderfarm.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


def schema_differences(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_builds_the_models_schema(empty_database_url: str) -> None:
    assert current_revision(empty_database_url) is None
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()
    assert {"jobs", "artifacts", "assets", "batches"} <= table_names(empty_database_url)
    assert schema_differences(empty_database_url) == []


def test_upgrade_twice_is_a_no_op(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO batches (id, tenant, created_at, requested, mode, manifest) "
                    "VALUES (:id, 't', :now, 1, 'list', '[]')"
                ),
                {"id": "0" * 32, "now": "2030-01-01 00:00:00.000000"},
            )
    finally:
        engine.dispose()
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()
    assert schema_differences(empty_database_url) == []
    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM batches")).scalar_one() == 1  # data kept
    finally:
        engine.dispose()


def test_compare_notices_a_model_change(empty_database_url: str) -> None:
    """Guards the guard: a column the migrations lack shows up as a difference."""
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE assets ADD COLUMN extra INTEGER"))
    finally:
        engine.dispose()
    differences = schema_differences(empty_database_url)
    assert any(diff[0] == "remove_column" and diff[2] == "assets" for diff in differences), differences


def test_upgrade_of_an_unreachable_database_is_database_unavailable() -> None:
    from shared.errors import DatabaseUnavailable

    with pytest.raises(DatabaseUnavailable):
        upgrade("postgresql+psycopg://postgres@127.0.0.1:1/nothing")


def index_definitions(url: str) -> dict[str, str]:
    """The jobs table's index definitions as the database keeps them (SQL text, lower case)."""
    engine = make_engine(url)
    query = (
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'"
        if url.startswith("postgresql")
        else "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' AND sql IS NOT NULL"
    )
    try:
        with engine.connect() as conn:
            return {name: definition.lower() for name, definition in conn.execute(sa.text(query))}
    finally:
        engine.dispose()


def test_the_queued_jobs_indexes_are_partial(empty_database_url: str) -> None:
    """Alembic's comparison ignores index predicates, so they are checked here: each holds only the rows it must."""
    upgrade(empty_database_url)
    definitions = index_definitions(empty_database_url)
    assert "ix_jobs_state_queue_priority_created_at" not in definitions  # replaced by ix_jobs_queued_order
    for name in ("ix_jobs_queued_order", "ix_jobs_queued_tenant", "ix_jobs_undispatched", "ix_jobs_in_flight"):
        where = definitions[name].partition(" where ")[2]
        assert "state" in where, definitions[name]
        assert "'queued'" in where, definitions[name]
    assert "dispatched_at is null" in definitions["ix_jobs_undispatched"]
    assert "dispatched_at is not null" in definitions["ix_jobs_in_flight"]


RETRY_COLUMNS = {"retry_at", "outage_since", "storage_swept_at", "outage_requeues"}


def jobs_columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {column["name"] for column in sa.inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()


def test_migration_0004_is_reversible(empty_database_url: str) -> None:
    """0004 (retries and outages, issue 15) goes down to 0003 and up again, keeping rows and the partial indexes."""
    upgrade(empty_database_url)
    assert jobs_columns(empty_database_url) >= RETRY_COLUMNS
    indexes_at_head = index_definitions(empty_database_url)

    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0003")
    finally:
        engine.dispose()
    assert current_revision(empty_database_url) == "0003"
    assert not RETRY_COLUMNS & jobs_columns(empty_database_url)
    later = {"ix_jobs_unswept", *RETENTION_JOB_INDEXES, "ix_jobs_tenant_state"}  # made by 0004, 0007 and 0011
    before_0004 = {name: text for name, text in indexes_at_head.items() if name not in later}
    assert index_definitions(empty_database_url) == before_0004

    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()
    assert schema_differences(empty_database_url) == []
    assert index_definitions(empty_database_url) == indexes_at_head


RETENTION_JOB_INDEXES = frozenset({"ix_jobs_finished", "ix_jobs_results_stored"})


def test_migration_0007_is_reversible(empty_database_url: str) -> None:
    """0007 (retention) goes down to 0006 and up again: its column, tombstone table and partial indexes."""
    upgrade(empty_database_url)
    indexes_at_head = index_definitions(empty_database_url)
    assert set(indexes_at_head) >= RETENTION_JOB_INDEXES
    assert "where" in indexes_at_head["ix_jobs_results_stored"]
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0006")
    finally:
        engine.dispose()
    assert "results_purged_at" not in jobs_columns(empty_database_url)
    assert not RETENTION_JOB_INDEXES & set(index_definitions(empty_database_url))
    engine = make_engine(empty_database_url)
    try:
        assert "purged_jobs" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    upgrade(empty_database_url)
    assert schema_differences(empty_database_url) == []
    assert index_definitions(empty_database_url) == indexes_at_head


def announcement_columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {column["name"] for column in sa.inspect(engine).get_columns("worker_announcements")}
    finally:
        engine.dispose()


def test_migration_0008_is_reversible(empty_database_url: str) -> None:
    """0008 (worker status) goes down to 0007 and up again: its nullable `status` column of the announcements."""
    upgrade(empty_database_url)
    assert "status" in announcement_columns(empty_database_url)
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0007")
    finally:
        engine.dispose()
    assert current_revision(empty_database_url) == "0007"
    assert "status" not in announcement_columns(empty_database_url)
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()
    assert schema_differences(empty_database_url) == []


def secret_lengths(url: str) -> dict[str, int | None]:
    engine = make_engine(url)
    try:
        columns = sa.inspect(engine).get_columns("tenant_webhooks")
        return {c["name"]: getattr(c["type"], "length", None) for c in columns if "secret" in c["name"]}
    finally:
        engine.dispose()


def test_migration_0009_widens_the_secret_columns_and_keeps_the_secrets(empty_database_url: str) -> None:
    """0009 makes room for a sealed secret (shared/secret_box.py); a secret stored before it survives both ways."""
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0008")
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO tenant_webhooks (tenant, secret, previous_secret, rotated_at) "
                    "VALUES ('alice', 'whsec_plain', NULL, CURRENT_TIMESTAMP)"
                )
            )
    finally:
        engine.dispose()
    upgrade(empty_database_url)
    lengths = secret_lengths(empty_database_url)
    if lengths["secret"] is not None:  # SQLite reports the declared length too; None only where none is kept
        assert lengths == {"secret": 512, "previous_secret": 512}
    assert schema_differences(empty_database_url) == []
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE tenant_webhooks SET previous_secret = :sealed"), {"sealed": "x" * 300})
        with engine.begin() as connection:
            secret = connection.execute(sa.text("SELECT secret FROM tenant_webhooks")).scalar_one()
            connection.execute(sa.text("UPDATE tenant_webhooks SET previous_secret = NULL"))
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0008")
    finally:
        engine.dispose()
    assert secret == "whsec_plain"
    assert current_revision(empty_database_url) == "0008"
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()
