"""Fixtures of the dispatcher and reconciler tests: each test on SQLite and on PostgreSQL, a fake clock, the broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.config import Settings
from shared.db import JobRepository
from tests.dispatch import FakeClock, cluster_settings, prepare_database, repository


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    postgres_url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return prepare_database(request.param, tmp_path, postgres_url)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Cluster settings on the test's Redis; the reconciler's loop runs every 50 ms."""
    return cluster_settings(redis_url, reconcile_interval_s=0.05)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def repo(database_url: str, clock: FakeClock) -> Iterator[JobRepository]:
    with repository(database_url, clock) as repo:
        yield repo


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """The test's Redis database, emptied before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
