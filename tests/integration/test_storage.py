"""shared.storage against the local folder and moto's real S3 HTTP server, through the same tests."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from shared.config import Settings
from shared.errors import ConfigError, InputError, NotFound, StorageUnavailable
from shared.storage import (
    LocalFolderStorage,
    S3Storage,
    Storage,
    StoredObject,
    artifact_key,
    asset_key,
    download_path,
    open_storage,
    validate_key,
)
from tests.clock import ManualClock
from tests.processes import free_loopback_port
from tests.services import S3Server

pytestmark = pytest.mark.integration

SIGNING_KEY = b"0123456789abcdef0123456789abcdef"
A1111_TASK_ID = "task(img2img-ABC1234)"
PNG_TYPE = "image/png"


# ---------------------------------------------------------------------------------------------------------------
# A stand-in for the scheduler's /v1/files route: verify the signature, then serve the bytes.


class _FileHandler(BaseHTTPRequestHandler):
    storage: LocalFolderStorage  # set on the subclass made per server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not url.path.startswith("/v1/files/"):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        key = unquote(url.path.removeprefix("/v1/files/"))
        try:
            self.storage.verify_download(key, query.get("expires", [""])[0], query.get("sig", [""])[0])
            body = self.storage.get(key)
            content_type = self.storage.head(key).content_type
        except NotFound:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_storage(tmp_path: Path) -> Iterator[LocalFolderStorage]:
    """A local folder, served by a tiny HTTP server on a loopback port (as the API would serve it)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    storage = LocalFolderStorage(tmp_path / "storage", f"http://127.0.0.1:{server.server_port}", SIGNING_KEY)
    server.RequestHandlerClass = type("Handler", (_FileHandler,), {"storage": storage})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    # Readiness: the socket listens since the constructor, but wait until the loop answers, by polling.
    for _ in range(200):
        try:
            httpx.get(f"{storage.public_url}/ready", timeout=1.0)
            break
        except httpx.TransportError:
            continue
    try:
        yield storage
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        storage.close()


def _new_bucket(s3: S3Server) -> str:
    client = s3.client()
    try:
        name = f"rf-test-{os.urandom(8).hex()}"
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name


@pytest.fixture
def s3_storage(s3_env: S3Server) -> Iterator[S3Storage]:
    # A small page size so that list() has to follow several pages.
    storage = S3Storage(
        _new_bucket(s3_env), "farm/", endpoint_url=s3_env.endpoint_url, region=s3_env.region, list_page_size=3
    )
    try:
        yield storage
    finally:
        storage.close()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest) -> Storage:
    return request.getfixturevalue(f"{request.param}_storage")


# ---------------------------------------------------------------------------------------------------------------
# Both backends


def test_round_trip(storage: Storage) -> None:
    data = b"\x89PNG not really" * 100
    key = artifact_key("acme", "job-1", 1, "result", 0)
    assert key == "acme/job-1/1/result-0.png"
    assert not storage.exists(key)

    stored = storage.put(key, data, PNG_TYPE)
    expected = StoredObject(key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data), content_type=PNG_TYPE)
    assert stored == expected
    assert storage.get(key) == data
    assert storage.head(key) == expected
    assert storage.exists(key)
    assert list(storage.list("acme/job-1/")) == [key]

    storage.delete(key)
    assert not storage.exists(key)
    with pytest.raises(NotFound):
        storage.get(key)
    with pytest.raises(NotFound):
        storage.head(key)
    storage.delete(key)  # deleting twice is fine: deletes are retried
    assert list(storage.list("acme/")) == []


def test_overwrite_replaces_data_and_metadata(storage: Storage) -> None:
    key = "acme/job-2/1/mask-0.png"
    storage.put(key, b"first version", PNG_TYPE)
    storage.put(key, b"second", "application/octet-stream")
    assert storage.get(key) == b"second"
    assert storage.head(key) == StoredObject(key, hashlib.sha256(b"second").hexdigest(), 6, "application/octet-stream")


