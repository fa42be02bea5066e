"""The dashboard in a real headless Chromium (docs/dashboard.md): sign-in, the live queue, a job's pictures, cancel
and retry, workers appearing and going silent, a batch grid laid out by its axes, and tenants kept apart.

Real parts: the embedded farm (scheduler, SQLite, local storage, the in-process worker rendering with the tiny
model), Debian's chromium through Playwright. Every wait is Playwright's polling `expect` on what the page shows,
never a sleep.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import PAGE_TIMEOUT_MS, TOKENS, Farm, job_body, png_b64, screenshot, sign_in

pytestmark = [pytest.mark.slow]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_sign_in_keeps_only_a_digest_in_an_httponly_strict_cookie(farm: Farm, new_page: Any) -> None:
    page: Page = new_page()
    page.goto(f"{farm.url}/")  # `/` leads to the dashboard, which asks for a token
    expect(page).to_have_url(f"{farm.url}/ui/signin")
    screenshot(page, "signin")
    page.get_by_test_id("token").fill("not-a-token-of-this-farm-000000")
    page.get_by_test_id("signin").click()
    expect(page.get_by_test_id("signin-error")).to_be_visible()

    sign_in(page, farm, "alice")
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    session = cookies["rf_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert TOKENS["alice"] not in session["value"]
    assert "rf_session" not in page.evaluate("document.cookie")  # no script of the page can read it

    # A POST without the page's CSRF token is refused, even with the cookie.
    refused = page.request.post(f"{farm.url}/ui/signout", form={"csrf_token": "0" * 64})
    assert refused.status == 403
    page.get_by_test_id("signout").click()
    expect(page).to_have_url(f"{farm.url}/ui/signin")
    assert "rf_session" not in {cookie["name"] for cookie in page.context.cookies()}


def test_the_queue_shows_jobs_arrive_and_succeed_live(farm: Farm, new_page: Any) -> None:
    page: Page = new_page()
    sign_in(page, farm, "alice")
    task_ids = [new_id("queue"), new_id("queue")]
    for task_id in task_ids:
        expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_have_count(0)
    with farm.api("alice") as api:
        for seed, task_id in enumerate(task_ids):
            assert api.put(f"/v1/jobs/{task_id}", json=job_body(seed=seed)).status_code == 201
    # The page was loaded before the jobs existed: they appear, and finish, without a reload.
    for task_id in task_ids:
        expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_have_count(1)
    screenshot(page, "queue-live")
    for task_id in task_ids:
        expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_have_attribute(
            "data-state", "succeeded", timeout=PAGE_TIMEOUT_MS
        )
    screenshot(page, "queue")


def test_a_job_page_shows_the_four_pictures_and_retries(farm: Farm, new_page: Any) -> None:
    task_id = new_id("pictures")
    with farm.api("alice") as api:
        body = job_body(mask=png_b64((0, 0, 0), mask=True), seed=4242, prompt="an inpainted square")
        assert api.put(f"/v1/jobs/{task_id}", json=body).status_code == 201
    page: Page = new_page()
    sign_in(page, farm, "alice")
    page.goto(f"{farm.url}/ui/jobs/{task_id}")
    expect(page.locator(".job")).to_have_attribute("data-state", "succeeded", timeout=PAGE_TIMEOUT_MS)
    for label in ("input", "mask", "overlay", "result"):
        picture = page.get_by_test_id(f"picture-{label}").locator("img")
        expect(picture).to_have_count(1)
        # Loaded, not a broken link: the browser decoded a 64×64 picture.
        picture.evaluate("img => img.decode()")
        assert picture.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    expect(page.get_by_test_id("seed")).to_have_text("4242")
    expect(page.get_by_test_id("infotext")).to_contain_text("Seed: 4242")
    expect(page.get_by_test_id("infotext")).to_contain_text("an inpainted square")
    screenshot(page, "job")

    page.get_by_test_id("retry").click()  # the same request again, under a new task id
    page.wait_for_url(f"{farm.url}/ui/jobs/{task_id}-retry-*")
    retried = page.url.rsplit("/", 1)[1]
    expect(page.locator(".job")).to_have_attribute("data-state", "succeeded", timeout=PAGE_TIMEOUT_MS)
    with farm.api("alice") as api:
        first, again = (api.get(f"/v1/jobs/{name}").json() for name in (task_id, retried))
    assert [a["sha256"] for a in again["artifacts"]] == [a["sha256"] for a in first["artifacts"]]


def test_a_running_job_is_canceled_from_its_page(farm: Farm, new_page: Any) -> None:
    task_id = new_id("cancel")
    with farm.api("alice") as api:  # long enough to be running when the button is clicked: 150 steps × 8 batches
        assert api.put(f"/v1/jobs/{task_id}", json=job_body(steps=150, n_iter=8)).status_code == 201
    page: Page = new_page()
    sign_in(page, farm, "alice")
    page.goto(f"{farm.url}/ui/jobs/{task_id}")
    expect(page.locator(".job")).to_have_attribute("data-state", "running", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator(".job progress")).not_to_have_attribute("value", "0.000", timeout=PAGE_TIMEOUT_MS)
    # The page watches the job (`previews=true`), so its worker draws live previews, shown as they come.
    preview = page.get_by_test_id("preview").locator("img")
    expect(preview).to_have_attribute("src", re.compile(r"^data:image/(png|jpeg);base64,"))
    screenshot(page, "job-running")

    # A job behind it waits, and the queue page says why and when it should be done, as the API does.
    behind = new_id("behind")
    queue_page: Page = new_page()
    sign_in(queue_page, farm, "alice")
    with farm.api("alice") as api:
        assert api.put(f"/v1/jobs/{behind}", json=job_body()).status_code == 201
        waiting = api.get(f"/v1/jobs/{behind}").json()["waiting"]
    row = queue_page.locator(f'tr[data-task-id="{behind}"]')
    expect(row).to_have_attribute("data-state", "queued")
    expect(row.locator("td.waiting")).to_have_attribute("title", waiting["reason"])
    expect(row.locator("td.waiting")).not_to_be_empty()
    screenshot(queue_page, "queue-waiting")

    page.get_by_test_id("cancel").click()
    expect(page.locator(".job")).to_have_attribute("data-state", "canceled", timeout=PAGE_TIMEOUT_MS)
    with farm.api("alice") as api:
        assert api.get(f"/v1/jobs/{task_id}").json()["state"] == "canceled"
    expect(row).to_have_attribute("data-state", "succeeded")  # the worker moved on to the job behind


def test_workers_appear_and_go_silent_for_operators_only(farm: Farm, new_page: Any) -> None:
    page: Page = new_page()
    sign_in(page, farm, "ops")
    page.goto(f"{farm.url}/ui/workers")
    embedded_worker = page.locator('tr[data-worker^="embedded@"]')
    expect(embedded_worker).to_have_attribute("data-status", "live")
    # Its own status (worker/status.py): the model its warm-up loaded, no out-of-memory error.
    expect(embedded_worker.get_by_test_id("worker-loaded")).to_contain_text(farm.embedded.deps.settings.model)
    expect(embedded_worker.get_by_test_id("worker-ooms")).to_have_text("0")
    # A worker announcing itself (as worker.service does) with a 4-second lifetime, then never again.
    hostname = f"gpu7@{new_id('ui-test-host')}"
    status = {"gpu": "NVIDIA L4", "loaded_models": ["ui-test-model"], "current_job": "ui-render", "oom_count": 3}
    status.update(step=5, total_steps=20, steps_per_s=7.5)
    farm.embedded.deps.db.workers.announce(
        hostname, device="cuda", queues=["rf.ui-test-only"], models=["ui-test-model"], ttl_s=4.0, status=status
    )
    row = page.locator(f'tr[data-worker="{hostname}"]')
    expect(row).to_have_attribute("data-status", "live")
    expect(row).to_contain_text("ui-test-model")
    expect(row).to_contain_text("NVIDIA L4")
    expect(row.get_by_test_id("worker-job")).to_have_text("ui-render")
    expect(row.get_by_test_id("worker-step")).to_have_text("step 5/20")
    expect(row.get_by_test_id("worker-speed")).to_have_text("7.50 it/s")
    expect(row.get_by_test_id("worker-ooms")).to_have_text("3")
    screenshot(page, "workers")
    expect(row).to_have_attribute("data-status", "silent")  # a missed heartbeat: none for 1.5 of its intervals
    expect(row).to_have_attribute("data-status", "gone")  # its announcement expired
    assert hostname not in {row.hostname for row in farm.embedded.deps.db.workers.live(now=datetime.now(UTC))}
    expect(embedded_worker).to_have_attribute("data-status", "live")  # the embedded worker keeps announcing itself

    tenant_page: Page = new_page()
    sign_in(tenant_page, farm, "alice")
    expect(tenant_page.get_by_role("link", name="Workers")).to_have_count(0)
    assert tenant_page.goto(f"{farm.url}/ui/workers").status == 403  # type: ignore[union-attr]


def test_a_grid_batch_is_laid_out_by_its_axes(farm: Farm, new_page: Any) -> None:
    seeds, prompts = [11, 12], ["a red square", "a blue square"]
    body = {"defaults": job_body(), "grid": {"mode": "product", "axes": {"seed": seeds, "prompt": prompts}}}
    with farm.api("alice") as api:
        response = api.post("/v1/batches", json=body)
        assert response.status_code == 201, response.text
        batch_id = response.json()["batch_id"]
    page: Page = new_page()
    sign_in(page, farm, "alice")
    page.goto(f"{farm.url}/ui/batches/{batch_id}")
    expect(page.locator('[data-final="true"]')).to_have_count(1, timeout=PAGE_TIMEOUT_MS)
    grid = page.get_by_test_id("grid")
    # The last axis across (X), the first down (Y), values as headers, as the webui's X/Y plot.
    assert grid.locator("th.axis-x").all_inner_texts() == prompts
    assert grid.locator("th.axis-y").all_inner_texts() == [str(seed) for seed in seeds]
    rows = grid.locator("tbody tr")
    for y in range(len(seeds)):
        cells = rows.nth(y).locator("td.cell")
        for x in range(len(prompts)):
            index = y * len(prompts) + x  # the first axis varies slowest
            cell = cells.nth(x)
            expect(cell).to_have_attribute("data-task-id", f"{batch_id}-{index}")
            expect(cell).to_have_attribute("data-state", "succeeded")
            assert cell.locator("img").evaluate("img => img.decode().then(() => img.naturalWidth)") == 64
    expect(page.get_by_test_id("batch-progress")).to_have_attribute("value", "1.0")
    screenshot(page, "batch-grid")


def test_other_tenants_jobs_are_invisible_except_to_operators(farm: Farm, new_page: Any) -> None:
    task_id = new_id("private")
    with farm.api("alice") as api:
        assert api.put(f"/v1/jobs/{task_id}", json=job_body()).status_code == 201
    bob: Page = new_page()
    sign_in(bob, farm, "bob")
    expect(bob.locator(f'tr[data-task-id="{task_id}"]')).to_have_count(0)
    assert bob.goto(f"{farm.url}/ui/jobs/{task_id}").status == 404  # type: ignore[union-attr]
    assert bob.goto(f"{farm.url}/ui/jobs/{task_id}?tenant=alice").status == 404  # type: ignore[union-attr]
    expect(bob.get_by_test_id("not-found")).to_be_visible()

    ops: Page = new_page()
    sign_in(ops, farm, "ops")
    row = ops.locator(f'tr[data-task-id="{task_id}"]')
    expect(row).to_have_count(1)
    expect(row).to_contain_text("alice")
    row.get_by_role("link", name=task_id).click()
    expect(ops.locator(".job")).to_have_count(1)
    assert "tenant alice" in ops.locator("main").inner_text()


def test_the_api_docs_load_their_assets_from_the_farm(farm: Farm, new_page: Any) -> None:
    page: Page = new_page()
    requests: list[str] = []
    # What the browser fetched: ReDoc's footer asks for a logo on its CDN, which the page's policy refuses.
    page.on("requestfinished", lambda request: requests.append(request.url))
    page.goto(f"{farm.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("renderfarm")
    screenshot(page, "docs")
    page.goto(f"{farm.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("renderfarm")
    foreign = [url for url in requests if not url.startswith((farm.url, "data:", "blob:"))]
    assert requests
    assert not foreign, foreign
    expect(page.locator(".api-content")).to_be_visible()
    screenshot(page, "redoc")
