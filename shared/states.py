"""Job states and the transitions between them.

One enum, one spelling (api.md "Status"). Every transition the farm makes is one conditional UPDATE in
`shared.db.job_updates`; this table is what those UPDATEs are allowed to do, and the tests check both sides of it.

    queued ──claim──▶ running ──▶ succeeded | failed | canceled
       │                 │
       │                 └──lease expired, attempts left──▶ queued
       └──▶ canceled | failed (cancel before start; input that can never run)
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})

ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELED: frozenset(),
}


def sources_of(target: JobState) -> frozenset[JobState]:
    """The states from which `target` may be reached (the `WHERE state IN (...)` of an UPDATE)."""
    return frozenset(source for source, targets in ALLOWED_TRANSITIONS.items() if target in targets)