def test_given_sha256_must_match(storage: Storage) -> None:
    data = b"some bytes"
    good = hashlib.sha256(data).hexdigest()
    key = asset_key("acme", good)
    assert storage.put(key, data, PNG_TYPE, sha256=good).sha256 == good
    assert storage.put(key, data, PNG_TYPE, sha256=good.upper()).sha256 == good

    bad_key = asset_key("acme", "0" * 64)
    with pytest.raises(InputError) as caught:
        storage.put(bad_key, data, PNG_TYPE, sha256="0" * 64)
    assert caught.value.code == "sha256_mismatch"
    assert not storage.exists(bad_key)


def test_empty_object(storage: Storage) -> None:
    stored = storage.put("acme/empty", b"", "application/octet-stream")
    assert stored.size == 0
    assert storage.get("acme/empty") == b""
    assert storage.head("acme/empty").sha256 == hashlib.sha256(b"").hexdigest()


def test_list_is_a_string_prefix_over_all_pages_in_order(storage: Storage) -> None:
    keys = [artifact_key("acme", "job", 1, kind, i) for kind in ("mask", "overlay", "result") for i in range(3)]
    keys += ["acme/job-b/1/result-0.png", "acme/jobx", "other/job/1/result-0.png"]
    for key in reversed(keys):
        storage.put(key, key.encode(), PNG_TYPE)

    assert list(storage.list("acme/job/")) == sorted(keys[:9])
    assert list(storage.list("acme/job")) == sorted([*keys[:9], "acme/job-b/1/result-0.png", "acme/jobx"])
    assert list(storage.list("acme/job/1/result-")) == [f"acme/job/1/result-{i}.png" for i in range(3)]
    assert list(storage.list("")) == sorted(keys)
    assert list(storage.list("nobody/")) == []


def test_a1111_task_ids_work_as_keys_and_in_urls(storage: Storage) -> None:
    for task_id in (A1111_TASK_ID, "batch:7(x)_y.z"):
        key = artifact_key("acme", task_id, 2, "overlay", 1)
        assert key == f"acme/{task_id}/2/overlay-1.png"
        data = f"bytes of {task_id}".encode()
        storage.put(key, data, PNG_TYPE)
        assert storage.get(key) == data
        assert list(storage.list(f"acme/{task_id}/")) == [key]

        url = storage.download_url(key, 60)
        assert "(" not in url
        assert ")" not in url
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["content-type"] == PNG_TYPE


def test_download_of_a_missing_object_is_404(storage: Storage) -> None:
    response = httpx.get(storage.download_url("acme/nothing/here.png", 60), timeout=10)
    assert response.status_code == 404


@pytest.mark.parametrize("key", ["", "/abs/key", "a//b", "a/../b", "..", "a/./b", "a\\b", "a/", "a\x00b"])
def test_invalid_keys_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError, match="storage key"):
        storage.put(key, b"x", PNG_TYPE)
    with pytest.raises(ValueError, match="storage key"):
        storage.get(key)
    with pytest.raises(ValueError, match="storage key"):
        storage.download_url(key, 60)


def test_download_url_lifetime_is_checked(storage: Storage) -> None:
    for expires_s in (0, -5, 8 * 24 * 3600):
        with pytest.raises(ValueError, match="expires_s"):
            storage.download_url("acme/k", expires_s)


def test_check_passes(storage: Storage) -> None:
    storage.check()


# ---------------------------------------------------------------------------------------------------------------
# Local folder


