"""Fixtures of the dispatcher and reconciler tests: each test on SQLite and on PostgreSQL, a fake clock, the broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.config import Settings
from shared.db import Database
from tests.clock import FakeClock
from tests.databases import open_database, prepare_database
from tests.dispatch import cluster_settings


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
def db(database_url: str, clock: FakeClock) -> Iterator[Database]:
    with open_database(database_url, clock) as db:
        yield db


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """The test's Redis database, emptied before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
