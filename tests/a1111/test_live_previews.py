"""Live previews through the A1111 progress routes (docs/engine.md "Live previews"): polling with previews asked for
makes the worker draw them; `current_image` and `live_preview` carry them; `id_live_preview` is honoured."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

from PIL import Image

from tests.a1111.conftest import LiveFarm
from tests.a1111.test_progress import Posted, body, internal_progress


def sdapi_progress(client: Any, task_id: str, **params: Any) -> dict[str, Any]:
    response = client.get("/sdapi/v1/progress", params={"id_task": task_id, **params})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def test_a_polled_job_shows_its_live_preview(farm: LiveFarm, standin: Callable[[float], None]) -> None:
    standin(0.05)
    task_id = "task(img2img-PREV001)"
    # -1: one preview at the end of each batch, so that the later batches run for seconds with one fixed preview.
    job = body(task_id, steps=40, n_iter=3, override_settings={"show_progress_every_n_steps": -1})
    with farm.client() as client:
        posted = Posted(farm, job)
        farm.wait_for("the job to run", lambda: internal_progress(client, task_id)["active"])

        polled = farm.wait_for(
            "a preview in current_image", lambda: (p := sdapi_progress(client, task_id))["current_image"] and p
        )
        picture = Image.open(io.BytesIO(base64.b64decode(polled["current_image"], validate=True)))
        # No TAESD weights in the farm's models folder: the default "Approx NN" is drawn with Approx cheap, H/8 × W/8.
        assert (picture.format, picture.size) == ("PNG", (8, 8))
        assert sdapi_progress(client, task_id, skip_current_image="true")["current_image"] is None

        answer = client.post("/internal/progress", json={"id_task": task_id, "id_live_preview": -1}).json()
        assert answer["active"]
        assert answer["live_preview"].startswith("data:image/png;base64,")
        seen_id = answer["id_live_preview"]
        again = client.post("/internal/progress", json={"id_task": task_id, "id_live_preview": seen_id}).json()
        # The same preview is not sent twice; a newer one (a later batch's end) comes with its new id.
        assert (again["live_preview"], again["id_live_preview"]) == (None, seen_id) or (
            again["id_live_preview"] > seen_id and again["live_preview"]
        )
        unasked = client.post(
            "/internal/progress", json={"id_task": task_id, "id_live_preview": -1, "live_preview": False}
        ).json()
        assert unasked["live_preview"] is None

        assert posted.result().status_code == 200
        finished = client.get(f"/v1/jobs/{task_id}").json()
        assert finished["state"] == "succeeded"
        assert finished["preview"] is None
        codes = [warning["code"] for warning in finished["warnings"]]
        assert "preview_method_substituted" in codes
        assert "preview_decoder_missing" in codes
        assert sdapi_progress(client, task_id)["current_image"] is None  # a finished job has no current image