def _url_parts(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return unquote(parts.path.removeprefix("/v1/files/")), query["expires"][0], query["sig"][0]


def test_local_download_url_shape(local_storage: LocalFolderStorage) -> None:
    key = artifact_key("acme", A1111_TASK_ID, 1, "result", 0)
    url = local_storage.download_url(key, 300)
    assert url.startswith(f"{local_storage.public_url}/v1/files/acme/task%28img2img-ABC1234%29/1/result-0.png?")
    assert download_path(key) == "/v1/files/acme/task%28img2img-ABC1234%29/1/result-0.png"
    path_key, expires, sig = _url_parts(url)
    assert path_key == key
    local_storage.verify_download(key, expires, sig)


def test_local_tampered_and_expired_signatures_are_refused(local_storage: LocalFolderStorage) -> None:
    key = "acme/job/1/result-0.png"
    local_storage.put(key, b"secret pixels", PNG_TYPE)
    url = local_storage.download_url(key, 300)
    _, expires, sig = _url_parts(url)
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")

    assert httpx.get(url, timeout=10).status_code == 200
    assert httpx.get(url.replace(sig, flipped), timeout=10).status_code == 404
    assert httpx.get(url.replace(f"expires={expires}", f"expires={int(expires) + 1}"), timeout=10).status_code == 404
    other = local_storage.download_url("acme/job/1/result-1.png", 300)
    assert httpx.get(other.replace("result-1", "result-0"), timeout=10).status_code == 404

    for bad_sig in (flipped, "", "zz", "é" * 64):
        with pytest.raises(NotFound):
            local_storage.verify_download(key, expires, bad_sig)
    with pytest.raises(NotFound):
        local_storage.verify_download(key, "not-a-number", sig)


def test_local_signatures_expire_by_the_storage_clock(tmp_path: Path) -> None:
    clock = ManualClock(start=1_800_000_000.0)
    storage = LocalFolderStorage(tmp_path / "storage", "http://127.0.0.1:7860", SIGNING_KEY, clock=clock)
    key = "acme/job/1/result-0.png"
    _, expires, sig = _url_parts(storage.download_url(key, 300))
    assert int(expires) == 1_800_000_300
    # Expired: the same URL, checked at its expiry and one second after it.
    clock.advance(300)
    storage.verify_download(key, expires, sig)
    clock.advance(1)
    with pytest.raises(NotFound):
        storage.verify_download(key, expires, sig)


def test_local_signatures_depend_on_the_key(tmp_path: Path) -> None:
    one = LocalFolderStorage(tmp_path / "a", "http://x", SIGNING_KEY)
    two = LocalFolderStorage(tmp_path / "b", "http://x", b"another key of at least 16 bytes")
    _, expires, sig = _url_parts(one.download_url("acme/k", 60))
    with pytest.raises(NotFound):
        two.verify_download("acme/k", expires, sig)


def test_local_writes_are_atomic_and_leave_no_temp_files(local_storage: LocalFolderStorage) -> None:
    local_storage.put("acme/big", b"x" * 1_000_000, "application/octet-stream")
    assert list((local_storage.root / "tmp").iterdir()) == []
    assert local_storage.local_path("acme/big").stat().st_size == 1_000_000
    with pytest.raises(NotFound):
        local_storage.local_path("acme/missing")


def test_local_head_survives_a_missing_or_stale_sidecar(local_storage: LocalFolderStorage) -> None:
    local_storage.put("acme/k", b"old", PNG_TYPE)
    # As if a writer died between the data and its sidecar.
    (local_storage.root / "objects" / "acme" / "k").write_bytes(b"newer!")
    assert local_storage.head("acme/k").sha256 == hashlib.sha256(b"newer!").hexdigest()
    (local_storage.root / "meta" / "acme" / "k.json").unlink()
    assert local_storage.head("acme/k").size == 6


def test_local_head_notices_interleaved_writers(local_storage: LocalFolderStorage) -> None:
    # Writer A's sidecar lands after writer B's data (same size, so only the file's identity tells them apart).
    local_storage.put("acme/k", b"AAAA", PNG_TYPE)
    meta_a = (local_storage.root / "meta" / "acme" / "k.json").read_bytes()
    local_storage.put("acme/k", b"BBBB", PNG_TYPE)
    (local_storage.root / "meta" / "acme" / "k.json").write_bytes(meta_a)
    assert local_storage.head("acme/k").sha256 == hashlib.sha256(b"BBBB").hexdigest()


def test_s3_bad_endpoint_is_a_config_error() -> None:
    storage = S3Storage("bucket", endpoint_url="not a url")
    with pytest.raises(ConfigError):
        storage.get("acme/k")


def test_local_delete_removes_empty_folders(local_storage: LocalFolderStorage) -> None:
    key = artifact_key("acme", "job", 1, "result", 0)
    local_storage.put(key, b"x", PNG_TYPE)
    local_storage.put("acme/keep", b"y", PNG_TYPE)
    local_storage.delete(key)
    assert not (local_storage.root / "objects" / "acme" / "job").exists()
    assert (local_storage.root / "objects" / "acme" / "keep").exists()


def test_local_key_that_collides_with_a_folder(local_storage: LocalFolderStorage) -> None:
    local_storage.put("acme/a/b", b"x", PNG_TYPE)
    with pytest.raises(ValueError, match="collides"):
        local_storage.put("acme/a", b"y", PNG_TYPE)
    assert not local_storage.exists("acme/a")


def test_open_storage_embedded_keeps_one_signing_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", _env_file=None).check()
    first = open_storage(settings)
    assert isinstance(first, LocalFolderStorage)
    assert first.root == (tmp_path / "data" / "storage").resolve()
    key_file = tmp_path / "data" / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    _, expires, sig = _url_parts(first.download_url("acme/k", 60))
    second = open_storage(settings)  # as after a restart
    assert isinstance(second, LocalFolderStorage)
    second.verify_download("acme/k", expires, sig)
    assert [p.name for p in key_file.parent.iterdir() if p.name.startswith(".signing-")] == []


def test_open_storage_uses_the_signing_key_setting(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, signing_key="a configured key, long enough", _env_file=None)
    storage = open_storage(settings)
    assert isinstance(storage, LocalFolderStorage)
    assert not (tmp_path / "signing.key").exists()
    reference = LocalFolderStorage(tmp_path / "other", "http://x", b"a configured key, long enough")
    _, expires, sig = _url_parts(reference.download_url("acme/k", 60))
    storage.verify_download("acme/k", expires, sig)


def test_open_storage_s3(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        storage_url="s3://my-bucket/some/prefix",
        s3_endpoint_url="http://minio:9000",
        s3_public_endpoint_url="https://files.example.com",
        s3_region="eu-west-1",
        _env_file=None,
    )
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.region) == ("my-bucket", "some/prefix/", "eu-west-1")
    assert storage.endpoint_url == "http://minio:9000"
    assert storage.public_endpoint_url == "https://files.example.com"


