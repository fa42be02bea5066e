"""Real services for the tests: a fresh PostgreSQL database, an isolated Redis database, an S3 server.

The tests never skip because a service is missing: `make test` starts PostgreSQL and Redis first
(scripts/ensure-services.sh), and a test that cannot reach them fails with a message that says so.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "RENDERFARM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("RENDERFARM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
SERVICE_START_TIMEOUT_S = 30.0
REDIS_TEST_DBS = range(1, 16)  # db 0 holds only the claim markers below


def fail_unreachable(service: str, detail: object) -> None:
    pytest.fail(
        f"{service} is not reachable ({detail}). Run `make test`, which starts it "
        "(scripts/ensure-services.sh), or start it yourself.",
        pytrace=False,
    )


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create a database with a unique name, yield its SQLAlchemy URL, drop it afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"renderfarm_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        fail_unreachable("PostgreSQL", exc.orig)
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def isolated_redis_database() -> Iterator[str]:
    """Claim a Redis database number no other test run uses, flush it, yield its URL, flush and free it."""
    import redis

    control = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    try:
        control.ping()
    except redis.RedisError as exc:
        fail_unreachable("Redis", exc)
    marker = f"renderfarm-test-run:{uuid.uuid4().hex}"
    for db in REDIS_TEST_DBS:
        # A claim expires on its own, so a run that was killed does not hold a database forever.
        if control.set(f"renderfarm-test-db:{db}", marker, nx=True, ex=3 * 3600):
            break
    else:
        pytest.fail("every Redis test database (1-15) is claimed by another test run", pytrace=False)
    url = f"{REDIS_BASE_URL}/{db}"
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


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_http_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll `url` until it answers; fail early if the process died. Readiness, not a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {process.returncode} before it was ready")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


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

    def new_bucket(self) -> str:
        name = f"rf-test-{uuid.uuid4().hex[:16]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """moto's S3-compatible HTTP server on a free loopback port, in its own process."""
    port = free_loopback_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_http_ready(f"{endpoint}/moto-api/", process, SERVICE_START_TIMEOUT_S)
        yield S3Server(endpoint)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
