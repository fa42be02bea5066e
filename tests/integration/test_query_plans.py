"""The reads made per status request, per submission and per dispatch round cost what they need, not the backlog.

With thousands of queued jobs, PostgreSQL's own `EXPLAIN ANALYZE` of each statement `shared.db` sends must show
at most a bounded number of rows read from `jobs` (the cap, or one index probe per queue). Before the partial
indexes of migration 0002 and the capped counts, each of these read every queued job (bench/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from shared.db import Database, make_engine, upgrade
from shared.db.rows import NewJob
from tests.databases import insert_batch
from tests.services import fresh_postgres_database

pytestmark = pytest.mark.integration

BACKLOG = 6000  # queued jobs of one tenant in one queue
CAP = 100


@pytest.fixture(scope="module")
def backlog_engine() -> Iterator[sa.Engine]:
    """An engine on a database holding the backlog (the tests watch the statements sent on it)."""
    with fresh_postgres_database() as url:
        upgrade(url)
        engine = make_engine(url)
        db = Database(engine)
        items = [
            NewJob(task_id=f"job-{i}", request={"seed": i}, request_hash=hashlib.sha256(b"%d" % i).hexdigest())
            for i in range(BACKLOG)
        ]
        insert_batch(db, "alice", items)
        insert_batch(db, "bob", items[:10])
        insert_batch(db, "carol", items)  # finished jobs: most of a real table
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE jobs SET state = 'succeeded' WHERE tenant = 'carol'"))
            conn.execute(sa.text("ANALYZE jobs"))
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def backlog_db(backlog_engine: sa.Engine) -> Database:
    return Database(backlog_engine)


def rows_read_from_jobs(engine: sa.Engine, call: Callable[[], Any]) -> list[int]:
    """Run `call`; EXPLAIN ANALYZE every SELECT it sent again and sum the rows its scans of `jobs` examined."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        call()
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert sent, "the call sent no SELECT"
    totals = []
    with engine.connect() as conn:
        for statement, parameters in sent:
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).scalar_one()
            plan = json.loads(plan) if isinstance(plan, str) else plan
            totals.append(_rows_from_jobs(plan[0]["Plan"]))
    return totals


def _rows_from_jobs(node: dict[str, Any]) -> int:
    """Rows a plan node of `jobs` examined: those it returned and those its filter removed, over all its loops."""
    own = 0
    if node.get("Relation Name") == "jobs":
        examined = int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0))
        own = examined * int(node.get("Actual Loops", 1))
    return own + sum(_rows_from_jobs(child) for child in node.get("Plans", []))


def test_queue_position_reads_at_most_the_cap(backlog_engine: sa.Engine, backlog_db: Database) -> None:
    last = backlog_db.jobs.get("alice", f"job-{BACKLOG - 1}")
    assert backlog_db.stats.queue_position(last, cap=CAP) == CAP
    assert backlog_db.stats.queue_position(last) == BACKLOG - 1  # uncapped: exact (bob's jobs came later)
    (rows,) = rows_read_from_jobs(backlog_engine, lambda: backlog_db.stats.queue_position(last, cap=CAP))
    assert rows <= 2 * CAP


def test_a_queued_jobs_standing_reads_at_most_the_cap(backlog_engine: sa.Engine, backlog_db: Database) -> None:
    """The waiting reason's read (scheduler/waiting.py): capped counts in one statement (bob's jobs wait too)."""
    last = backlog_db.jobs.get("alice", f"job-{BACKLOG - 1}")
    standing = backlog_db.stats.queue_standing(last, cap=CAP)
    assert standing is not None
    assert (standing.higher_priority, standing.same_priority, standing.own_tenant) == (0, CAP, CAP)
    assert standing.other_tenants_waiting
    (rows,) = rows_read_from_jobs(backlog_engine, lambda: backlog_db.stats.queue_standing(last, cap=CAP))
    assert rows <= 3 * CAP + 2


def test_a_tenants_queued_count_reads_at_most_the_cap(backlog_engine: sa.Engine, backlog_db: Database) -> None:
    assert backlog_db.stats.queued_count("alice", cap=CAP) == CAP
    assert backlog_db.stats.queued_count("bob", cap=CAP) == 10
    (rows,) = rows_read_from_jobs(backlog_engine, lambda: backlog_db.stats.queued_count("alice", cap=CAP))
    assert rows <= CAP


