"""`GET /v1/workers` and the `no_worker_serves_model` warning, on both configurations, with announcements written
to the real database as a worker process writes them (`Database.workers.announce`)."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.snapshots import public_worker_name
from tests.api.conftest import ALICE, FARM_WORKER, Farm, job_body, png_bytes, put_job, upload

pytestmark = pytest.mark.integration

UNSERVED = "no_worker_serves_model"


def unserved(snapshot: dict[str, Any]) -> list[dict[str, str]]:
    return [w for w in snapshot["warnings"] if w["code"] == UNSERVED]


def test_the_listing_shows_workers_without_their_host_names(farm: Farm) -> None:
    farm.db.workers.announce(
        "gpu3@secret-host.internal",
        device="cuda",
        queues=["rf.sdxl.interactive", "rf.sdxl.batch"],
        models=["sdxl", "tiny"],
        ttl_s=600.0,
        status={"gpu": "NVIDIA L4", "loaded_models": ["sdxl"], "current_job": "bobs-secret-task", "oom_count": 1},
    )
    farm.app.state.services.workers.refresh()

    assert farm.client.get("/v1/workers").status_code == 401
    response = farm.client.get("/v1/workers", headers=ALICE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "secret-host" not in response.text
    by_name = {item["worker"]: item for item in body["workers"]}
    assert set(by_name) == {public_worker_name(FARM_WORKER), public_worker_name("gpu3@secret-host.internal")}
    listed = by_name[public_worker_name("gpu3@secret-host.internal")]
    assert (listed["device"], listed["queues"], listed["models"]) == (
        "cuda",
        ["rf.sdxl.interactive", "rf.sdxl.batch"],
        ["sdxl", "tiny"],
    )
    assert listed["seen_at"] <= listed["expires_at"]
    # Its status, without the task id of the job it renders (another tenant's): the operators' dashboard shows that.
    shown = (listed["gpu"], listed["loaded_models"], listed["busy"], listed["oom_count"])
    assert shown == ("NVIDIA L4", ["sdxl"], True, 1)
    assert "bobs-secret-task" not in response.text
    farm_worker = by_name[public_worker_name(FARM_WORKER)]
    assert (farm_worker["gpu"], farm_worker["loaded_models"], farm_worker["busy"]) == (None, [], None)  # no status
    assert "rf.sdxl.batch" in body["queues"]
    assert "rf.default.interactive" in body["queues"]  # the farm's own worker
    assert body["models"] == sorted({"sdxl", "tiny", farm.settings.model})


def test_a_job_no_live_worker_serves_is_accepted_with_the_warning(farm: Farm) -> None:
    image = upload(farm, png_bytes())["asset_id"]
    served = put_job(farm, "served-1", job_body(image))
    assert served.status_code == 201, served.text
    assert unserved(served.json()) == []

    nobody = put_job(farm, "nobody-1", job_body(image, model="nobody-serves-this"))
    assert nobody.status_code == 201, nobody.text
    (warning,) = unserved(nobody.json())
    assert warning["field"] == "model"
    assert "'nobody-serves-this'" in warning["message"]
    assert "rf.nobody-serves-this.interactive" in warning["message"]
    assert unserved(farm.client.get("/v1/jobs/nobody-1", headers=ALICE).json()) == [warning]  # stored with it

    farm.db.workers.withdraw(FARM_WORKER)  # the only worker goes away
    farm.app.state.services.workers.refresh()
    default = put_job(farm, "default-1", job_body(image, seed=2))
    (warning,) = unserved(default.json())
    assert f"'{farm.settings.model}'" in warning["message"]
