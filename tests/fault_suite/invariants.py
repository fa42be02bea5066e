"""What must hold after any fault, checked from the outside: the database's rows, the storage's listing and the
workers' logs (the killed workers' too).

- Every job ends in exactly one terminal state (and is still one row: the (tenant, task_id) key is unique).
- A succeeded job's results exist exactly once: its artifact rows are the committed attempt's, and the storage
  holds exactly those keys under the job's folder.
- Nothing is orphaned: no object under a job's folder outside its committed attempt (a failed or canceled job has
  none), no object under a folder that no job owns.
- No job is run twice: at most one worker reports a success for a job (a second would be a duplicate render that
  the fence should have refused before it was reported).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from shared.db.tables import Artifact, Job
from shared.states import TERMINAL_STATES

# A worker's line for each render it committed; it names the job by its task id (unique per run of the suite).
_SUCCESS_LINE = re.compile(r"job (\S+) attempt \d+: succeeded")
ASSETS_SEGMENT = "~assets"


@dataclass
class Verdict:
    """The invariants' findings over a set of jobs; `problems` empty means every invariant held."""

    jobs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)  # task ids without a row, or not in a terminal state
    missing_results: list[str] = field(default_factory=list)  # succeeded without exactly its attempt's objects
    run_twice: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # object keys no committed attempt owns
    max_attempt: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # task id -> error code, for jobs that failed

    @property
    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} jobs lost or not terminal: {self.lost[:10]}")
        if self.missing_results:
            found.append(
                f"{len(self.missing_results)} succeeded jobs without exactly one result set: "
                f"{self.missing_results[:10]}"
            )
        if self.run_twice:
            found.append(f"{len(self.run_twice)} jobs reported succeeded more than once: {self.run_twice[:10]}")
        if self.orphans:
            found.append(f"{len(self.orphans)} orphan objects: {self.orphans[:10]}")
        return found

    def figures(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("lost", "missing_results", "run_twice", "orphans"):
            out[name] = len(out[name])
        out["failures"] = dict(Counter(self.failures.values()))
        return out


def check_jobs(
    engine: sa.Engine,
    keys: Sequence[str],
    tenant: str,
    task_ids: Iterable[str],
    worker_logs: Iterable[str],
) -> Verdict:
    """Check the invariants for `task_ids` of `tenant`. `keys` is the storage's listing (keys relative to the farm's
    prefix), `worker_logs` the text of every worker process's log."""
    wanted = list(dict.fromkeys(task_ids))
    verdict = Verdict(jobs=len(wanted))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(Job.id, Job.task_id, Job.state, Job.attempt, Job.error).where(
                Job.tenant == tenant, Job.task_id.in_(wanted)
            )
        ).all()
        artifacts = conn.execute(
            sa.select(Artifact.job_id, Artifact.attempt, Artifact.storage_key).where(
                Artifact.job_id.in_([row.id for row in rows])
            )
        ).all()
    by_task = {row.task_id: row for row in rows}
    keys_by_job: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == tenant and parts[1] != ASSETS_SEGMENT:
            keys_by_job.setdefault(parts[1], set()).add(key)
    committed: dict[Any, list[Any]] = {}
    for artifact in artifacts:
        committed.setdefault(artifact.job_id, []).append(artifact)
    successes = Counter(match.group(1) for text in worker_logs for match in _SUCCESS_LINE.finditer(text))

    states: Counter[str] = Counter()
    for task_id in wanted:
        row = by_task.get(task_id)
        if row is None or row.state not in {state.value for state in TERMINAL_STATES}:
            verdict.lost.append(task_id)
            if row is not None:
                states[row.state] += 1
            continue
        states[row.state] += 1
        verdict.max_attempt = max(verdict.max_attempt, row.attempt)
        stored = keys_by_job.pop(task_id, set())
        if row.state == "succeeded":
            records = committed.get(row.id, [])
            record_keys = {record.storage_key for record in records}
            if not records or {r.attempt for r in records} != {row.attempt} or not record_keys <= stored:
                verdict.missing_results.append(task_id)
            verdict.orphans.extend(sorted(stored - record_keys))
        else:
            verdict.orphans.extend(sorted(stored))
            if row.state == "failed":
                verdict.failures[task_id] = str((row.error or {}).get("code", ""))
        if successes[task_id] > 1:
            verdict.run_twice.append(task_id)
    verdict.states = dict(states)
    return verdict


def orphans_outside_jobs(engine: sa.Engine, keys: Sequence[str], tenant: str) -> list[str]:
    """Objects under a job folder of `tenant` whose job does not exist at all."""
    folders = {key.split("/")[1] for key in keys if key.startswith(f"{tenant}/") and key.count("/") >= 2}
    folders.discard(ASSETS_SEGMENT)
    if not folders:
        return []
    with engine.connect() as conn:
        known = set(
            conn.scalars(sa.select(Job.task_id).where(Job.tenant == tenant, Job.task_id.in_(sorted(folders)))).all()
        )
    return sorted(key for key in keys if key.split("/")[1] in folders - known)


def unfinished_jobs(engine: sa.Engine) -> int:
    """Jobs of any tenant not in a terminal state."""
    with engine.connect() as conn:
        count = conn.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.state.in_(["queued", "running"])))
    return int(count or 0)
