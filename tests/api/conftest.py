"""The API against real parts, in both configurations:

- "embedded": SQLite file + local-folder storage + in-process live status;
- "cluster": PostgreSQL + Redis live status + S3 (moto's real HTTP server).

No workers run: jobs stay queued unless a test drives the database itself, as a worker would (`Farm.claim`,
`Farm.succeed_with_artifacts`). Requests go through Starlette's TestClient (the ASGI app in-process, lifespan
included), or through a real uvicorn server where streaming and plain-HTTP downloads need one (`live_server`).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from scheduler.app import create_app
from shared.config import Settings
from shared.db import ArtifactRecord, Database, JobRow, make_engine, upgrade
from shared.images import encode_png
from shared.live import LiveProgress, LiveStatus, LocalLiveStatus, RedisLiveStatus
from shared.queueing import queue_name
from shared.storage import Storage, artifact_key, open_storage
from tests.databases import empty_tables
from tests.processes import free_loopback_port, serve_in_thread
from tests.services import S3Server

ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdefgh"
TOKENS = f"alice:{ALICE_TOKEN},bob:{BOB_TOKEN}"
ALICE = {"Authorization": f"Bearer {ALICE_TOKEN}"}
BOB = {"Authorization": f"Bearer {BOB_TOKEN}"}
LOOPBACK_CLIENT = ("127.0.0.1", 50000)


def png_bytes(
    width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 30, 30), noise: bool = False
) -> bytes:
    """A PNG picture; `noise=True` makes it incompressible (for size limits)."""
    if noise:
        import random

        rng = random.Random(width * 7919 + height)
        image = Image.frombytes("RGB", (width, height), bytes(rng.randrange(256) for _ in range(width * height * 3)))
    else:
        image = Image.new("RGB", (width, height), color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def job_body(image: str, **fields: Any) -> dict[str, Any]:
    """A small valid job with `image` (a reference string) as its one init image."""
    return {"init_images": [image], "prompt": "a red square", "steps": 10, "width": 64, "height": 64, **fields}


@dataclass
class Farm:
    """One app and the real parts it runs on, plus helpers that act like a worker would."""

    kind: str
    settings: Settings
    db: Database
    live: LiveStatus
    storage: Storage
    app: FastAPI
    client: TestClient
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def job_row(self, tenant: str, task_id: str) -> JobRow:
        return self.db.jobs.get(tenant, task_id)

    def claim(self, tenant: str, task_id: str, worker: str = "gpu-0") -> JobRow:
        row = self.job_row(tenant, task_id)
        claimed = self.db.leases.claim(row.id, worker, 60.0)
        assert claimed is not None
        self.live.notify(row.id)
        return self.db.jobs.get_by_id(row.id)

    def progress(self, row: JobRow, step: int, total: int, seq: int) -> LiveProgress:
        now = time.time()
        progress = LiveProgress(
            job_id=str(row.id),
            attempt=row.attempt,
            step=step,
            total_steps=total,
            job_no=0,
            job_count=1,
            fraction=step / total,
            eta_s=float(total - step),
            started_at=now,
            updated_at=now,
            worker=row.worker,
            seq=seq,
        )
        self.live.set_progress(progress)
        return progress

    def succeed_with_artifacts(self, tenant: str, task_id: str) -> tuple[JobRow, dict[str, bytes]]:
        """Claim (if queued), upload a result and a mask, commit them: what a worker does. Returns the row and
        the uploaded bytes by key."""
        row = self.job_row(tenant, task_id)
        if row.state.value == "queued":
            row = self.claim(tenant, task_id)
        uploaded: dict[str, bytes] = {}
        records = []
        for kind, color in (("result", (10, 200, 10)), ("mask", (255, 255, 255))):
            data = encode_png(Image.new("RGB", (64, 64), color), "a red square\nSteps: 10, Seed: 7")
            key = artifact_key(tenant, task_id, row.attempt, kind, 0)
            self.storage.put(key, data, "image/png")
            uploaded[key] = data
            records.append(
                ArtifactRecord(
                    kind=kind,
                    index=0,
                    storage_key=key,
                    sha256=hashlib.sha256(data).hexdigest(),
                    bytes=len(data),
                    width=64,
                    height=64,
                    seed=7,
                    infotext="a red square\nSteps: 10, Seed: 7",
                )
            )
        done = self.db.leases.succeed(row.id, row.attempt, records)
        self.live.clear(row.id)
        self.live.notify(row.id)
        return done, uploaded

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


FarmFactory = Callable[..., Farm]


@pytest.fixture(params=["embedded", "cluster"])
def farm_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_farm(farm_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FarmFactory]:
    """Build farms of this test's kind; keyword arguments override settings (e.g. `max_inline_image_bytes=...`);
    `storage_clock` dates the local folder's download URLs."""
    farms: list[Farm] = []

    def build(*, start_client: bool = True, storage_clock: Callable[[], float] = time.time, **overrides: Any) -> Farm:
        values: dict[str, Any] = {"data_dir": tmp_path / f"data-{len(farms)}", "api_tokens": TOKENS}
        if farm_kind == "embedded":
            database_url = f"sqlite:///{tmp_path / f'db-{len(farms)}' / 'renderfarm.db'}"
            upgrade(database_url)
            values["database_url"] = database_url
        else:
            database_url = request.getfixturevalue("migrated_postgres")
            if not farms:
                empty_tables(database_url)
                forget_rate_limits(request.getfixturevalue("redis_url"))
            s3: S3Server = request.getfixturevalue("s3_env")
            values.update(
                database_url=database_url,
                redis_url=request.getfixturevalue("redis_url"),
                storage_url=f"s3://{s3.new_bucket()}/farm",
                s3_endpoint_url=s3.endpoint_url,
            )
        values.update(overrides)
        settings = Settings(_env_file=None, **values).check()
        engine = make_engine(settings.resolved_database_url)
        db = Database(engine)
        announce_farm_worker(db, settings)
        live: LiveStatus = RedisLiveStatus(settings.redis_url) if settings.redis_url else LocalLiveStatus()
        storage = open_storage(settings, clock=storage_clock)
        app = create_app(settings, live=live, storage=storage, db=db, start_background=False)
        client = TestClient(app, client=LOOPBACK_CLIENT)
        farm = Farm(farm_kind, settings, db, live, storage, app, client)
        farm._closers += [engine.dispose, live.close, storage.close]
        if start_client:
            client.__enter__()  # runs the lifespan (the schema check)
            farm._closers.append(lambda: client.__exit__(None, None, None))
        farms.append(farm)
        return farm

    yield build
    for farm in farms:
        farm.close()
    if farm_kind == "cluster" and farms:
        # The session's Redis database outlives the test: its rate-limit counters must not refuse the next one's
        # requests (all from one loopback address).
        forget_rate_limits(request.getfixturevalue("redis_url"))