def test_open_storage_refuses_other_schemes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, storage_url="ftp://x/y", _env_file=None)
    with pytest.raises(ConfigError) as caught:
        open_storage(settings)
    assert caught.value.field == "RENDERFARM_STORAGE_URL"


def test_key_helpers_refuse_bad_parts() -> None:
    with pytest.raises(ValueError, match="task id"):
        artifact_key("acme", "a/b", 1, "result", 0)
    with pytest.raises(ValueError, match="tenant"):
        artifact_key("../x", "job", 1, "result", 0)
    with pytest.raises(ValueError, match="kind"):
        artifact_key("acme", "job", 1, "thumbnail", 0)
    with pytest.raises(ValueError, match="negative"):
        artifact_key("acme", "job", -1, "result", 0)
    with pytest.raises(ValueError, match="sha256"):
        asset_key("acme", "abc")
    # Assets live where no task id can reach: deleting task "assets" by prefix leaves them alone.
    assert not asset_key("acme", "0" * 64).startswith(artifact_key("acme", "assets", 0, "result", 0).rsplit("/", 2)[0])
    assert validate_key("a/b(c):d") == "a/b(c):d"


# ---------------------------------------------------------------------------------------------------------------
# S3


def test_s3_metadata_prefix_and_content_type(s3_storage: S3Storage, s3_env: S3Server) -> None:
    data = b"pixels"
    s3_storage.put("acme/k.png", data, PNG_TYPE)
    client = s3_env.client()
    try:
        head = client.head_object(Bucket=s3_storage.bucket, Key="farm/acme/k.png")
    finally:
        client.close()
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert head["ContentType"] == PNG_TYPE


