"""A real scheduler process restarted while SDK clients wait for a job (issue 15, finding 3).

The farm here is a scheduler process alone (its own PostgreSQL database, Redis database and S3 bucket): the job
stays queued, since no worker consumes its queue, and is canceled over the API once the scheduler is back, so its
final snapshot is known. Four waiters follow it, `Client` and `AsyncClient`, streaming and polling, each with only
two tries per request (`Retries(attempts=2)`): the old `wait` gave up once a request's tries were used up, whatever
its timeout. Every request a waiter makes is recorded by its transport, which is how the test knows, without
sleeping, that the waiters kept trying while the scheduler was away and that the streams resumed with
`Last-Event-ID`.

The graceful shutdown is timed too: with the streams open, the scheduler process must exit well within
uvicorn's `timeout_graceful_shutdown` (10 s), which is what it used to wait out.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from renderfarm import AsyncClient, Client, Job, JobState, Retries
from tests.lone_scheduler import LoneScheduler, running_lone_scheduler
from tests.pictures import picture, png_bytes
from tests.services import S3Server
from tests.waiting import wait_until

TOKEN = "restart-token-0123456789abcdef"
WAIT_TIMEOUT_S = 180.0  # the waiters' own timeout: far longer than the restart
SHUTDOWN_BOUND_S = 5.0  # a graceful shutdown with open streams must end within this (it took 10 s and more)
RAW_STREAMS = 6  # event streams opened by plain HTTP clients besides the waiters' two
FAILURES_WHILE_AWAY = 3  # failed requests each waiter must have survived: more than its 2 tries per request


@dataclass
class Exchange:
    path: str
    last_event_id: str | None
    status: int | None  # None: the request failed (the farm was away)
    at: float = field(default_factory=time.monotonic)


class Recorder:
    """Every request of one client, with its outcome; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.exchanges: list[Exchange] = []

    def record(self, request: httpx.Request, status: int | None) -> None:
        with self._lock:
            self.exchanges.append(Exchange(request.url.path, request.headers.get("last-event-id"), status))

    def failures_since(self, since: float) -> int:
        with self._lock:
            return sum(1 for e in self.exchanges if e.status is None and e.at >= since)

    def resumed_streams_since(self, since: float) -> list[Exchange]:
        with self._lock:
            return [
                e
                for e in self.exchanges
                if e.path.endswith("/events") and e.last_event_id is not None and e.status == 200 and e.at >= since
            ]


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = super().handle_request(request)
        except httpx.TransportError:
            self.recorder.record(request, None)
            raise
        self.recorder.record(request, response.status_code)
        return response


class AsyncRecordingTransport(httpx.AsyncHTTPTransport):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError:
            self.recorder.record(request, None)
            raise
        self.recorder.record(request, response.status_code)
        return response


@dataclass
class Waiter:
    """One SDK client waiting for the job in a thread of its own."""

    name: str
    asynchronous: bool
    stream: bool
    recorder: Recorder = field(default_factory=Recorder)
    updates: list[Job] = field(default_factory=list)
    result: Job | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self, url: str, task_id: str) -> None:
        self.thread = threading.Thread(target=self._run, args=(url, task_id), name=self.name, daemon=True)
        self.thread.start()

    def _run(self, url: str, task_id: str) -> None:
        retries = Retries(attempts=2)
        try:
            if self.asynchronous:
                self.result = asyncio.run(self._wait_async(url, task_id, retries))
            else:
                with Client(url, token=TOKEN, retries=retries, transport=RecordingTransport(self.recorder)) as client:
                    self.result = client.wait(
                        task_id, timeout=WAIT_TIMEOUT_S, on_update=self.updates.append, stream=self.stream
                    )
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _wait_async(self, url: str, task_id: str, retries: Retries) -> Job:
        transport = AsyncRecordingTransport(self.recorder)
        async with AsyncClient(url, token=TOKEN, retries=retries, transport=transport) as client:
            return await client.wait(task_id, timeout=WAIT_TIMEOUT_S, on_update=self.updates.append, stream=self.stream)

    def check_alive(self) -> None:
        if self.error is not None:
            raise AssertionError(f"{self.name} gave up: {self.error!r}") from self.error


