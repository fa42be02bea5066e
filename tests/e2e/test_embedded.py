"""`renderfarm up`: the embedded farm (SQLite, a local folder, an in-process worker, no servers) serves the same API.

Driven with curl, as a person trying the farm would, against a real `renderfarm up` process on a free port (with
httpx in its place on a machine without curl, so the test never skips).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import JOB_TIMEOUT_S, png_bytes, wait_ready
from tests.processes import STOP_TIMEOUT_S, free_loopback_port, spawn
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow]

CURL = shutil.which("curl")


def curl(url: str, *, method: str = "GET", content_type: str | None = None, data: bytes | None = None) -> bytes:
    """One request, made by curl (or httpx without curl); fails the test on any error status."""
    if CURL is None:
        headers = {"Content-Type": content_type} if content_type else {}
        response = httpx.request(method, url, content=data, headers=headers, timeout=30.0)
        assert response.is_success, f"{method} {url}: {response.status_code} {response.text}"
        return response.content
    argv = [CURL, "--silent", "--show-error", "--fail-with-body", "-X", method]
    if content_type:
        argv += ["-H", f"Content-Type: {content_type}"]
    if data is not None:
        argv += ["--data-binary", "@-"]
    result = subprocess.run([*argv, url], input=data, capture_output=True, check=False)
    assert result.returncode == 0, f"curl {method} {url}: {result.returncode} {result.stdout!r} {result.stderr!r}"
    return result.stdout


def curl_json(url: str, **kwargs: Any) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(curl(url, **kwargs))
    return answer


def test_up_serves_the_api_and_a_job_submitted_with_curl_succeeds(tmp_path: Path) -> None:
    port = free_loopback_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RENDERFARM_")}
    env.update({"RENDERFARM_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    argv = [sys.executable, "-m", "renderfarm.cli", "up", "--host", "127.0.0.1", "--port", str(port)]
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = spawn("up", argv, env, logs)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", proc)
        asset = curl_json(f"{url}/v1/assets", method="POST", content_type="image/png", data=png_bytes())
        body = {"init_images": [asset["asset_id"]], "prompt": "a red square", "steps": 8, "width": 64, "height": 64}
        created = curl_json(
            f"{url}/v1/jobs/curl-1", method="PUT", content_type="application/json", data=json.dumps(body).encode()
        )
        assert created["task_id"] == "curl-1"

        def finished() -> dict[str, Any] | None:
            snapshot = curl_json(f"{url}/v1/jobs/curl-1")
            return snapshot if snapshot["state"] in ("succeeded", "failed", "canceled") else None

        snapshot = wait_until(finished, JOB_TIMEOUT_S, "job curl-1 to finish")

        assert snapshot["state"] == "succeeded", snapshot
        assert snapshot["worker"].startswith("embedded@")
        (result,) = snapshot["artifacts"]
        assert result["url"].startswith(f"{url}/v1/files/")  # local storage, served by the API itself
        assert hashlib.sha256(curl(result["url"])).hexdigest() == result["sha256"]

        # SIGTERM: a graceful stop (server, dispatcher, reconciler, worker), exit status 0.
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.process.wait(timeout=STOP_TIMEOUT_S * 2) == 0, proc.log_tail()
    finally:
        proc.stop()