def test_s3_object_written_by_others_gets_its_sha256_computed(s3_storage: S3Storage, s3_env: S3Server) -> None:
    client = s3_env.client()
    try:
        client.put_object(Bucket=s3_storage.bucket, Key="farm/acme/foreign", Body=b"foreign")
    finally:
        client.close()
    assert s3_storage.head("acme/foreign").sha256 == hashlib.sha256(b"foreign").hexdigest()


def test_s3_presigned_urls_use_the_public_endpoint(s3_env: S3Server) -> None:
    storage = S3Storage(
        _new_bucket(s3_env),
        endpoint_url=s3_env.endpoint_url,
        public_endpoint_url="https://files.example.com:9443",
        region=s3_env.region,
    )
    try:
        storage.put("acme/x.png", b"x", PNG_TYPE)  # requests still go to the real endpoint
        url = storage.download_url(f"acme/{A1111_TASK_ID}/x.png", 120)
    finally:
        storage.close()
    assert url.startswith(f"https://files.example.com:9443/{storage.bucket}/acme/task%28img2img-ABC1234%29/x.png?")
    assert "X-Amz-Expires=120" in url
    assert "X-Amz-Signature=" in url


def test_s3_unreachable_endpoint_is_transient(s3_env: S3Server) -> None:
    storage = S3Storage(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{free_loopback_port()}",  # nothing listens there
        max_attempts=1,
        connect_timeout_s=1.0,
        read_timeout_s=1.0,
    )
    try:
        with pytest.raises(StorageUnavailable):
            storage.put("acme/k", b"x", PNG_TYPE)
        with pytest.raises(StorageUnavailable):
            storage.get("acme/k")
        with pytest.raises(StorageUnavailable):
            list(storage.list("acme/"))
        with pytest.raises(StorageUnavailable):
            storage.check()
    finally:
        storage.close()


def test_s3_without_credentials_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup, so no network wait
    storage = S3Storage("bucket", endpoint_url=f"http://127.0.0.1:{free_loopback_port()}")
    try:
        with pytest.raises(ConfigError) as caught:
            storage.get("acme/k")
        assert caught.value.field == "RENDERFARM_STORAGE_URL"
    finally:
        storage.close()


def test_s3_missing_bucket_is_a_config_error(s3_env: S3Server) -> None:
    storage = S3Storage("rf-test-no-such-bucket", endpoint_url=s3_env.endpoint_url, region=s3_env.region)
    try:
        with pytest.raises(ConfigError) as caught:
            storage.put("acme/k", b"x", PNG_TYPE)
        assert caught.value.field == "RENDERFARM_STORAGE_URL"
        assert "RENDERFARM_STORAGE_URL" in caught.value.message
        with pytest.raises(ConfigError):
            storage.check()
    finally:
        storage.close()


def _put_in_child(storage: S3Storage, parent_client_id: int, results: multiprocessing.Queue[str]) -> None:
    try:
        clients = storage._clients()
        assert clients.pid == os.getpid()
        assert id(clients.api) != parent_client_id
        storage.put("acme/from-child", b"child", PNG_TYPE)
        results.put("ok")
    except BaseException as exc:
        results.put(repr(exc))


def test_s3_client_is_made_again_after_fork(s3_storage: S3Storage) -> None:
    s3_storage.put("acme/from-parent", b"parent", PNG_TYPE)  # the parent's client now holds a connection
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_put_in_child, args=(s3_storage, id(s3_storage._clients().api), results))
    child.start()
    outcome = results.get(timeout=60)
    child.join(timeout=60)
    results.close()
    results.join_thread()
    assert outcome == "ok"
    assert s3_storage.get("acme/from-child") == b"child"
    assert s3_storage.get("acme/from-parent") == b"parent"
