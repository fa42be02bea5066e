"""Server-sent snapshots through a real HTTP server: first at once, one per change, resume, end after terminal."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from scheduler.routes.events import snapshot_stream
from shared.live import LivePreview
from tests.api.conftest import ALICE, BOB, Farm, job_body, png_bytes

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 10.0  # a change must arrive well within this (waits are woken by notify, not by polling)


def events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse SSE messages: each as {"id", "event", "data"}; comments and `retry:` are skipped."""
    message: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in message:
                yield message
            message = {}
        elif line.startswith(":") or line.startswith("retry:"):
            continue
        else:
            name, _, value = line.partition(": ")
            message[name] = json.loads(value) if name == "data" else value


def submit(client: httpx.Client, task_id: str) -> None:
    asset = client.post("/v1/assets", content=png_bytes()).json()["asset_id"]
    assert client.put(f"/v1/jobs/{task_id}", json=job_body(asset)).status_code == 201


def test_stream_follows_a_job_to_its_end(served_farm: tuple[Farm, str]) -> None:
    farm, base_url = served_farm
    timeout = httpx.Timeout(5.0, read=READ_TIMEOUT_S)
    with httpx.Client(base_url=base_url, headers=ALICE, timeout=timeout) as client:
        submit(client, "sse-1")
        with client.stream("GET", "/v1/jobs/sse-1/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = events(response)
            first = next(stream)
            assert first["event"] == "snapshot"
            assert first["data"]["state"] == "queued"
            assert int(first["id"]) == first["data"]["seq"]

            row = farm.claim("alice", "sse-1")
            running = next(stream)
            assert running["data"]["state"] == "running"
            assert running["data"]["seq"] > first["data"]["seq"]

            farm.progress(row, step=2, total=8, seq=1)
            progressed = next(stream)
            assert progressed["data"]["step"] == 2
            assert progressed["data"]["seq"] == running["data"]["seq"] + 1

            farm.succeed_with_artifacts("alice", "sse-1")
            done = next(stream)
            assert done["data"]["state"] == "succeeded"
            assert done["data"]["seq"] > progressed["data"]["seq"]
            assert list(stream) == []  # the stream ends after the terminal snapshot

        # Resuming from an old id skips what the client has: only the current (terminal) snapshot comes.
        with client.stream("GET", "/v1/jobs/sse-1/events", headers={"Last-Event-ID": first["id"]}) as response:
            assert [m["data"]["seq"] for m in events(response)] == [done["data"]["seq"]]
        # Resuming from the terminal snapshot: nothing to send, the stream ends at once.
        with client.stream("GET", f"/v1/jobs/sse-1/events?last_event_id={done['id']}") as response:
            assert list(events(response)) == []


def test_resume_waits_for_the_next_change(served_farm: tuple[Farm, str]) -> None:
    _farm, base_url = served_farm
    timeout = httpx.Timeout(5.0, read=READ_TIMEOUT_S)
    with httpx.Client(base_url=base_url, headers=ALICE, timeout=timeout) as client:
        submit(client, "sse-2")
        seq = client.get("/v1/jobs/sse-2").json()["seq"]
        with client.stream("GET", "/v1/jobs/sse-2/events", headers={"Last-Event-ID": str(seq)}) as response:
            stream = events(response)
            # Nothing new yet; cancel the queued job, which the client has not seen.
            assert client.post("/v1/jobs/sse-2/cancel").json()["state"] == "canceled"
            message = next(stream)
            assert message["data"]["state"] == "canceled"
            assert message["data"]["seq"] > seq
            assert list(stream) == []


def test_stream_is_404_for_other_tenants_and_422_for_a_bad_resume_id(served_farm: tuple[Farm, str]) -> None:
    _farm, base_url = served_farm
    with httpx.Client(base_url=base_url, headers=ALICE) as client:
        submit(client, "sse-3")
        assert client.get("/v1/jobs/sse-3/events", headers=BOB).status_code == 404
        bad = client.get("/v1/jobs/sse-3/events", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 422
        assert bad.json()["error"]["field"] == "Last-Event-ID"


def test_idle_stream_sends_keep_alive_comments(farm: Farm) -> None:
    from fastapi.testclient import TestClient

    client: TestClient = farm.client
    asset = client.post("/v1/assets", content=png_bytes(), headers=ALICE).json()["asset_id"]
    client.put("/v1/jobs/idle", json=job_body(asset), headers=ALICE)
    row = farm.claim("alice", "idle")
    services = farm.app.state.services

    async def collect() -> list[str]:
        chunks: list[str] = []
        stream = snapshot_stream(services, row.id, -1, keepalive_s=0.05, wait_slice_s=0.05)
        async for chunk in stream:
            chunks.append(chunk)
            if sum(c.startswith(": keep-alive") for c in chunks) >= 2:
                await stream.aclose()
                break
        return chunks

    chunks = asyncio.run(collect())
    assert chunks[0].startswith("retry:")
    assert chunks[1].startswith("id: ")
    assert '"state":"running"' in chunks[1]
    assert all(chunk.startswith(": keep-alive") for chunk in chunks[2:])


def test_a_queued_job_s_stream_follows_its_place_as_the_jobs_ahead_start(farm: Farm) -> None:
    # The job's own row does not change while the one ahead of it starts; its stream still tells it moved up,
    # under the same seq (the SDK takes an equal seq with other content as newer).
    client = farm.client
    asset = client.post("/v1/assets", content=png_bytes(), headers=ALICE).json()["asset_id"]
    for task in ("ahead", "behind"):
        assert client.put(f"/v1/jobs/{task}", json=job_body(asset), headers=ALICE).status_code == 201
    behind = farm.job_row("alice", "behind")
    services = farm.app.state.services

    async def collect() -> list[str]:
        chunks: list[str] = []
        stream = snapshot_stream(services, behind.id, -1, keepalive_s=60, wait_slice_s=0.05)
        async for chunk in stream:
            if not chunk.startswith("id: "):
                continue
            chunks.append(chunk)
            if len(chunks) == 1:
                await asyncio.to_thread(farm.claim, "alice", "ahead")
            elif '"queue_position":0' in chunk:
                await stream.aclose()
                break
        return chunks

    chunks = asyncio.run(asyncio.wait_for(collect(), READ_TIMEOUT_S))
    snapshots = [json.loads(chunk.split("data: ", 1)[1]) for chunk in chunks]
    assert [s["queue_position"] for s in snapshots] == [1, 0]
    assert snapshots[0]["seq"] == snapshots[1]["seq"] == behind.seq * 2**20
    assert chunks[0].split("\n")[0] == chunks[1].split("\n")[0]  # the same event id


def test_a_stream_with_previews_watches_the_job_and_sends_each_preview_once(served_farm: tuple[Farm, str]) -> None:
    farm, base_url = served_farm
    timeout = httpx.Timeout(5.0, read=READ_TIMEOUT_S)
    with httpx.Client(base_url=base_url, headers=ALICE, timeout=timeout) as client:
        submit(client, "sse-preview")
        row = farm.job_row("alice", "sse-preview")
        assert not farm.live.watched(row.id)
        assert client.get("/v1/jobs/sse-preview").json()["preview"] is None
        with client.stream("GET", "/v1/jobs/sse-preview/events?previews=true") as response:
            stream = events(response)
            assert next(stream)["data"]["state"] == "queued"
            assert farm.live.watched(row.id)  # marked before the first snapshot was sent

            row = farm.claim("alice", "sse-preview")
            assert next(stream)["data"]["state"] == "running"
            preview = LivePreview(
                job_id=str(row.id),
                attempt=row.attempt,
                preview_id=row.attempt * 2**20 + 1,
                step=3,
                job_no=0,
                method="Approx cheap",
                requested_method="Approx NN",
                mime="image/png",
                data_b64=base64.b64encode(png_bytes()).decode("ascii"),
                width=64,
                height=64,
            )
            farm.live.set_preview(preview)
            sent = next(stream)
            assert sent["event"] == "preview"
            assert "id" not in sent  # resuming goes by snapshot seq only
            assert sent["data"] == {
                "id": preview.preview_id,
                "step": 3,
                "job_no": 0,
                "method": "Approx cheap",
                "requested_method": "Approx NN",
                "width": 64,
                "height": 64,
                "image": preview.data_uri,
            }
            # A progress change sends a snapshot (without the picture), not the same preview again.
            farm.progress(row, step=4, total=8, seq=1)
            after = next(stream)
            assert (after["event"], after["data"]["step"], after["data"]["preview"]) == ("snapshot", 4, None)

            # A snapshot read with previews carries it; one without does not.
            assert client.get("/v1/jobs/sse-preview?previews=true").json()["preview"] == sent["data"]
            assert client.get("/v1/jobs/sse-preview").json()["preview"] is None

            farm.succeed_with_artifacts("alice", "sse-preview")
            done = [message for message in stream]
            assert [m["event"] for m in done] == ["snapshot"]
            assert done[0]["data"]["state"] == "succeeded"
            assert done[0]["data"]["preview"] is None


def test_a_stream_without_previews_does_not_watch(served_farm: tuple[Farm, str]) -> None:
    farm, base_url = served_farm
    with httpx.Client(base_url=base_url, headers=ALICE, timeout=httpx.Timeout(5.0, read=READ_TIMEOUT_S)) as client:
        submit(client, "sse-nopreview")
        row = farm.job_row("alice", "sse-nopreview")
        with client.stream("GET", "/v1/jobs/sse-nopreview/events") as response:
            assert next(events(response))["data"]["state"] == "queued"
            assert not farm.live.watched(row.id)
