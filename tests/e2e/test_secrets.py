"""No secret in any log of a full run (issue 15, finding 8): the logs of the farm's processes, after jobs ran,
results were downloaded, wrong credentials were tried and metrics were scraped, are grepped for every secret the
farm was configured with (API tokens, the metrics token, the database password, the S3 keys, the signing key) and for
the signatures of every download URL it handed out.

Two farms: the cluster of tests/e2e/conftest.py (scheduler and workers as processes; presigned S3 URLs), and
`renderfarm up` (the embedded farm, whose own `/v1/files/...?expires=&sig=` URLs pass through the API's access log,
which used to print them whole). A worker process's environment holds no API token either.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.e2e.conftest import (
    ALICE_TOKEN,
    BOB_TOKEN,
    E2E_DB_PASSWORD,
    E2E_METRICS_TOKEN,
    E2E_S3_ACCESS_KEY,
    E2E_S3_SECRET_KEY,
    JOB_TIMEOUT_S,
    Api,
    FarmEnv,
    Scheduler,
    Worker,
    new_task_id,
    png_bytes,
    wait_ready,
)
from tests.processes import free_loopback_port, spawn
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _log_text(folder: Path) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in sorted(folder.rglob("*.log")))


def _try_wrong_credentials(url: str) -> None:
    """What an attacker or a misconfigured client sends: wrong bearer tokens, Basic with a wrong password, and a
    right token on a wrong route; each answer is a 4xx, and each line of the access log is a chance to leak."""
    wrong_basic = base64.b64encode(b"user:wrong-password-0123456789").decode()
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for headers in (
            {"Authorization": "Bearer wrong-token-0123456789abcdef"},
            {"Authorization": f"Basic {wrong_basic}"},
            {},
        ):
            assert client.get("/v1/jobs", headers=headers).status_code == 401
        assert client.get("/v1/no-such-route", headers={"Authorization": f"Bearer {ALICE_TOKEN}"}).status_code == 404


def _assert_absent(logs: str, secrets: dict[str, str]) -> None:
    assert logs.strip(), "the farm wrote no log at all: the test would prove nothing"
    found = sorted(name for name, secret in secrets.items() if secret and secret in logs)
    assert not found, f"secrets found in the logs: {found}"


def test_the_cluster_logs_hold_no_secret(
    farm_env: FarmEnv, scheduler: Scheduler, alice: Api, standin_workers: list[Worker]
) -> None:
    assert E2E_DB_PASSWORD in farm_env.env["RENDERFARM_DATABASE_URL"], "the harness gives the farm a password"
    task_id = new_task_id("secrets")
    alice.submit(task_id, model="e2e-standin", steps=2)
    done = alice.wait_state(task_id, "succeeded")
    signatures: dict[str, str] = {}
    for number, artifact in enumerate(done["artifacts"]):
        query = parse_qs(urlparse(artifact["url"]).query)
        signatures[f"X-Amz-Signature of artifact {number}"] = query["X-Amz-Signature"][0]
        assert httpx.get(artifact["url"], timeout=30.0).status_code == 200
    assert signatures, "the job has results with signed URLs"
    _try_wrong_credentials(scheduler.url)
    metrics = httpx.get(f"{scheduler.url}/metrics", headers={"Authorization": f"Bearer {E2E_METRICS_TOKEN}"})
    assert metrics.status_code == 200

    _assert_absent(
        _log_text(farm_env.log_dir),
        {
            "alice's API token": ALICE_TOKEN,
            "bob's API token": BOB_TOKEN,
            "the metrics token": E2E_METRICS_TOKEN,
            "the database password": E2E_DB_PASSWORD,
            "the S3 access key": E2E_S3_ACCESS_KEY,
            "the S3 secret key": E2E_S3_SECRET_KEY,
            **signatures,
        },
    )
    # A worker renders; it never authenticates anyone, and never holds a token (deploy/ gives it none either).
    for worker in standin_workers:
        environ = Path(f"/proc/{worker.proc.pid}/environ")
        if environ.exists():
            held = environ.read_bytes()
            assert ALICE_TOKEN.encode() not in held
            assert E2E_METRICS_TOKEN.encode() not in held


def test_the_embedded_farms_access_log_holds_no_signed_url(tmp_path: Path) -> None:
    token = "embedded-alice-token-0123456789"
    signing_key = "embedded-signing-key-0123456789abcdef"
    port = free_loopback_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RENDERFARM_")}
    env.update(
        {
            "RENDERFARM_DATA_DIR": str(tmp_path / "data"),
            "RENDERFARM_API_TOKENS": f"alice:{token}",
            "RENDERFARM_SIGNING_KEY": signing_key,
            "RENDERFARM_STANDIN_STEP_S": "0.001",  # the job system, not pixels
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    argv = [sys.executable, "-m", "renderfarm.cli", "up", "--host", "127.0.0.1", "--port", str(port)]
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = spawn("up", argv, env, logs)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        wait_ready(f"{url}/readyz", proc)
        with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:
            asset = client.post("/v1/assets", content=png_bytes(), headers={"Content-Type": "image/png"}).json()
            body = {"init_images": [asset["asset_id"]], "prompt": "x", "steps": 2, "width": 64, "height": 64}
            assert client.put("/v1/jobs/secret-1", json=body).status_code == 201

            def finished() -> dict[str, object] | None:
                snapshot: dict[str, object] = client.get("/v1/jobs/secret-1").json()
                return snapshot if snapshot["state"] in ("succeeded", "failed", "canceled") else None

            snapshot = wait_until(finished, JOB_TIMEOUT_S, "job secret-1 to finish")
        assert snapshot["state"] == "succeeded", snapshot
        artifacts = snapshot["artifacts"]
        assert isinstance(artifacts, list)
        assert artifacts
        signatures = {}
        for number, artifact in enumerate(artifacts):
            assert artifact["url"].startswith(f"{url}/v1/files/")
            signatures[f"sig of artifact {number}"] = parse_qs(urlparse(artifact["url"]).query)["sig"][0]
            # The download goes through the API, so its request line reaches the access log.
            assert httpx.get(artifact["url"], timeout=30.0).status_code == 200
        _try_wrong_credentials(url)
    finally:
        proc.stop()
    log = _log_text(logs)
    assert "/v1/files/" in log, "the downloads are in the access log: the grep below is not vacuous"
    _assert_absent(log, {"the API token": token, "the signing key": signing_key, **signatures})
