"""The retention purge (docs/api.md "Retention"): delete what is past its tenant's retention, and nothing else.

Three steps, each bounded by `limit` items per pass (RENDERFARM_PURGE_BATCH_SIZE) and each reading its work list
through an index (shared.db.retention):

1. results: for terminal jobs past the results retention, every stored object under the job's prefix
   (`{tenant}/{task_id}/`: results, overlays, masks of every attempt) is deleted, then its artifact rows, and the
   job is marked `results_purged_at`. Storage first: a row never names an object the purge removed.
2. jobs: terminal jobs past the jobs retention lose their stored objects the same way, then their rows, which
   leave a tombstone (reads answer 410 with the time). A batch whose last jobs these were goes with them, its
   `batch.finished` event included, and leaves a tombstone too.
3. inputs: uploaded assets past the inputs retention that no queued or running job of the tenant names: object
   first, then the row (kept if the same bytes were uploaded again meanwhile).

Never selected: a job that is not terminal, a job of a batch that still has a queued or running job. The purge runs
in the reconciler on every pass (`Reconciler`, when a policy is set) and from `renderfarm-server purge` (or
`renderfarm purge`), where `--dry-run` reports what a pass would delete and deletes nothing. A storage error stops
the pass (nothing is marked that was not deleted); the next pass goes on from there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.db import Database
from shared.retention import RetentionPolicy
from shared.storage import Storage

log = logging.getLogger("scheduler.purge")


@dataclass
class PurgeReport:
    """What one pass purged (or, dry, would purge): task ids as `tenant/task_id`, batches as `tenant/batch_id`,
    assets as `tenant/sha256`, and how many storage objects."""

    dry_run: bool
    results: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    objects: int = 0

    @property
    def empty(self) -> bool:
        return not (self.results or self.jobs or self.inputs or self.batches)

    def to_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "results": self.results,
            "jobs": self.jobs,
            "batches": self.batches,
            "inputs": self.inputs,
            "objects": self.objects,
        }


def purge_once(
    db: Database,
    storage: Storage,
    policy: RetentionPolicy,
    *,
    limit: int,
    dry_run: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> PurgeReport:
    """One bounded pass of the three steps above. Raises what storage or the database raise (the caller logs)."""
    report = PurgeReport(dry_run=dry_run)
    if not policy.enabled:
        return report
    moment = now()
    emptied: set[str] = set()  # prefixes already deleted (or, dry, counted) in this pass
    for tenants, others, cutoff in policy.cutoffs("results", moment):
        rows = db.retention.results_due(tenants, others, cutoff, limit)
        for row in rows:
            emptied.add(f"{row.tenant}/{row.task_id}/")
            report.objects += _delete_prefix(storage, f"{row.tenant}/{row.task_id}/", dry_run)
            if not dry_run:
                db.retention.mark_results_purged([row.id])
            report.results.append(f"{row.tenant}/{row.task_id}")
    for tenants, others, cutoff in policy.cutoffs("jobs", moment):
        rows = db.retention.jobs_due(tenants, others, cutoff, limit)
        for row in rows:
            if row.results_purged_at is None and f"{row.tenant}/{row.task_id}/" not in emptied:
                report.objects += _delete_prefix(storage, f"{row.tenant}/{row.task_id}/", dry_run)
        emptied_batches = db.retention.batches_emptied_by(rows)
        if not dry_run:
            db.retention.delete_jobs(rows)
            emptied_batches = db.retention.delete_empty_batches(emptied_batches)
        report.jobs.extend(f"{row.tenant}/{row.task_id}" for row in rows)
        report.batches.extend(f"{tenant}/{batch_id}" for tenant, batch_id in emptied_batches)
    for tenants, others, cutoff in policy.cutoffs("inputs", moment):
        due = db.retention.assets_due(tenants, others, cutoff, limit)
        in_use: dict[str, set[str]] = {}
        for asset in due:
            if asset.tenant not in in_use:
                in_use[asset.tenant] = db.retention.live_asset_refs(asset.tenant)
            if asset.sha256 in in_use[asset.tenant]:
                continue  # a queued or running job still needs it
            report.objects += 1
            if not dry_run:
                storage.delete(asset.storage_key)
                db.retention.delete_assets(asset.tenant, [asset.sha256], cutoff)
            report.inputs.append(f"{asset.tenant}/{asset.sha256}")
    if not report.empty:
        log.info(
            "retention purge%s: %d result set(s), %d job row(s), %d batch(es), %d input(s), %d object(s)",
            " (dry run)" if dry_run else "",
            len(report.results),
            len(report.jobs),
            len(report.batches),
            len(report.inputs),
            report.objects,
        )
    return report


def _delete_prefix(storage: Storage, prefix: str, dry_run: bool) -> int:
    """Delete (or, dry, count) every object under `prefix`; returns how many."""
    keys = list(storage.list(prefix))
    if not dry_run:
        for key in keys:
            storage.delete(key)
    return len(keys)
