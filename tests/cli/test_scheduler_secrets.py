"""`renderfarm scheduler` serves holding no token (issue 15, "Secret hygiene": tokens kept only as digests after
start-up): once the app is built, no settings object in the process still has a token and its environment has none
of the API's secret variables (child processes would inherit them). The server is replaced by a probe that looks at
the process where the real one would start serving."""

from __future__ import annotations

import gc
import os
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest

import scheduler.serving
from renderfarm.cli import main
from shared.config import API_SECRET_VARIABLES, Settings

API_TOKEN = f"scheduler-only-token-{uuid.uuid4().hex}"
METRICS_TOKEN = f"metrics-only-token-{uuid.uuid4().hex}"


class Probe:
    """Stands in for the uvicorn server: records what the process holds when serving would begin."""

    seen: ClassVar[dict[str, Any]] = {}

    def __init__(self, app: Any, **_: Any) -> None:
        self.app = app

    def run(self, sockets: Any = None) -> None:
        gc.collect()
        holding = [
            obj
            for obj in gc.get_objects()
            # type(), not isinstance(): isinstance reads `__class__`, which some of torch's deprecated module proxies
            # answer with a FutureWarning (an error under this suite's warning filter) when torch is loaded.
            if issubclass(type(obj), Settings) and API_TOKEN in f"{obj.api_tokens} {obj.metrics_token}"
        ]
        Probe.seen = {
            "settings_with_a_token": len(holding),
            "secret_variables": sorted(name for name in API_SECRET_VARIABLES if name in os.environ),
            "alice_is_known": self.app.state.tokens.tenant_for(API_TOKEN) == "alice",  # from the digest
        }


def test_the_scheduler_serves_with_digests_only(
    tmp_path: Path, postgres_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENDERFARM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RENDERFARM_DATABASE_URL", postgres_url)
    monkeypatch.setenv("RENDERFARM_REDIS_URL", redis_url)
    monkeypatch.setenv("RENDERFARM_STORAGE_URL", f"file://{tmp_path / 'storage'}")
    monkeypatch.setenv("RENDERFARM_API_TOKENS", f"alice:{API_TOKEN}")
    monkeypatch.setenv("RENDERFARM_METRICS_TOKEN", METRICS_TOKEN)
    monkeypatch.setattr(scheduler.serving, "graceful_server", Probe)

    assert main(["scheduler", "--port", "0"]) == 0

    assert Probe.seen["settings_with_a_token"] == 0
    assert Probe.seen["secret_variables"] == []
    assert Probe.seen["alice_is_known"]
