"""Fixtures of the worker tests: a migrated PostgreSQL database, a moto bucket, Redis live status, the tiny model,
and a helper that submits a job the way the API stores one (images uploaded as assets first)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.config import Settings
from shared.db import Database, JobRow, NewJob, make_engine, upgrade
from shared.job.hashing import request_hash
from shared.job.spec import SpecLimits, parse_job
from shared.live import LiveProgress, RedisLiveStatus
from shared.queueing import queue_name
from shared.storage import S3Storage, Storage, asset_key
from tests.pictures import centre_mask as centre_mask
from tests.pictures import picture, png_bytes
from tests.services import S3Server
from worker.deps import WorkerDeps
from worker.engine.models import LoadedModel, ModelNotFound, load_model

TENANT = "acme"
SIZE = 64  # pixels: the smallest side the spec allows, so the tiny model renders in milliseconds


@pytest.fixture(scope="session")
def worker_db_url(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model("tiny", device="cpu", tiny_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture
def db(worker_db_url: str) -> Iterator[Database]:
    engine = make_engine(worker_db_url)
    yield Database(engine)
    engine.dispose()


@pytest.fixture
def bucket(s3_env: S3Server) -> str:
    return s3_env.new_bucket()


@pytest.fixture
def storage(s3_env: S3Server, bucket: str) -> Iterator[S3Storage]:
    store = S3Storage(bucket, prefix="farm", endpoint_url=s3_env.endpoint_url, region=s3_env.region)
    yield store
    store.close()


class RecordingLive(RedisLiveStatus):
    """Redis live status that also remembers every progress write (to count and order them)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.writes: list[LiveProgress] = []

    def set_progress(self, progress: LiveProgress) -> None:
        self.writes.append(progress)
        super().set_progress(progress)


@pytest.fixture
def live(redis_url: str) -> Iterator[RecordingLive]:
    status = RecordingLive(redis_url)
    yield status
    status.close()


@pytest.fixture
def settings(tmp_path: Path, worker_db_url: str, s3_env: S3Server, bucket: str) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        database_url=worker_db_url,
        storage_url=f"s3://{bucket}/farm",
        s3_endpoint_url=s3_env.endpoint_url,
        model="tiny",
    )


class TinyModels:
    """A model source holding the session's tiny model: any other name is unknown."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.loads: list[str] = []

    def get(self, name: str) -> LoadedModel:
        self.loads.append(name)
        if name != "tiny":
            raise ModelNotFound(f"unknown model {name!r}")
        return self.model


@pytest.fixture
def deps(
    settings: Settings, db: Database, storage: S3Storage, live: RecordingLive, tiny_model: LoadedModel
) -> WorkerDeps:
    return WorkerDeps(
        settings=settings, db=db, storage=storage, live=live, models=TinyModels(tiny_model), worker_name="test-worker"
    )


def upload_asset(db: Database, storage: Storage, image: Image.Image, tenant: str = TENANT) -> str:
    """Store `image` as the API does for POST /v1/assets; returns its reference `asset:<sha256>`."""
    data = png_bytes(image)
    sha = hashlib.sha256(data).hexdigest()
    key = asset_key(tenant, sha)
    storage.put(key, data, "image/png", sha256=sha)
    db.assets.add(
        tenant, sha, storage_key=key, size_bytes=len(data), mime="image/png", width=image.width, height=image.height
    )
    return f"asset:{sha}"


@dataclass
class Submitter:
    db: Database
    storage: Storage
    defaults: dict[str, Any] = field(
        default_factory=lambda: {
            "width": SIZE,
            "height": SIZE,
            "steps": 4,
            "denoising_strength": 0.75,
            "cfg_scale": 5.0,
            "prompt": "a red square",
        }
    )

    def __call__(self, *, max_attempts: int = 3, tenant: str = TENANT, **fields: Any) -> JobRow:
        """Create a queued job as the API stores it; `init_images` defaults to one uploaded picture."""
        body = {**self.defaults, **fields}
        body.setdefault("init_images", [upload_asset(self.db, self.storage, picture(), tenant)])
        job = parse_job(body, SpecLimits())
        row, created = self.db.jobs.create_or_get(
            tenant,
            NewJob(
                f"task-{uuid.uuid4().hex[:12]}",
                job.to_request_json(),
                request_hash(job),
                queue=queue_name(None, batch=False),
                max_attempts=max_attempts,
            ),
        )
        assert created
        return row


@pytest.fixture
def submit(db: Database, storage: S3Storage) -> Submitter:
    return Submitter(db, storage)


def with_engine(deps: WorkerDeps, engine: Callable[..., Any], **changes: Any) -> WorkerDeps:
    return replace(deps, engine=engine, **changes)