def test_the_dispatchers_outbox_read_does_not_count_the_backlog(
    backlog_engine: sa.Engine, backlog_db: Database
) -> None:
    assert backlog_db.outbox.outbox_by_queue() == {"default": (True, 0)}
    waiting, in_flight = rows_read_from_jobs(backlog_engine, backlog_db.outbox.outbox_by_queue)
    assert waiting <= 10  # one index probe per queue name (and one more to find there is no next)
    assert in_flight == 0


def test_the_reconcilers_sweep_read_does_not_scan_finished_jobs(
    backlog_engine: sa.Engine, backlog_db: Database
) -> None:
    """Every reconciler run asks which finished jobs still need their uncommitted uploads swept (migration 0004):
    the partial index `ix_jobs_unswept` holds only those, not the table's finished successes."""
    assert backlog_db.leases.unswept_finished(0.0) == []
    (rows,) = rows_read_from_jobs(backlog_engine, lambda: backlog_db.leases.unswept_finished(0.0))
    assert rows <= 10


def test_the_retention_purges_reads_do_not_scan_the_table(backlog_engine: sa.Engine, backlog_db: Database) -> None:
    """Every reconciler run asks which terminal jobs are past their retention (migration 0008): the oldest few past
    the cutoff through `ix_jobs_results_stored` / `ix_jobs_finished`, never the queued backlog nor every finished
    job. carol's 6000 jobs finished now, outside any batch (the fixture's one 6000-job batch would make PostgreSQL
    probe it by a sequential scan; per-job batch probes use the `(batch_id, state)` index on real statistics);
    alice's 6000 are queued."""
    from datetime import UTC, datetime, timedelta

    with backlog_engine.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET finished_at = now(), batch_id = NULL WHERE tenant = 'carol'"))
        conn.execute(sa.text("ANALYZE jobs"))
    retention = backlog_db.retention
    now = datetime.now(UTC)
    nothing_due = now - timedelta(days=1)
    everything_due = now + timedelta(days=1)
    for due in (retention.results_due, retention.jobs_due):
        assert due((), True, nothing_due, CAP) == []
        (rows,) = rows_read_from_jobs(backlog_engine, lambda due=due: due((), True, nothing_due, CAP))  # type: ignore[misc]
        assert rows <= 10
        found = due(("alice",), True, everything_due, CAP)  # every tenant but alice: carol's, oldest first
        assert len(found) == CAP
        assert {row.tenant for row in found} == {"carol"}
        (rows,) = rows_read_from_jobs(backlog_engine, lambda due=due: due(("alice",), True, everything_due, CAP))  # type: ignore[misc]
        assert rows <= CAP + 10


def test_a_tenants_jobs_of_one_state_read_only_that_state(backlog_engine: sa.Engine, backlog_db: Database) -> None:
    """`GET /v1/jobs?state=` and the dashboard's `?state=`: a range scan of `ix_jobs_tenant_state` (migration 0011)
    in the list's order, not the tenant's whole history filtered (carol has 6000 other jobs, none failed)."""
    from shared.states import JobState

    def failed() -> Any:
        return backlog_db.jobs.list_jobs("carol", state=JobState.FAILED, limit=50)

    assert failed() == ([], None)
    (rows,) = rows_read_from_jobs(backlog_engine, failed)
    assert rows <= 2

    def newest_queued() -> Any:
        return backlog_db.jobs.list_jobs("alice", state=JobState.QUEUED, limit=50)

    page, cursor = newest_queued()
    assert len(page) == 50
    assert cursor is not None
    (rows,) = rows_read_from_jobs(backlog_engine, newest_queued)
    assert rows <= 51


def test_the_dashboards_counts_read_at_most_the_cap_per_tenant_and_state(
    backlog_engine: sa.Engine, backlog_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.db.stats
    from shared.states import JobState

    counts = backlog_db.stats.tenant_counts(("alice", "bob", "carol"), cap=CAP)
    assert counts[JobState.QUEUED] == (CAP + 10, True)  # alice's stopped at the cap, bob's 10
    assert counts[JobState.FAILED] == (0, False)
    # Many tenants are counted in several statements (PostgreSQL's select list has a limit), to the same sums.
    monkeypatch.setattr(shared.db.stats, "TENANTS_PER_COUNT", 2)
    assert backlog_db.stats.tenant_counts(("alice", "bob", "carol"), cap=CAP) == counts
    monkeypatch.undo()
    (rows,) = rows_read_from_jobs(
        backlog_engine, lambda: backlog_db.stats.tenant_counts(("alice", "bob", "carol"), cap=CAP)
    )
    assert rows <= 2 * CAP + 10 + 20  # the two capped states, bob's ten, an index probe per empty count
