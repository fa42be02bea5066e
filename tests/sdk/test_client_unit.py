"""The SDK's parts that need no farm: error mapping, retries, streaming fallback, request building, configuration,
manifests and the public surface. The farm's side is `httpx.MockTransport` here (the live tests use the real one)."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import renderfarm
from renderfarm import Client, Grid, JobState, Retries, Timeout
from renderfarm._transport import SSEParser
from renderfarm.client import job_request
from renderfarm.manifest import ManifestError, load_manifest
from scheduler.batches import expand_grid
from shared.job.ids import is_valid_task_id
from tests.sdk.clients import ClientMaker

URL = "http://farm.test"
FAST = Retries(attempts=3, backoff_s=0.001, max_backoff_s=0.002)


def snapshot(task_id: str = "t1", state: str = "queued", seq: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "state": state,
        "progress": 0.0,
        "step": 0,
        "total_steps": 4,
        "eta_s": None,
        "queue_position": None,
        "attempt": 0,
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": None,
        "finished_at": None,
        "worker": None,
        "error": None,
        "warnings": [],
        "artifacts": [],
        "seq": seq,
        **extra,
    }


@pytest.fixture
def client_with(make_client: ClientMaker) -> Callable[..., Client]:
    """A client of the farm that `handler` plays (the test runs with `Client` and with `AsyncClient`)."""

    def make(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> Client:
        kwargs.setdefault("retries", FAST)
        return make_client(URL, token="secret-token", transport=httpx.MockTransport(handler), **kwargs)

    return make


def error(status: int, type_: str, code: str, message: str = "no", **extra: Any) -> httpx.Response:
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else {}
    return httpx.Response(
        status, json={"error": {"type": type_, "code": code, "message": message, **extra}}, headers=headers
    )


def fresh(response: httpx.Response) -> httpx.Response:
    """A new response like `response`: a client takes over the stream of the one it gets, so none is served twice."""
    return httpx.Response(response.status_code, headers=response.headers, content=response.content)


# --------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (error(401, "unauthorized", "invalid_token"), renderfarm.Unauthorized),
        (error(403, "forbidden", "dev_mode_remote_client"), renderfarm.Forbidden),
        (error(404, "not_found", "job_not_found"), renderfarm.NotFound),
        (error(409, "conflict", "task_id_conflict", existing_request_hash="a", request_hash="b"), renderfarm.Conflict),
        (error(413, "payload_too_large", "too_large", field="init_images.0"), renderfarm.PayloadTooLarge),
        (error(422, "invalid_request", "out_of_range", field="steps"), renderfarm.ValidationError),
        (error(500, "internal", "internal"), renderfarm.ServerError),
        (httpx.Response(502, text="<html>bad gateway</html>"), renderfarm.ServerError),
    ],
)
def test_error_answers_become_typed_exceptions(
    response: httpx.Response, expected: type[Exception], client_with: Callable[..., Client]
) -> None:
    with (
        client_with(lambda request: fresh(response), retries=Retries(attempts=1)) as client,
        pytest.raises(expected) as caught,
    ):
        client.get("t1")
    exc = caught.value
    assert isinstance(exc, renderfarm.APIError)
    assert exc.status_code == response.status_code
    assert exc.request is not None
    if response.status_code == 422:
        assert exc.field == "steps"
        assert isinstance(exc, renderfarm.ValidationError)
    if response.status_code == 409:
        assert isinstance(exc, renderfarm.Conflict)
        assert (exc.existing_request_hash, exc.request_hash) == ("a", "b")


def test_try_later_answers_are_retried_and_retry_after_is_honoured(client_with: Callable[..., Client]) -> None:
    answers = [error(503, "unavailable", "database_unavailable", retry_after=0), httpx.Response(200, json=snapshot())]
    with client_with(lambda request: answers.pop(0)) as client:
        assert client.get("t1").task_id == "t1"
    assert answers == []


def test_a_long_retry_after_is_raised_with_its_value(client_with: Callable[..., Client]) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return error(429, "rate_limited", "too_many_queued_jobs", retry_after=3600, retry_after_s=3600)

    with client_with(handler) as client, pytest.raises(renderfarm.RateLimited) as caught:
        client.get("t1")
    assert calls == 1
    assert caught.value.retry_after_s == 3600


def test_server_errors_are_not_retried_but_transport_failures_are(client_with: Callable[..., Client]) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return error(500, "internal", "internal")

    with client_with(handler) as client, pytest.raises(renderfarm.ServerError):
        client.get("t1")
    assert len(calls) == 3


def test_a_submit_retried_after_a_timeout_uses_the_same_task_id(client_with: Callable[..., Client]) -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if len(paths) == 1:
            raise httpx.ReadTimeout("lost", request=request)
        return httpx.Response(200, json=snapshot(request.url.path.rsplit("/", 1)[1]))

    with client_with(handler) as client:
        job = client.submit(image="asset:" + "a" * 64, prompt="x")
    assert len(paths) == 2
    assert paths[0] == paths[1] == f"/v1/jobs/{job.task_id}"
    assert job.task_id.startswith("rf-")


def test_timeouts_exhausted_raise_request_timeout(client_with: Callable[..., Client]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with client_with(handler) as client, pytest.raises(renderfarm.RequestTimeout):
        client.get("t1")


# --------------------------------------------------------------------------------------------------------------
# Waiting


def test_wait_streams_events_and_drops_stale_snapshots(client_with: Callable[..., Client]) -> None:
    events = "".join(
        f"id: {seq}\nevent: snapshot\ndata: {json.dumps(snapshot(state=state, seq=seq))}\n\n"
        for seq, state in ((2, "running"), (1, "queued"), (5, "succeeded"))
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/jobs/t1/events"
        return httpx.Response(
            200, text=": keep-alive\n\nretry: 2000\n\n" + events, headers={"Content-Type": "text/event-stream"}
        )

    seen: list[int] = []
    with client_with(handler) as client:
        job = client.wait("t1", timeout=5, on_update=lambda j: seen.append(j.seq))
    assert job.state is JobState.SUCCEEDED
    assert seen == [2, 5]


def test_wait_takes_a_queued_job_s_new_place_under_the_same_seq(client_with: Callable[..., Client]) -> None:
    # The farm sends a queued job's snapshot again, same seq, when the jobs ahead start: it is news; a repeat is not.
    sent = [snapshot(seq=3, queue_position=2), snapshot(seq=3, queue_position=2), snapshot(seq=3, queue_position=1)]
    sent.append(snapshot(state="succeeded", seq=9))
    events = "".join(f"id: {s['seq']}\nevent: snapshot\ndata: {json.dumps(s)}\n\n" for s in sent)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=events, headers={"Content-Type": "text/event-stream"})

    places: list[tuple[int, int | None]] = []
    with client_with(handler) as client:
        client.wait("t1", timeout=5, on_update=lambda j: places.append((j.seq, j.queue_position)))
    assert places == [(3, 2), (3, 1), (9, None)]


def test_wait_falls_back_to_polling_when_streaming_fails(client_with: Callable[..., Client]) -> None:
    polls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        if request.url.path.endswith("/events"):
            return httpx.Response(200, json={"not": "a stream"})  # a proxy in the way
        polls += 1
        return httpx.Response(200, json=snapshot(state="succeeded" if polls >= 3 else "running", seq=polls))

    with client_with(handler) as client:
        assert client.wait("t1", timeout=10).state is JobState.SUCCEEDED
    assert polls == 3


def test_wait_gives_up_after_its_timeout_with_the_last_snapshot(client_with: Callable[..., Client]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            raise httpx.ConnectError("no streams here", request=request)
        return httpx.Response(200, json=snapshot(state="running"))

    with client_with(handler) as client, pytest.raises(renderfarm.WaitTimeout) as caught:
        client.wait("t1", timeout=0.3)
    assert caught.value.job.state is JobState.RUNNING


def test_wait_outlasts_the_request_retries_while_the_farm_is_away(client_with: Callable[..., Client]) -> None:
    # The farm refuses connections for more requests than one request's tries (1 here), then answers 503 once,
    # then streams from the last seq the wait saw: the wait goes on until the job's end (issue 15, finding 3).
    requests: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append((request.url.path, request.headers.get("last-event-id")))
        if len(requests) == 1:
            event = f"id: 4\nevent: snapshot\ndata: {json.dumps(snapshot(state='running', seq=4))}\n\n"
            return httpx.Response(200, text=event, headers={"Content-Type": "text/event-stream"})  # then it ends
        if len(requests) <= 6:
            raise httpx.ConnectError("refused", request=request)
        if len(requests) == 7:
            return httpx.Response(503, json={"error": {"type": "unavailable", "code": "x", "message": "later"}})
        if request.url.path.endswith("/events"):
            event = f"id: 9\nevent: snapshot\ndata: {json.dumps(snapshot(state='succeeded', seq=9))}\n\n"
            return httpx.Response(200, text=event, headers={"Content-Type": "text/event-stream"})
        return httpx.Response(200, json=snapshot(state="running", seq=4))

    with client_with(handler, retries=Retries(attempts=1)) as client:
        job = client.wait("t1", timeout=60)
    assert job.state is JobState.SUCCEEDED
    assert requests[-1] == ("/v1/jobs/t1/events", "4")  # resumed after the last snapshot seen


def test_wait_without_any_answer_raises_the_last_error_at_its_deadline(client_with: Callable[..., Client]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with client_with(handler, retries=Retries(attempts=1)) as client, pytest.raises(renderfarm.ConnectError):
        client.wait("t1", timeout=0.5)


def test_wait_raises_refusals_at_once(client_with: Callable[..., Client]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"type": "not_found", "code": "job_not_found", "message": "no"}})

    with client_with(handler) as client, pytest.raises(renderfarm.NotFound):
        client.wait("t1", timeout=60)


def test_sse_parser_follows_the_event_stream_rules() -> None:
    parser = SSEParser()
    lines = [": comment", "id: 7", "event: snapshot", 'data: {"a":', "data: 1}", "", "data: x", ""]
    events = [event for line in lines for event in parser.feed(line)]
    assert [(e.event, e.data, e.id) for e in events] == [("snapshot", '{"a":\n1}', "7"), ("message", "x", None)]
    assert parser.last_id == "7"


# --------------------------------------------------------------------------------------------------------------
# Downloads and the token


def test_downloads_are_verified_and_the_token_stays_home(tmp_path: Path, client_with: Callable[..., Client]) -> None:
    good = b"\x89PNG good bytes"
    artifact = {
        "kind": "result",
        "index": 0,
        "url": "http://storage.test/bucket/result-0.png?sig=1",
        "sha256": hashlib.sha256(good).hexdigest(),
        "bytes": len(good),
        "width": 64,
        "height": 64,
    }
    served = [b"corrupted", good]
    authorizations: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        authorizations[request.url.host] = request.headers.get("authorization")
        if request.url.host == "storage.test":
            return httpx.Response(200, content=served.pop(0))
        return httpx.Response(200, json=snapshot(state="succeeded", artifacts=[artifact]))

    with client_with(handler) as client:
        [path] = client.download("t1", tmp_path)
        assert path.read_bytes() == good  # the corrupted first answer was fetched again
        served.append(b"still corrupted")
        served.append(b"and again")
        path.unlink()
        with pytest.raises(renderfarm.IntegrityError):
            client.download("t1", tmp_path)
        assert not path.exists()  # nothing unverified is left under the final name
    assert authorizations["farm.test"] == "Bearer secret-token"
    assert authorizations["storage.test"] is None  # presigned URLs must not carry a second credential


def test_url_and_token_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, make_client: ClientMaker) -> None:
    monkeypatch.setenv("RENDERFARM_URL", "http://env.test:1234/")
    monkeypatch.setenv("RENDERFARM_TOKEN", "env-token")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=snapshot())

    with make_client(transport=httpx.MockTransport(handler)) as client:
        assert client.base_url == "http://env.test:1234"
        client.get("t1")
    assert seen[0].headers["authorization"] == "Bearer env-token"
    assert str(seen[0].url) == "http://env.test:1234/v1/jobs/t1"


def test_timeout_and_retries_are_value_objects() -> None:
    assert Timeout(5) == Timeout(5)
    assert Timeout(connect=1).connect == 1.0
    assert Timeout(None).read is None
    with pytest.raises(ValueError, match="positive"):
        Timeout(0)
    with pytest.raises(ValueError, match="at least 1"):
        Retries(attempts=0)
    assert 0.1875 <= Retries(backoff_s=0.25).backoff(1) <= 0.3125


# --------------------------------------------------------------------------------------------------------------
# Building requests


def test_job_bodies_take_shorthands_and_refuse_duplicates() -> None:
    image = Image.new("RGB", (64, 64))
    request = job_request({"prompt": "a", "image": "x.png"}, mask=image, task_id="t1", fields={"steps": 4})
    body = request.as_batch_item()
    assert body == {"prompt": "a", "init_images": ["x.png"], "mask": image, "force_task_id": "t1", "steps": 4}
    with pytest.raises(ValueError, match="image"):
        job_request({"init_images": ["a"]}, image="b")
    with pytest.raises(ValueError, match="task_id"):
        job_request({"force_task_id": "a"}, task_id="b")
    with pytest.raises(TypeError):
        job_request(42)  # type: ignore[arg-type]


def test_the_task_id_goes_in_the_url_and_never_in_the_body(client_with: Callable[..., Client]) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json=snapshot(request.url.path.rsplit("/", 1)[1]))

    image = "asset:" + "a" * 64
    with client_with(handler) as client:
        client.submit(image=image, task_id="mine", prompt="x")
        client.submit({"image": image, "task_id": "from-the-spec"})
        client.submit({"init_images": [image], "force_task_id": "a1111-style"}, task_id="a1111-style")
        minted = client.submit(image=image)
    assert [path for path, _ in sent] == [
        "/v1/jobs/mine",
        "/v1/jobs/from-the-spec",
        "/v1/jobs/a1111-style",
        f"/v1/jobs/{minted.task_id}",
    ]
    assert re.fullmatch(r"rf-[0-9a-f]{32}", minted.task_id)
    for _, body in sent:
        assert body["init_images"] == [image]
        assert not {"task_id", "force_task_id"} & set(body)


def test_batch_items_name_their_own_task_id_as_force_task_id(client_with: Callable[..., Client]) -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        created = {"mode": "jobs", "requested": 2, "enqueued": 2, "existing": 0, "task_ids": ["one", "b-1"]}
        return httpx.Response(200, json={"batch_id": bodies[-1]["batch_id"], **created})

    image = "asset:" + "b" * 64
    with client_with(handler) as client:
        client.submit_batch(jobs=[{"image": image, "task_id": "one"}, {"image": image}], defaults={"steps": 4})
    [body] = bodies
    assert body["jobs"] == [{"init_images": [image], "force_task_id": "one"}, {"init_images": [image]}]
    assert body["defaults"] == {"steps": 4}


def test_client_task_ids_have_the_contract_s_form() -> None:
    task_id = renderfarm.new_task_id()
    assert task_id.startswith("rf-")
    assert is_valid_task_id(task_id)
    assert task_id != renderfarm.new_task_id()


def test_grid_size() -> None:
    assert Grid.product(a=[1, 2], b=[1, 2, 3]).size == 6
    assert Grid.zip(a=[1, 2], b=[3, 4]).size == 2
    with pytest.raises(ValueError, match="one length"):
        Grid.zip(a=[1], b=[1, 2])


# --------------------------------------------------------------------------------------------------------------
# Manifests


def _pictures(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64)).save(folder / name)


def test_yaml_grid_manifest_expands_as_the_farm_does(tmp_path: Path) -> None:
    _pictures(tmp_path, "in/a.png", "in/b.png")
    (tmp_path / "m.yaml").write_text(
        "defaults: {steps: 4, prompt: base}\n"
        "grid:\n  mode: product\n  axes:\n    image: [in/a.png, in/b.png]\n    seed: [1, 2, 3]\n    cfg_scale: [5, 7]\n"
    )
    manifest = load_manifest(tmp_path / "m.yaml")
    items = manifest.items()
    assert len(items) == 12
    assert items[0].init_images == [(tmp_path / "in/a.png").resolve()]
    farm_order = list(expand_grid({"init_images": ["A", "B"], "seed": [1, 2, 3], "cfg_scale": [5, 7]}, "product"))
    assert [(i.fields["seed"], i.fields["cfg_scale"]) for i in items] == [
        (f["seed"], f["cfg_scale"]) for f in farm_order
    ]
    assert all(item.fields["prompt"] == "base" for item in items)


def test_json_and_csv_manifests(tmp_path: Path) -> None:
    _pictures(tmp_path, "a.png", "m.png")
    (tmp_path / "m.json").write_text(json.dumps({"jobs": [{"image": "a.png", "mask": "m.png", "task_id": "one"}]}))
    [item] = load_manifest(tmp_path / "m.json").items()
    assert item.task_id == "one"
    assert item.mask == (tmp_path / "m.png").resolve()
    (tmp_path / "m.csv").write_text("image,prompt,seed,task_id\na.png,a fox,7,fox\na.png,a cat,,\n")
    items = load_manifest(tmp_path / "m.csv").items()
    assert [item.fields.get("seed") for item in items] == [7, None]
    assert [item.task_id for item in items] == ["fox", None]
    assert items[1].fields["prompt"] == "a cat"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jobs: [{image: missing.png}]", "missing.png"),
        ("grid: {mode: diagonal, axes: {seed: [1]}}", "grid.mode"),
        ("grid: {mode: zip, axes: {seed: [1], prompt: [a, b]}}", "one length"),
        ("jobs: []", "non-empty"),
        ("jobs: [{}]\ngrid: {}", "not both"),
        ("colour: red", "unknown key"),
    ],
)
def test_bad_manifests_say_where(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path / "m.yaml")


# --------------------------------------------------------------------------------------------------------------
# The public surface


def test_the_public_surface_is_explicit_and_documented() -> None:
    exported = set(renderfarm.__all__)
    public = {name for name in vars(renderfarm) if not name.startswith("_")}
    modules = {
        "client",
        "manifest",
        "batch_runner",
        "contact_sheet",
        "client_cli",
        "cli",
        "server_cli",
        "demo",
        "embedded",
        "progress",
        "completion",
        "env_check",
        "quiet",
    }
    assert public - modules <= exported | {"annotations"}
    for name in exported - {"__version__", "JobState"}:  # JobState is the farm's own enum (shared.states)
        value = getattr(renderfarm, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, f"renderfarm.{name} has no docstring"
    for method in ("submit", "get", "wait", "cancel", "list", "download", "render", "submit_batch", "get_batch"):
        sync = inspect.signature(getattr(renderfarm.Client, method))
        asynchronous = inspect.signature(getattr(renderfarm.AsyncClient, method))
        assert list(sync.parameters) == list(asynchronous.parameters), method
        assert inspect.iscoroutinefunction(getattr(renderfarm.AsyncClient, method)) or method == "list"


def test_both_clients_offer_every_operation_of_the_shared_core() -> None:
    from renderfarm._flows import ClientBase, Operations

    operations = {name for name in vars(Operations) if not name.startswith("_")} - {"url", "headers", "exchange"}
    for client in (renderfarm.Client, renderfarm.AsyncClient):
        offered = {name for name in vars(client) if not name.startswith("_")} - {"close", "aclose"}
        assert offered == operations, client
        assert issubclass(client, ClientBase)
