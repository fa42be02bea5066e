"""The dashboard's HTTP contract on both farm kinds (embedded: SQLite and local storage; cluster: PostgreSQL, Redis
and S3), without a browser (tests/ui drives it in Chromium): the session cookie, CSRF on the buttons, tenants kept
apart, operators, and the pages built from the API's own snapshots.
"""

from __future__ import annotations

import base64
import html
import re

import pytest

from scheduler.dashboard import pages
from scheduler.dashboard.access import SESSION_COOKIE
from tests.api.conftest import (
    ALICE,
    ALICE_TOKEN,
    BOB_TOKEN,
    FARM_WORKER,
    FARM_WORKER_TTL_S,
    Farm,
    FarmFactory,
    job_body,
    png_bytes,
)

pytestmark = [pytest.mark.integration]

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def signed_in(farm: Farm, token: str) -> str:
    """Sign the farm's client in with `token`; the page's CSRF token."""
    answer = farm.client.post("/ui/signin", data={"token": token}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/"
    page = farm.client.get("/ui/")
    assert page.status_code == 200
    found = CSRF.search(page.text)
    assert found is not None
    return found.group(1)


def submit(farm: Farm, task_id: str) -> None:
    image = base64.b64encode(png_bytes()).decode()
    answer = farm.client.put(f"/v1/jobs/{task_id}", json=job_body(image), headers=ALICE)
    assert answer.status_code == 201, answer.text


def test_the_cookie_holds_a_digest_httponly_and_strict(farm: Farm) -> None:
    assert farm.client.get("/", follow_redirects=False).headers["location"] == "/ui/"
    assert farm.client.get("/ui/", follow_redirects=False).headers["location"] == "/ui/signin"
    refused = farm.client.post("/ui/signin", data={"token": "x" * 30})
    assert refused.status_code == 401
    answer = farm.client.post("/ui/signin", data={"token": ALICE_TOKEN}, follow_redirects=False)
    cookie = answer.headers["set-cookie"]
    assert ALICE_TOKEN not in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    session = farm.client.cookies[SESSION_COOKIE]
    assert re.fullmatch("[0-9a-f]{64}", session)  # a sha256 digest, not the token
    assert farm.client.get("/ui/").status_code == 200  # and it signs the browser in


def test_buttons_need_the_pages_csrf_token(farm: Farm) -> None:
    submit(farm, "dash-cancel")
    csrf = signed_in(farm, ALICE_TOKEN)
    forged = farm.client.post("/ui/jobs/dash-cancel/cancel", data={"csrf_token": "0" * 64})
    assert forged.status_code == 403
    assert farm.client.get("/v1/jobs/dash-cancel", headers=ALICE).json()["state"] == "queued"
    done = farm.client.post("/ui/jobs/dash-cancel/cancel", data={"csrf_token": csrf}, follow_redirects=False)
    assert done.headers["location"] == "/ui/jobs/dash-cancel"
    assert farm.client.get("/v1/jobs/dash-cancel", headers=ALICE).json()["state"] == "canceled"


def test_forms_posted_by_another_site_are_refused(farm: Farm) -> None:
    # Sign-in has no session to bind a CSRF token to: the browser's Origin / Sec-Fetch-Site keep another site from
    # signing a visitor in with the attacker's token. The buttons check them besides their token.
    for foreign in ({"origin": "https://evil.example"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"}):
        refused = farm.client.post("/ui/signin", data={"token": ALICE_TOKEN}, headers=foreign, follow_redirects=False)
        assert refused.status_code == 403, foreign
        assert SESSION_COOKIE not in farm.client.cookies
    same_site = {"origin": "http://testserver", "sec-fetch-site": "same-origin"}
    accepted = farm.client.post("/ui/signin", data={"token": ALICE_TOKEN}, headers=same_site, follow_redirects=False)
    assert accepted.status_code == 303
    submit(farm, "dash-foreign")
    csrf = CSRF.search(farm.client.get("/ui/").text)
    assert csrf is not None
    forged = farm.client.post(
        "/ui/jobs/dash-foreign/cancel", data={"csrf_token": csrf.group(1)}, headers={"origin": "https://evil.example"}
    )
    assert forged.status_code == 403
    assert farm.client.get("/v1/jobs/dash-foreign", headers=ALICE).json()["state"] == "queued"


def test_a_job_page_shows_the_artifacts_the_api_gives(farm: Farm) -> None:
    submit(farm, "dash-done")
    farm.succeed_with_artifacts("alice", "dash-done")
    signed_in(farm, ALICE_TOKEN)
    page = farm.client.get("/ui/jobs/dash-done").text
    snapshot = farm.client.get("/v1/jobs/dash-done", headers=ALICE).json()
    for artifact in snapshot["artifacts"]:  # the URLs differ per read (signed); the stored file's path does not
        assert artifact["url"].split("?", 1)[0] in page
    assert 'data-testid="picture-result"' in page
    assert "Seed: 7" in page


def test_tenants_see_only_their_own_and_operators_everyone(make_farm: FarmFactory) -> None:
    farm = make_farm(operator_tenants="bob")
    submit(farm, "dash-private")
    signed_in(farm, ALICE_TOKEN)
    assert "dash-private" in farm.client.get("/ui/").text
    assert farm.client.get("/ui/workers").status_code == 403
    farm.client.cookies.clear()
    signed_in(farm, BOB_TOKEN)  # bob is the operator here
    assert "dash-private" in farm.client.get("/ui/").text
    assert farm.client.get("/ui/jobs/dash-private").status_code == 404  # his own tenant has no such job
    assert farm.client.get("/ui/jobs/dash-private?tenant=alice").status_code == 200
    assert "gpu-0@api-tests" in farm.client.get("/ui/workers").text


TASK_ROW = re.compile(r'<tr data-task-id="([^"]+)" data-state="([a-z]+)">')
COUNT = re.compile(r'data-testid="count-([a-z]+)">[a-z]+ <b>([0-9+]+)</b>')
OLDER = re.compile(r'<a href="([^"]+)" data-testid="older">')


def test_the_queue_pages_on_and_counts_the_whole_backlog(
    make_farm: FarmFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "QUEUE_ROWS_PER_TENANT", 3)
    farm = make_farm(operator_tenants="bob")
    for n in range(8):
        submit(farm, f"page-{n}")
    farm.claim("alice", "page-0")
    farm.succeed_with_artifacts("alice", "page-7")  # the newest: on the first page only
    signed_in(farm, ALICE_TOKEN)
    seen: list[str] = []
    address: str | None = "/ui/"
    while address is not None:
        page = farm.client.get(html.unescape(address))
        assert page.status_code == 200
        seen += [task for task, _state in TASK_ROW.findall(page.text)]
        # The counts are every job's, not the page's: 6 queued, 1 running, 1 succeeded on every page.
        counts = dict(COUNT.findall(page.text))
        assert (counts["queued"], counts["running"], counts["succeeded"], counts["failed"]) == ("6", "1", "1", "0")
        older = OLDER.search(page.text)
        address = older.group(1) if older is not None else None
    assert sorted(seen) == [f"page-{n}" for n in range(8)]  # each job on exactly one page
    assert len(seen) == len(set(seen))
    assert farm.client.get("/ui/?before=not-a-cursor").status_code == 400

    # An operator's view lists every tenant's newest; a tenant's name pages through that tenant alone.
    farm.client.cookies.clear()
    signed_in(farm, BOB_TOKEN)
    everyone = farm.client.get("/ui/").text
    assert len(TASK_ROW.findall(everyone)) == 3
    assert OLDER.search(everyone) is None
    assert 'href="/ui/?tenant=alice"' in everyone
    alice = farm.client.get("/ui/?tenant=alice").text
    assert len(TASK_ROW.findall(alice)) == 3
    assert OLDER.search(alice) is not None
    assert farm.client.get("/ui/?tenant=nobody").status_code == 404


WORKER_ROW = re.compile(r'<tr data-worker="gpu-0@api-tests".*?</tr>', re.S)


def test_the_workers_page_shows_what_each_worker_is_doing(make_farm: FarmFactory) -> None:
    """GPU, loaded model, current job (a link to it) with its step, step speed and OOM count, from the status the
    worker announces (worker/status.py); dashes from a worker that announces none."""
    farm = make_farm(operator_tenants="bob")
    signed_in(farm, BOB_TOKEN)
    quiet = WORKER_ROW.search(farm.client.get("/ui/workers").text)
    assert quiet is not None
    assert 'data-testid="worker-ooms">–<' in quiet.group(0)  # announced without a status

    submit(farm, "dash-rendering")
    farm.claim("alice", "dash-rendering", worker=FARM_WORKER)
    status = {
        "gpu": "NVIDIA H100 80GB HBM3",
        "loaded_models": ["tiny-inpaint", "tiny-edit"],
        "current_job": "dash-rendering",
        "step": 3,
        "total_steps": 8,
        "steps_per_s": 2.5,
        "oom_count": 2,
    }
    farm.db.workers.announce(
        FARM_WORKER, device="cuda", queues=[], models=["tiny-inpaint"], ttl_s=FARM_WORKER_TTL_S, status=status
    )
    found = WORKER_ROW.search(farm.client.get("/ui/workers").text)
    assert found is not None
    row = found.group(0)
    assert "cuda · NVIDIA H100 80GB HBM3" in row
    assert 'data-testid="worker-loaded">tiny-inpaint, tiny-edit<' in row
    assert '<a href="/ui/jobs/dash-rendering?tenant=alice">dash-rendering</a>' in row
    assert "step 3/8" in row
    assert 'data-testid="worker-speed">2.50 it/s<' in row
    assert 'data-testid="worker-ooms">2<' in row
    assert "dash-rendering" not in farm.client.get("/v1/workers", headers=ALICE).text  # other tenants' task ids


def test_a_tenant_cannot_reach_another_tenants_job(make_farm: FarmFactory) -> None:
    farm = make_farm()
    submit(farm, "dash-alice")
    signed_in(farm, BOB_TOKEN)
    assert "dash-alice" not in farm.client.get("/ui/").text
    assert farm.client.get("/ui/jobs/dash-alice").status_code == 404
    assert farm.client.get("/ui/jobs/dash-alice?tenant=alice").status_code == 404


def test_the_docs_pages_point_at_local_assets(farm: Farm) -> None:
    for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        page = farm.client.get(path).text
        (url,) = re.findall(rf'src="([^"]*{re.escape(asset)})"', page)
        assert url.startswith("/ui/static/vendor/")
        assert farm.client.get(url).status_code == 200
