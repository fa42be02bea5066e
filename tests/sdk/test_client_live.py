"""The SDK's blocking and async clients against the live farm: submit, wait, cancel, list, download, render, errors,
and a timed-out first submit whose retry still makes exactly one job. Every test that takes `farm` or `make_client`
runs once with `Client` and once with `AsyncClient`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

import httpx
import pytest

import renderfarm
from renderfarm import AsyncClient, Client, JobState, Retries
from scheduler.snapshots import public_worker_name
from tests.sdk.clients import ClientMaker
from tests.sdk.conftest import (
    MODEL,
    SIZE,
    LiveFarm,
    job_fields,
    mask_picture,
    picture,
    png,
    unique,
)

pytestmark = [pytest.mark.integration]

JOB_TIMEOUT_S = 60.0


def test_submit_wait_download_with_a_mask(farm: Client, tmp_path: Path, live_farm: LiveFarm) -> None:
    image_path = tmp_path / "in.png"
    picture(1).save(image_path)
    task_id = unique("sync")

    job = farm.submit(image=image_path, mask=mask_picture(), task_id=task_id, **job_fields(seed=11))
    assert job.task_id == task_id
    assert job.state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)

    updates: list[renderfarm.Job] = []
    done = farm.wait(task_id, timeout=JOB_TIMEOUT_S, on_update=updates.append)
    assert done.state is JobState.SUCCEEDED, live_farm.logs()
    assert done.worker in {public_worker_name(worker) for worker in live_farm.workers}
    assert [u.seq for u in updates] == sorted({u.seq for u in updates})  # newer snapshots only, in order

    paths = farm.download(done, tmp_path / "out")
    names = sorted(path.name for path in paths)
    assert names == ["mask-0.png", "result-0.png"]  # the stand-in engine makes no overlay
    for artifact in done.artifacts:
        data = (tmp_path / "out" / artifact.filename).read_bytes()
        assert hashlib.sha256(data).hexdigest() == artifact.sha256
    # Downloading again keeps the verified files (resume) and fetches nothing.
    before = {path: path.stat().st_mtime_ns for path in paths}
    assert farm.download(task_id, tmp_path / "out") == paths
    assert {path: path.stat().st_mtime_ns for path in paths} == before


def test_the_same_picture_is_uploaded_once(live_farm: LiveFarm, alice_token: str, make_client: ClientMaker) -> None:
    seen: list[str] = []

    def record(request: httpx.Request) -> None:
        seen.append(f"{request.method} {request.url.path}")

    with make_client(live_farm.url, token=alice_token, on_request=record) as client:
        image = picture(2)
        first = client.submit(image=image, **job_fields())
        second = client.submit(image=png(image), **job_fields(seed=3))
    assert seen.count("POST /v1/assets") <= 1  # at most once (the farm may have it from another test already)
    assert sum(1 for line in seen if line.startswith("GET /v1/assets/")) == 1  # asked once, then remembered
    assert first.task_id != second.task_id


def test_render_returns_pictures(farm: Client) -> None:
    pictures = farm.render(image=picture(3), timeout=JOB_TIMEOUT_S, **job_fields(seed=5))
    assert len(pictures) == 1
    assert pictures[0].size == (SIZE, SIZE)


def test_cancel_a_running_job(farm: Client) -> None:
    # 150 stand-in steps of 0.02 s: long enough to be caught running.
    job = farm.submit(image=picture(4), **job_fields(steps=150, denoising_strength=1.0))
    _wait_running(farm, job.task_id)
    farm.cancel(job.task_id)
    done = farm.wait(job.task_id, timeout=JOB_TIMEOUT_S)
    assert done.state is JobState.CANCELED
    with pytest.raises(renderfarm.JobCanceled):
        done.raise_for_state()
    with pytest.raises(renderfarm.JobCanceled):
        farm.download(done, "unused")


def _wait_running(farm: Client, task_id: str) -> None:
    try:
        farm.wait(task_id, timeout=JOB_TIMEOUT_S, on_update=_stop_when_running)
    except _Running:
        return
    pytest.fail(f"job {task_id} finished before it was seen running")


class _Running(Exception):
    pass


def _stop_when_running(job: renderfarm.Job) -> None:
    if job.state is JobState.RUNNING:
        raise _Running


def test_list_iterates_every_page(live_farm: LiveFarm, bob_token: str, make_client: ClientMaker) -> None:
    with make_client(live_farm.url, token=bob_token) as bob:
        ids = {bob.submit(image=picture(5), task_id=unique("list"), **job_fields(seed=i)).task_id for i in range(5)}
        listed = [job.task_id for job in bob.list(page_size=2)]
        assert ids <= set(listed)
        assert len(listed) == len(set(listed))  # every job once
        for task_id in ids:
            bob.wait(task_id, timeout=JOB_TIMEOUT_S)
        succeeded = {job.task_id for job in bob.list(state="succeeded", page_size=2)}
        assert ids <= succeeded


def test_errors_map_the_api_answers(farm: Client, live_farm: LiveFarm, make_client: ClientMaker) -> None:
    with pytest.raises(renderfarm.ValidationError) as invalid:
        farm.submit(image=picture(6), **job_fields(steps=1000))
    assert invalid.value.status_code == 422
    assert invalid.value.field == "steps"

    with pytest.raises(renderfarm.NotFound):
        farm.get(unique("missing"))

    task_id = unique("conflict")
    farm.submit(image=picture(6), task_id=task_id, **job_fields())
    again = farm.submit(image=picture(6), task_id=task_id, **job_fields())  # same request: the same job
    assert again.task_id == task_id
    with pytest.raises(renderfarm.Conflict) as conflict:
        farm.submit(image=picture(6), task_id=task_id, **job_fields(prompt="a blue square"))
    assert conflict.value.existing_request_hash
    assert conflict.value.request_hash

    with (
        make_client(live_farm.url, token="not-a-valid-token-at-all") as stranger,
        pytest.raises(renderfarm.Unauthorized),
    ):
        stranger.get(task_id)

    with (
        make_client("http://127.0.0.1:9", retries=Retries(attempts=2, backoff_s=0.01)) as nowhere,
        pytest.raises(renderfarm.ConnectError),
    ):
        nowhere.get("x")


class DropFirstResponse(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Sends every request, but for the first PUT throws the answer away and raises a read timeout, as if the
    connection died after the farm had done the work. Serves the blocking and the async client."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.async_inner = httpx.AsyncHTTPTransport()
        self.puts = 0

    def _lost(self, request: httpx.Request) -> bool:
        if request.method == "PUT":
            self.puts += 1
        return request.method == "PUT" and self.puts == 1

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self._lost(request):
            response.read()
            response.close()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.async_inner.handle_async_request(request)
        if self._lost(request):
            await response.aread()
            await response.aclose()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.async_inner.aclose()


def test_a_timed_out_first_submit_retried_makes_exactly_one_job(
    live_farm: LiveFarm, alice_token: str, make_client: ClientMaker
) -> None:
    transport = DropFirstResponse()
    tag = unique("retry")
    with make_client(live_farm.url, token=alice_token, transport=transport, retries=Retries(backoff_s=0.01)) as client:
        job = client.submit(image=picture(7), **job_fields(tags=[tag]))
        assert transport.puts == 2  # the lost answer, then the retry that found the job
        done = client.wait(job.task_id, timeout=JOB_TIMEOUT_S)
        assert done.state is JobState.SUCCEEDED
    with make_client(live_farm.url, token=alice_token) as client:
        tagged = [listed for listed in client.list(page_size=500) if listed.task_id == job.task_id]
        assert len(tagged) == 1


def test_a_real_client_timeout_then_retry_makes_one_job(
    live_farm: LiveFarm, alice_token: str, make_client: ClientMaker
) -> None:
    """No wrapper: a read timeout far below what a submit takes, and enough retries that one finally answers."""
    retries = Retries(attempts=15, backoff_s=0.05, max_backoff_s=0.1)
    timeout = renderfarm.Timeout(5, read=0.001)
    task_id = unique("short")
    with make_client(live_farm.url, token=alice_token, timeout=timeout, retries=retries) as hasty:
        with make_client(live_farm.url, token=alice_token) as patient:
            asset = patient.upload(picture(8)).asset_id  # the upload itself is not the point here
        # Every try may time out on a busy machine: the job may then exist or not, but never twice.
        with contextlib.suppress(renderfarm.RequestTimeout):
            hasty.submit(image=asset, task_id=task_id, **job_fields())
    with make_client(live_farm.url, token=alice_token) as client:
        # The job may or may not have been created by one of the tries; either way the same id names one job.
        try:
            job = client.submit(image=asset, task_id=task_id, **job_fields())
        except renderfarm.Conflict:  # pragma: no cover - would mean a different request was stored
            pytest.fail("the retries stored a different request")
        assert [j.task_id for j in client.list(page_size=500) if j.task_id == task_id] == [job.task_id]


# --------------------------------------------------------------------------------------------------------------
# The async client


def test_async_client_has_the_same_surface(live_farm: LiveFarm, alice_token: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(live_farm.url, token=alice_token) as farm:
            jobs = [await farm.submit(image=picture(9), **job_fields(seed=i)) for i in range(3)]
            done = await asyncio.gather(*(farm.wait(job.task_id, timeout=JOB_TIMEOUT_S) for job in jobs))
            assert all(job.state is JobState.SUCCEEDED for job in done)
            paths = await farm.download(done[0], tmp_path / "a")
            assert [path.name for path in paths] == ["result-0.png"]
            pictures = await farm.render(image=picture(9), timeout=JOB_TIMEOUT_S, **job_fields(seed=99))
            assert pictures[0].size == (SIZE, SIZE)

            long = await farm.submit(image=picture(9), **job_fields(steps=150, denoising_strength=1.0))
            await farm.cancel(long.task_id)
            assert (await farm.wait(long.task_id, timeout=JOB_TIMEOUT_S)).state is JobState.CANCELED

            listed = [job.task_id async for job in farm.list(page_size=2)]
            assert {job.task_id for job in jobs} <= set(listed)

            with pytest.raises(renderfarm.ValidationError) as invalid:
                await farm.submit(image=picture(9), **job_fields(cfg_scale=99))
            assert invalid.value.field == "cfg_scale"
            with pytest.raises(renderfarm.NotFound):
                await farm.get(unique("missing"))

    asyncio.run(scenario())


class AsyncDropFirstResponse(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.puts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "PUT":
            self.puts += 1
            if self.puts == 1:
                await response.aread()
                await response.aclose()
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_async_timed_out_first_submit_makes_one_job(live_farm: LiveFarm, alice_token: str) -> None:
    async def scenario() -> str:
        transport = AsyncDropFirstResponse()
        async with AsyncClient(
            live_farm.url, token=alice_token, transport=transport, retries=Retries(backoff_s=0.01)
        ) as farm:
            job = await farm.submit(image=picture(10), **job_fields())
            assert transport.puts == 2
            return job.task_id

    task_id = asyncio.run(scenario())
    with Client(live_farm.url, token=alice_token) as client:
        assert sum(1 for job in client.list(page_size=500) if job.task_id == task_id) == 1
    assert MODEL  # the job ran on these tests' queues
