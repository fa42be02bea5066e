"""The fault suite's fixtures: one farm for the whole suite (starting workers costs tens of seconds on two cores),
handed to each case healthy (every proxy passing, every worker ready, nothing left unfinished), and the report of
figures every case adds to."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fault_suite.farm import Farm
from tests.fault_suite.invariants import unfinished_jobs
from tests.fault_suite.sizes import REPORT_ENV, Size, chosen_size
from tests.services import S3Server, fresh_postgres_database
from tests.waiting import wait_until

LEFTOVER_WAIT_S = 20.0  # seconds a case waits for the jobs of the one before to finish before it cancels them


@pytest.fixture(scope="session")
def size() -> Size:
    return chosen_size()


@pytest.fixture(scope="session")
def fault_farm(size: Size, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    root = tmp_path_factory.mktemp("faults")
    with fresh_postgres_database(prefix="renderfarm_faults") as postgres_url:
        farm = Farm(root, s3_server, size)
        try:
            farm.start(postgres_url)
            yield farm
        finally:
            farm.close()


@pytest.fixture
def farm(fault_farm: Farm, size: Size) -> Farm:
    """The suite's farm, healthy: the proxies pass, every worker is ready and no job of an earlier case is left."""
    for proxy in (fault_farm.postgres_proxy, fault_farm.s3_proxy):
        assert proxy is not None
        proxy.restore()
    fault_farm.wait_workers_ready()
    with contextlib.suppress(AssertionError):
        wait_until(lambda: unfinished_jobs(fault_farm._engine) == 0, LEFTOVER_WAIT_S, "earlier jobs", max_interval=0.5)
    if unfinished_jobs(fault_farm._engine):
        # An earlier case failed and left jobs behind (that case reported it): cancel them, so that they neither
        # hold workers nor are counted against this case.
        with fault_farm.client() as client:
            for state in ("queued", "running"):
                for job in list(client.list(state=state)):
                    client.cancel(job.task_id)
    return fault_farm


class Report:
    """Each case's figures, printed at the end and written as JSON lines to RENDERFARM_FAULTS_REPORT if set."""

    def __init__(self, size: Size) -> None:
        self.size = size
        self.cases: list[dict[str, Any]] = []

    def add(self, case: str, **figures: Any) -> None:
        entry = {"case": case, "size": self.size.name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        entry.update(figures)
        self.cases.append(entry)
        print(f"\n[faults] {json.dumps(entry, default=str)}")
        path = os.environ.get(REPORT_ENV)
        if path:
            with Path(path).open("a") as sink:
                sink.write(json.dumps(entry, default=str) + "\n")


@pytest.fixture(scope="session")
def report(size: Size) -> Report:
    return Report(size)
