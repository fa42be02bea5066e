"""A live farm in this process for the A1111 compatibility tests, against real PostgreSQL, Redis and S3.

- The API (`create_app`, dispatcher and reconciler included) served by uvicorn on a free loopback port in a thread,
  so that clients talk real HTTP (waiting routes, client-side timeouts that drop the connection);
- one Celery worker in-process (`worker.embedded.start_embedded_worker`) on the `memory://` broker, consuming the
  default interactive queue, with the tiny model;
- its engine switchable per test: the real `process_images` where pixels and infotexts matter, or the stand-in
  (`worker.standin`) where a job must run long enough to be polled and interrupted;
- two tenants, alice and bob, who authenticate as A1111 clients do: HTTP Basic with the token as password.

Readiness and job completion are polled with deadlines, never slept for.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from scheduler.app import create_app
from shared.config import Settings
from shared.db import Database, make_engine, upgrade
from shared.live import RedisLiveStatus
from shared.queueing import queue_name
from shared.storage import S3Storage
from tests.processes import free_loopback_port, serve_in_thread
from tests.services import S3Server, farm_settings, fresh_postgres_database
from tests.waiting import wait_until
from worker.deps import WorkerDeps
from worker.engine.models import LoadedModel, load_model
from worker.engine.processing import Processed, StableDiffusionProcessingImg2Img, process_images
from worker.standin import StandinEngine

ALICE_TOKEN = "a1111-alice-token-0123456789"
BOB_TOKEN = "a1111-bob-token-0123456789ab"
TOKENS = f"alice:{ALICE_TOKEN},bob:{BOB_TOKEN}"
ALICE = httpx.BasicAuth("alice", ALICE_TOKEN)  # what `--api-auth user:password` clients send
BOB = httpx.BasicAuth("bob", BOB_TOKEN)
SIZE = 64  # pixels: the smallest side the spec allows
READY_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 60.0


class SwitchEngine:
    """The worker's engine: the real renderer, or the stand-in while `standin_step_s` is set (seconds per step)."""

    def __init__(self) -> None:
        self.standin_step_s: float | None = None

    def __call__(self, p: StableDiffusionProcessingImg2Img) -> Processed:
        if self.standin_step_s is None:
            return process_images(p)
        return StandinEngine(self.standin_step_s)(p)


class AnyNameModels:
    """Every model name is the tiny model (tests that need a job on an unserved queue name another model)."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def get(self, name: str) -> LoadedModel:
        return self.model


@dataclass
class LiveFarm:
    url: str
    settings: Settings
    db: Database
    live: RedisLiveStatus
    storage: S3Storage
    deps: WorkerDeps
    engine: SwitchEngine
    app: Any
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def client(self, auth: httpx.Auth | None = ALICE, timeout: float = JOB_TIMEOUT_S) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, timeout=timeout)

    def wait_for(self, what: str, check: Callable[[], Any], timeout_s: float = JOB_TIMEOUT_S) -> Any:
        """Poll `check` until it returns something truthy; fail after `timeout_s` seconds."""
        return wait_until(check, timeout_s, what)


def png_b64(color: tuple[int, int, int] = (200, 40, 40), size: int = SIZE, mode: str = "RGB") -> str:
    image = Image.new(mode, (size, size), color if mode == "RGB" else color[0])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def square_mask_b64(size: int = SIZE, box: tuple[int, int, int, int] = (16, 16, 48, 48)) -> str:
    """A black mask with a white square (255 = regenerate) as a data URI, as browser-based clients send it."""
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model("tiny", device="cpu", tiny_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def farm(
    tiny_model: LoadedModel, redis_url: str, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveFarm]:
    from worker.embedded import start_embedded_worker
    from worker.tasks import create_worker_app

    data_dir: Path = tmp_path_factory.mktemp("a1111-farm")
    with pytest.MonkeyPatch.context() as patch, fresh_postgres_database() as database_url:
        patch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
        patch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
        patch.setenv("AWS_DEFAULT_REGION", s3_server.region)
        upgrade(database_url)
        port = free_loopback_port()
        bucket = s3_server.new_bucket()
        farm_url = f"http://127.0.0.1:{port}"
        settings = farm_settings(
            database_url, redis_url, s3_server, bucket, TOKENS, data_dir, public_url=farm_url, progress_interval_s=0.05
        ).check()
        engine = make_engine(database_url)
        db = Database(engine)
        live = RedisLiveStatus(redis_url)
        storage = S3Storage(
            bucket,
            prefix="farm",
            endpoint_url=s3_server.endpoint_url,
            region=s3_server.region,
        )
        switch = SwitchEngine()
        deps = WorkerDeps(
            settings=settings,
            db=db,
            storage=storage,
            live=live,
            models=AnyNameModels(tiny_model),
            worker_name="a1111-test-worker",
            engine=switch,
        )
        celery_app = create_worker_app(settings, lambda: deps, warm=False)
        # The broker in memory (the worker lives in this process); live status, database and storage are real.
        celery_app.conf.broker_url = "memory://"
        celery_app.conf.broker_transport_options = {"polling_interval": 0.05}
        app = create_app(settings, celery_app=celery_app, live=live, storage=storage, db=db)
        worker = start_embedded_worker(
            settings, celery_app, deps, warm=False, queues=[queue_name(None, batch=False)], hostname="a1111@test"
        )
        server = serve_in_thread(app, port, name="a1111-test-api")
        live_farm = LiveFarm(settings.public_url, settings, db, live, storage, deps, switch, app)
        try:
            live_farm.wait_for("the API to answer", lambda: _healthy(live_farm.url), READY_TIMEOUT_S)
            yield live_farm
        finally:
            server.stop(30)
            worker.stop()
            celery_app.close()
            storage.close()
            live.close()
            engine.dispose()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def standin(farm: LiveFarm) -> Iterator[Callable[[float], None]]:
    """Switch the worker to the stand-in engine (seconds per step) for this test; back to the real one after."""

    def use(step_s: float) -> None:
        farm.engine.standin_step_s = step_s

    yield use
    farm.engine.standin_step_s = None
