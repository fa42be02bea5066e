"""Fixtures shared by every test: real PostgreSQL, Redis and S3, and a settings object pointing at them."""

from __future__ import annotations

import os

# One torch thread per process: the tests run a scheduler, Celery workers and the test process side by side on two
# cores, and torch's default of one thread per core made renders about 10× slower under that contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import Settings
from tests.services import (
    S3Server,
    fresh_postgres_database,
    isolated_redis_database,
    running_s3_server,
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database created for this test session and dropped after it."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database (by number) that this test session has to itself."""
    with isolated_redis_database() as url:
        yield url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Credentials for the moto server in the environment, where boto3 looks for them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    return s3_server


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Settings:
    """Settings of the embedded default, in a fresh data folder."""
    return Settings(data_dir=tmp_path / "data", _env_file=None).check()
