"""Real services for the tests: a fresh PostgreSQL database, an isolated Redis database, an S3 server.

The tests never skip because a service is missing: `make test` starts PostgreSQL and Redis first
(scripts/ensure-services.sh), and a test that cannot reach them fails with a message that says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.config import Settings
from tests.processes import free_loopback_port, stop_process_group, wait_until_http_ready

POSTGRES_ADMIN_URL = os.environ.get(
    "RENDERFARM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("RENDERFARM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
SERVICE_START_TIMEOUT_S = 30.0
REDIS_TEST_DBS = range(1, 16)  # db 0 holds only the claim markers below
REDIS_CLAIM_TTL_S = 3 * 3600  # a claim expires on its own, so a run that was killed does not hold a database forever


def fail_unreachable(service: str, detail: object) -> None:
    pytest.fail(
        f"{service} is not reachable ({detail}). Run `make test`, which starts it "
        "(scripts/ensure-services.sh), or start it yourself.",
        pytrace=False,
    )


@contextmanager
def fresh_postgres_database(admin_url: str = POSTGRES_ADMIN_URL, prefix: str = "renderfarm_test") -> Iterator[str]:
    """Create a database `<prefix>_<random>`, yield its SQLAlchemy URL, drop it (WITH FORCE) afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        fail_unreachable("PostgreSQL", exc.orig)
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def isolated_redis_database(
    base_url: str = REDIS_BASE_URL, numbers: Sequence[int] = REDIS_TEST_DBS, owner: str = "renderfarm-test-run"
) -> Iterator[str]:
    """Claim a Redis database number no other test or benchmark run uses (the first free one of `numbers`), flush
    it, yield its URL, flush and free it. The claims live in db 0, shared by the tests and the benchmarks."""
    import redis

    control = redis.Redis.from_url(f"{base_url}/0")
    try:
        control.ping()
    except redis.RedisError as exc:
        fail_unreachable("Redis", exc)
    marker = f"{owner}:{uuid.uuid4().hex}"
    for db in numbers:
        if control.set(f"renderfarm-test-db:{db}", marker, nx=True, ex=REDIS_CLAIM_TTL_S):
            break
    else:
        pytest.fail("every Redis test database (1-15) is claimed by another test or benchmark run", pytrace=False)
    url = f"{base_url}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        if control.get(f"renderfarm-test-db:{db}") == marker.encode():
            control.delete(f"renderfarm-test-db:{db}")
        control.close()


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    region: str = "us-east-1"
    access_key_id: str = "testing"
    secret_access_key: str = "testing"  # moto accepts any credentials

    def client(self) -> Any:
        """A boto3 S3 client for the server; the caller closes it."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def new_bucket(self, prefix: str = "rf-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name


@contextmanager
def running_s3_server(start_timeout_s: float = SERVICE_START_TIMEOUT_S) -> Iterator[S3Server]:
    """moto's S3-compatible HTTP server on a free loopback port, in its own process group."""
    port = free_loopback_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_http_ready(f"{endpoint}/moto-api/", lambda: process.poll() is None, start_timeout_s)
        yield S3Server(endpoint)
    finally:
        stop_process_group(process, timeout_s=10)


def farm_environment(
    database_url: str, redis_url: str, s3: S3Server, bucket: str, api_tokens: str, data_dir: Path, **more: str
) -> dict[str, str]:
    """The environment of a farm's processes (scheduler, workers) on these services: this process's environment
    without its RENDERFARM_* variables, one torch thread, unbuffered output, the S3 credentials, the RENDERFARM_*
    settings that point at the services, and `more` (full variable names) on top."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RENDERFARM_")}
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "AWS_ACCESS_KEY_ID": s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
            "AWS_DEFAULT_REGION": s3.region,
            "RENDERFARM_DATABASE_URL": database_url,
            "RENDERFARM_REDIS_URL": redis_url,
            "RENDERFARM_STORAGE_URL": f"s3://{bucket}/farm",
            "RENDERFARM_S3_ENDPOINT_URL": s3.endpoint_url,
            "RENDERFARM_API_TOKENS": api_tokens,
            "RENDERFARM_DATA_DIR": str(data_dir),
            **more,
        }
    )
    return env


def farm_settings(
    database_url: str, redis_url: str, s3: S3Server, bucket: str, api_tokens: str, data_dir: Path, **more: Any
) -> Settings:
    """The settings `farm_environment` gives a farm's processes, as a `Settings` for the test process itself: its
    own database, Redis and Celery clients, or a farm it runs in-process. `more` are further fields."""
    return Settings(
        _env_file=None,
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_url,
        storage_url=f"s3://{bucket}/farm",
        s3_endpoint_url=s3.endpoint_url,
        api_tokens=api_tokens,
        **more,
    )


def fast_recovery_environment(
    *, lost_grace_s: float, lease_base_s: float, progress_interval_s: float
) -> dict[str, str]:
    """RENDERFARM_* settings for a farm's processes under test: lost jobs are recovered in seconds, not minutes."""
    return {
        "RENDERFARM_RECONCILE_INTERVAL_S": "0.5",
        "RENDERFARM_RECONCILE_LOST_GRACE_S": str(lost_grace_s),
        "RENDERFARM_LEASE_BASE_S": str(lease_base_s),
        "RENDERFARM_PROGRESS_INTERVAL_S": str(progress_interval_s),
        "RENDERFARM_WORKER_SOFT_SHUTDOWN_S": "5",
        "RENDERFARM_METRICS_PORT": "0",  # several workers on one host must not compete for one metrics port
    }
