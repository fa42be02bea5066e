"""Worker announcements: which worker processes are alive and what they serve (docs/architecture.md "Routing").

Each worker process owns one row, keyed by its Celery hostname. It writes the row when it starts consuming and
again every heartbeat (`announce`, an upsert that pushes `expires_at` a few heartbeats ahead), and deletes it when
it stops (`withdraw`). A worker killed without warning stops announcing: its row counts no longer once `expires_at`
has passed (`live` ignores it) and is deleted by the next announcement of any worker, so the table holds the live
workers plus, at most, the ones that died within the last few heartbeats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from shared.db.rows import WorkerRow
from shared.db.tables import worker_announcements as table
from shared.db.transaction import Operations


class Workers(Operations):
    """Announce, withdraw and list worker processes (the workers write; the scheduler reads)."""

    def announce(
        self,
        hostname: str,
        *,
        device: str,
        queues: Sequence[str],
        models: Sequence[str],
        ttl_s: float,
        status: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> WorkerRow:
        """Record that `hostname` is alive and serves `queues` and `models` for the next `ttl_s` seconds (its first
        announcement sets `started_at`; later ones keep it), doing what `status` says (`worker.status`; replaced
        by every announcement). Deletes the rows of workers that expired. Raises
        `DatabaseUnavailable` when the database cannot be reached."""
        at = self._tx.now(now)
        values = {
            "hostname": hostname,
            "device": device,
            "queues": list(queues),
            "models": list(models),
            "started_at": at,
            "seen_at": at,
            "expires_at": at + timedelta(seconds=ttl_s),
            "status": None if status is None else dict(status),
        }
        fresh = {key: values[key] for key in ("device", "queues", "models", "seen_at", "expires_at", "status")}
        upsert = (
            self._tx.insert(table)
            .values(values)
            .on_conflict_do_update(index_elements=[table.c.hostname], set_=fresh)
            .returning(*table.columns)
        )
        with self._tx.begin() as conn:
            row = conn.execute(upsert).mappings().one()
            conn.execute(sa.delete(table).where(table.c.expires_at <= at))
        return WorkerRow.from_mapping(row)

    def withdraw(self, hostname: str) -> bool:
        """Delete `hostname`'s announcement (the worker stops); True if there was one."""
        with self._tx.begin() as conn:
            deleted = conn.execute(sa.delete(table).where(table.c.hostname == hostname)).rowcount
        return bool(deleted)

    def live(self, now: datetime | None = None) -> list[WorkerRow]:
        """The announcements that have not expired, by hostname."""
        at = self._tx.now(now)
        statement = sa.select(table).where(table.c.expires_at > at).order_by(table.c.hostname)
        with self._tx.begin(write=False) as conn:
            return [WorkerRow.from_mapping(row) for row in conn.execute(statement).mappings()]
