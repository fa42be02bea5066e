"""How big the fault suite runs: `ci` (the default, inside CI's time limit on two cores), `nightly`,
or `medium` (the nightly faults with a fifth of its load).

    RENDERFARM_FAULTS=nightly ./dev.sh test tests/fault_suite -m faults     # the nightly size (docs/reliability.md)

The nightly size is the issue's: ≥ 20 SIGKILLs in the kill case, S3 refusing for 30 s and hanging for 60 s, and
5,000 jobs from 50 concurrent SDK clients with kills. CI keeps every case and every invariant and scales only the
amounts: fewer jobs and clients, shorter outages (the worker's outage backoff cap and deadline scaled with them, so
an outage is still many times the backoff cap and well inside the deadline). `RENDERFARM_FAULTS_REPORT=<file>`
writes every case's figures (faults injected, jobs, lost, run twice, orphans, recovery seconds) as JSON lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Final

SIZE_ENV: Final = "RENDERFARM_FAULTS"
REPORT_ENV: Final = "RENDERFARM_FAULTS_REPORT"


@dataclass(frozen=True)
class Size:
    name: str
    workers: int  # supervised stand-in workers
    step_s: float  # stand-in seconds per sampling step (4 steps per job)
    max_attempts: int
    lease_base_s: float
    kill_jobs: int  # jobs of the random-kill case
    kills: int  # SIGKILLs in the random-kill case (the issue: at least 20, counting the two below)
    hold_kills: int  # workers SIGKILLed between a message's receipt and its claim
    s3_refuse_s: float
    s3_hang_s: float
    outage_jobs: int  # jobs in flight during an outage case
    load_jobs: int
    load_clients: int
    load_kills: int
    recovery_timeout_s: float  # the longest a case waits for the farm to settle after its fault

    def farm_settings(self) -> dict[str, str]:
        """RENDERFARM_* settings of every farm process at this size."""
        # The outage deadline outlasts the longest outage of the size by a margin; the backoff cap is a small
        # fraction of the shortest, so a service's return is noticed within seconds.
        outage_deadline_s = 4 * max(self.s3_refuse_s, self.s3_hang_s, 30.0)
        return {
            "RENDERFARM_RECONCILE_INTERVAL_S": "0.5",
            "RENDERFARM_RECONCILE_LOST_GRACE_S": "1",
            "RENDERFARM_LEASE_BASE_S": str(self.lease_base_s),
            "RENDERFARM_PROGRESS_INTERVAL_S": "0.2",
            "RENDERFARM_WORKER_SOFT_SHUTDOWN_S": "10",
            "RENDERFARM_METRICS_PORT": "0",
            "RENDERFARM_MAX_ATTEMPTS": str(self.max_attempts),
            # docs/reliability.md "Outages and retries": retries 0.5, 1, 2, 2 ... s apart; the outage deadline far
            # beyond the longest outage; a stranded message re-published after 5 s; uncommitted uploads swept 1 s
            # after their job finished (the invariants wait for the sweep, with a deadline).
            "RENDERFARM_RETRY_BACKOFF_BASE_S": "0.5",
            "RENDERFARM_RETRY_BACKOFF_MAX_S": "2",
            "RENDERFARM_OUTAGE_DEADLINE_S": str(outage_deadline_s),
            "RENDERFARM_DISPATCH_STRANDED_S": "5",
            "RENDERFARM_ORPHAN_SWEEP_GRACE_S": "1",
            # One tenant submits thousands of jobs from 50 clients: rate limits (0: off) are not tested here.
            "RENDERFARM_RATE_LIMIT_TOKEN_REQUESTS": "0",
            "RENDERFARM_RATE_LIMIT_ADDRESS_REQUESTS": "0",
        }


CI: Final = Size(
    name="ci",
    workers=3,
    step_s=0.05,
    max_attempts=4,
    lease_base_s=6.0,
    kill_jobs=60,
    kills=13,  # + 3 between receipt and claim + 4 in the load case: 20 kills in all
    hold_kills=3,
    s3_refuse_s=10.0,
    s3_hang_s=15.0,
    outage_jobs=12,
    load_jobs=200,
    load_clients=10,
    load_kills=4,
    recovery_timeout_s=120.0,
)

NIGHTLY: Final = Size(
    name="nightly",
    workers=4,
    step_s=0.05,
    max_attempts=4,
    lease_base_s=6.0,
    kill_jobs=200,
    kills=40,
    hold_kills=5,
    s3_refuse_s=30.0,
    s3_hang_s=60.0,
    outage_jobs=40,
    load_jobs=5000,
    load_clients=50,
    load_kills=20,
    recovery_timeout_s=600.0,
)

# The nightly size's faults (kills, outage durations) with a fifth of its load: what a developer's machine runs in
# about a quarter of an hour.
MEDIUM: Final = replace(NIGHTLY, name="medium", load_jobs=1000)

SIZES: Final = {size.name: size for size in (CI, MEDIUM, NIGHTLY)}


def chosen_size() -> Size:
    name = os.environ.get(SIZE_ENV, "ci").strip() or "ci"
    if name not in SIZES:
        raise ValueError(f"{SIZE_ENV}={name!r}: choose one of {sorted(SIZES)}")
    return SIZES[name]