FARM_WORKER = "gpu-0@api-tests"  # the worker a Farm acts as (`Farm.claim`), announced for the default queues
FARM_WORKER_TTL_S = 24 * 3600.0  # the announcement outlives any test (the real clock runs)


def announce_farm_worker(db: Database, settings: Settings) -> None:
    """Announce the worker a Farm acts as, consuming the default model's queues, as a worker process would: jobs
    for the default model are served and carry no `no_worker_serves_model` warning (tests about routing withdraw it
    with `db.workers.withdraw(FARM_WORKER)`)."""
    default_queues = [queue_name(None, batch=False), queue_name(None, batch=True)]
    db.workers.announce(
        FARM_WORKER, device="cpu", queues=default_queues, models=[settings.model], ttl_s=FARM_WORKER_TTL_S
    )


def forget_rate_limits(redis_url: str) -> None:
    """Delete the rate limiter's counters (scheduler/rate_limits.py) from the Redis database at `redis_url`."""
    import redis

    from scheduler.rate_limits import KEY_PREFIX

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{KEY_PREFIX}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def farm(make_farm: FarmFactory) -> Farm:
    return make_farm()


@pytest.fixture
def image_png() -> bytes:
    return png_bytes()


def upload(farm: Farm, data: bytes, headers: dict[str, str] = ALICE) -> dict[str, Any]:
    response = farm.client.post("/v1/assets", content=data, headers={**headers, "Content-Type": "image/png"})
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def put_job(farm: Farm, task_id: str, body: dict[str, Any], headers: dict[str, str] = ALICE) -> Any:
    return farm.client.put(f"/v1/jobs/{task_id}", json=body, headers=headers)


# --------------------------------------------------------------------------------------------------------------
# A real HTTP server, for streams and plain downloads


@pytest.fixture
def served_farm(make_farm: FarmFactory) -> Iterator[tuple[Farm, str]]:
    """A farm served by uvicorn on a free port, with `public_url` pointing at it (local download URLs work)."""
    port = free_loopback_port()
    farm = make_farm(start_client=False, public_url=f"http://127.0.0.1:{port}")
    live = serve_in_thread(farm.app, port, name=f"uvicorn-{port}", ws="none")
    try:
        yield farm, live.base_url
    finally:
        live.stop(10)