@pytest.fixture
def lone_scheduler(s3_server: S3Server, tmp_path: Path) -> Iterator[LoneScheduler]:
    with running_lone_scheduler(s3_server, tmp_path, f"alice:{TOKEN}") as scheduler:
        yield scheduler


def test_waits_return_the_final_snapshot_across_a_scheduler_restart(lone_scheduler: LoneScheduler) -> None:
    scheduler = lone_scheduler
    task_id = f"restart-{uuid.uuid4().hex[:10]}"
    with Client(scheduler.url, token=TOKEN) as client:
        # The model's queue has no worker: the job stays queued until the test cancels it.
        client.submit(image=png_bytes(picture(1)), prompt="a restart", steps=4, width=64, height=64, task_id=task_id)
    waiters = [
        Waiter("sync-stream", asynchronous=False, stream=True),
        Waiter("sync-poll", asynchronous=False, stream=False),
        Waiter("async-stream", asynchronous=True, stream=True),
        Waiter("async-poll", asynchronous=True, stream=False),
    ]
    for waiter in waiters:
        waiter.start(scheduler.url, task_id)

    def all_following() -> bool:
        for waiter in waiters:
            waiter.check_alive()
        streams_open = all(
            any(e.path.endswith("/events") and e.status == 200 for e in w.recorder.exchanges)
            for w in waiters
            if w.stream
        )
        return streams_open and all(w.updates for w in waiters)

    wait_until(all_following, 60, lambda: f"the waiters to follow the job\n{scheduler.logs()}")

    # More open streams, from plain HTTP clients that read nothing past the headers.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    raw = [httpx.Client(base_url=scheduler.url, headers=auth) for _ in range(RAW_STREAMS)]
    responses = [http.send(http.build_request("GET", f"/v1/jobs/{task_id}/events"), stream=True) for http in raw]
    assert [response.status_code for response in responses] == [200] * RAW_STREAMS

    # A graceful shutdown with the streams open ends promptly: the streams are told to end.
    shutdown_s = scheduler.terminate_and_time()
    for response, http in zip(responses, raw, strict=True):
        response.close()
        http.close()
    stopped_at = time.monotonic()
    print(f"graceful shutdown with open streams: {shutdown_s:.2f} s")
    assert shutdown_s < SHUTDOWN_BOUND_S, f"graceful shutdown took {shutdown_s:.1f} s\n{scheduler.logs()}"
    assert f"ended {RAW_STREAMS + 2} open event stream(s)" in scheduler.logs()

    # While the scheduler is away, every waiter keeps trying, past the tries of one request.
    def each_failed_enough() -> bool:
        for waiter in waiters:
            waiter.check_alive()
        return all(w.recorder.failures_since(stopped_at) >= FAILURES_WHILE_AWAY for w in waiters)

    wait_until(each_failed_enough, 60, "each waiter to retry while the scheduler is away", max_interval=0.2)
    for waiter in waiters:
        waiter.check_alive()

    restarted_at = time.monotonic()
    scheduler.start()
    streamers = [w for w in waiters if w.stream]

    def streams_resumed() -> bool:
        for waiter in waiters:
            waiter.check_alive()
        return all(w.recorder.resumed_streams_since(restarted_at) for w in streamers)

    # The streaming waiters follow the job on the new scheduler by resuming their stream after the last snapshot
    # they saw; only then does the job change.
    wait_until(
        streams_resumed,
        60,
        lambda: f"streams resumed with Last-Event-ID: {[w.recorder.exchanges for w in streamers]}\n{scheduler.logs()}",
    )
    with httpx.Client(base_url=scheduler.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        assert http.post(f"/v1/jobs/{task_id}/cancel").status_code == 200

    for waiter in waiters:
        assert waiter.thread is not None
        waiter.thread.join(60)
        assert not waiter.thread.is_alive(), f"{waiter.name} still waits\n{scheduler.logs()}"
        waiter.check_alive()
        assert waiter.result is not None, waiter.name
        assert waiter.result.state is JobState.CANCELED, waiter.name
