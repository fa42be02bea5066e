"""An embedded scheduler in the test's process (SQLite, local storage, no background loops, no worker) over a
models folder: for the tests of the model-file routes and of admission's model checks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from scheduler.app import create_app
from shared.config import Settings
from shared.db import upgrade


@contextmanager
def embedded_scheduler(
    folder: Path, models_dir: Path, tenant_token: str, *, database: str = "renderfarm.db", **settings: Any
) -> Iterator[TestClient]:
    """A client of a scheduler whose database and data dir are in `folder`; `tenant_token` is alice's token;
    `settings` are further Settings fields."""
    database_url = f"sqlite:///{folder / database}"
    upgrade(database_url)
    checked = Settings(
        _env_file=None,
        data_dir=folder / "data",
        database_url=database_url,
        api_tokens=f"alice:{tenant_token}",
        models_dir=models_dir,
        **settings,
    ).check()
    with TestClient(create_app(checked, start_background=False), client=("127.0.0.1", 50000)) as client:
        yield client
