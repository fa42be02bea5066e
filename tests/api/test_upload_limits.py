"""Multipart uploads at the edge (issue 15, finding 4): a body of 200,000 parts (about 11 MB) held the scheduler's
event loop for 27.6 s while the standard library parsed it, and every tenant's requests waited.

The regression test runs a real scheduler process. Alice's many-part body is sent in full; the moment its last
byte is handed to the socket, Bob (another tenant) asks for his jobs. Bob must be answered at once, and Alice must
get her 413 `too_many_parts` promptly: both measured, with bounds far below what the blocked loop took and far
above what the answers need on two busy cores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scheduler.routes.assets import DelimiterCounter
from tests.lone_scheduler import LoneScheduler, running_lone_scheduler
from tests.pictures import picture, png_bytes
from tests.services import S3Server

ALICE = "upload-alice-token-0123456789"
BOB = "upload-bob-token-0123456789abc"
PARTS = 200_000
BOUNDARY = "rfboundary7f3a"
CHUNK_BYTES = 256 * 1024
OTHER_TENANT_BOUND_S = 3.0  # Bob's answer while Alice's body is handled (it took the whole parse: 27.6 s)
REFUSAL_BOUND_S = 5.0  # Alice's 413 after her last byte


def many_parts(parts: int) -> bytes:
    part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'.encode()
    return part * parts + f"--{BOUNDARY}--\r\n".encode()


def multipart_file(data: bytes) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
    head += "Content-Type: image/png\r\n\r\n"
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def scheduler(s3_server: S3Server, tmp_path: Path) -> Iterator[LoneScheduler]:
    with running_lone_scheduler(s3_server, tmp_path, f"alice:{ALICE},bob:{BOB}") as running:
        yield running


def test_a_many_part_upload_is_refused_and_stalls_no_other_tenant(scheduler: LoneScheduler) -> None:
    body = many_parts(PARTS)
    assert len(body) > 10_000_000
    sent = threading.Event()
    sent_at: list[float] = []
    answer: list[httpx.Response | BaseException] = []
    answered_at: list[float] = []

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), CHUNK_BYTES):
            yield body[start : start + CHUNK_BYTES]
        sent_at.append(time.monotonic())
        sent.set()

    def upload() -> None:
        headers = {
            "Authorization": f"Bearer {ALICE}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(len(body)),
        }
        try:
            answer.append(httpx.post(f"{scheduler.url}/v1/assets", content=chunks(), headers=headers, timeout=120))
        except BaseException as exc:  # reported below
            answer.append(exc)
        answered_at.append(time.monotonic())

    alice = threading.Thread(target=upload, name="alice-upload", daemon=True)
    alice.start()
    assert sent.wait(60), "Alice's body was not sent"
    bob_started = time.monotonic()
    bob = httpx.get(f"{scheduler.url}/v1/jobs", headers={"Authorization": f"Bearer {BOB}"}, timeout=120)
    bob_s = time.monotonic() - bob_started
    alice.join(120)
    assert not alice.is_alive()

    assert bob.status_code == 200
    assert bob_s < OTHER_TENANT_BOUND_S, f"Bob waited {bob_s:.1f} s behind Alice's upload\n{scheduler.logs()}"
    [response] = answer
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("too_many_parts", "file")
    refusal_s = answered_at[0] - sent_at[0]
    assert refusal_s < REFUSAL_BOUND_S, f"the refusal took {refusal_s:.1f} s"

    # The same scheduler still takes a proper multipart upload.
    png = png_bytes(picture(3))
    ok = httpx.post(
        f"{scheduler.url}/v1/assets",
        content=multipart_file(png),
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert ok.status_code == 201, ok.text


def test_delimiters_split_between_chunks_are_counted_once() -> None:
    body = many_parts(50)
    whole = DelimiterCounter(BOUNDARY.encode())
    whole.feed(body)
    assert whole.delimiters == 51
    for size in (1, 2, 3, 7, len(BOUNDARY) + 1, 64):
        counter = DelimiterCounter(BOUNDARY.encode())
        for start in range(0, len(body), size):
            counter.feed(body[start : start + size])
        assert counter.delimiters == 51, size
