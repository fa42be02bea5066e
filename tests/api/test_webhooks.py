"""Webhooks and the event feed (docs/api.md "Events and webhooks"), embedded (SQLite) and cluster (PostgreSQL).

A real HTTP receiver listens on loopback (allowed by `webhook_allow_private_addresses`); the webhook sender is the
scheduler's own (`scheduler.webhooks.WebhookSender`), driven one round at a time on a test clock so that an outage
of hours passes in a moment, and once in its real thread. Signatures are checked here with `hmac`, written from the
Standard Webhooks scheme, not with the farm's code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import renderfarm
from renderfarm.cli import main as cli_main
from scheduler.app import create_app
from scheduler.routes import webhooks as webhook_routes
from scheduler.webhooks import WebhookSender
from shared.db import make_engine
from shared.db.tables import tenant_webhooks
from shared.errors import ConfigError
from shared.secret_box import SecretBox, new_key
from tests.api.conftest import ALICE, ALICE_TOKEN, BOB, LOOPBACK_CLIENT, Farm, FarmFactory, job_body, put_job
from tests.clock import FakeClock
from tests.tls_certs import make_certificates
from tests.waiting import wait_until

FAST = {
    "webhook_allow_private_addresses": True,
    "webhook_backoff_base_s": 30.0,
    "webhook_backoff_max_s": 600.0,
    "webhook_retry_period_s": 24 * 3600.0,
    "webhook_poll_s": 0.05,
}


def b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on loopback. While `down`, it answers 503 (and counts the call as failed)."""

    server: ThreadingHTTPServer
    down: bool = False
    accepted: list[Received] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = start_receiver()
    yield started
    started.server.shutdown()
    started.server.server_close()


def start_receiver(tls: ssl.SSLContext | None = None) -> Receiver:
    """A receiver serving on loopback from a thread (over TLS with `tls`); the caller shuts its server down."""
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            state = holder["receiver"]
            with state.lock:
                if state.down:
                    state.refused += 1
                    status = 503
                else:
                    state.accepted.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                    status = 204
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    holder["receiver"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return holder["receiver"]


def signature_ok(secret: str, received: Received) -> bool:
    """Whether any `v1,` signature of the message verifies with `secret` (written here from the scheme)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [part.split(",", 1)[1] for part in received.headers["webhook-signature"].split(" ")]
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def secret_of(farm: Farm, headers: dict[str, str] = ALICE) -> str:
    response = farm.client.get("/v1/webhooks/secret", headers=headers)
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) >= 24
    return secret


def clock_at_now() -> FakeClock:
    """The sender's test clock, half a minute ahead of the real one that dates the events this test writes."""
    return FakeClock(datetime.now(UTC) + timedelta(seconds=30))


def sender_for(farm: Farm, clock: FakeClock) -> WebhookSender:
    return WebhookSender(farm.db, farm.settings, clock=lambda: clock.now)


def finish_three_jobs(farm: Farm, image: bytes, url: str) -> None:
    """One job succeeds, one fails, one is canceled: each with `url` as its webhook."""
    for task_id in ("ok-1", "bad-1", "stop-1"):
        created = put_job(farm, task_id, job_body(b64(image), webhook_url=url))
        assert created.status_code == 201, created.text
        assert created.json()["warnings"] == []  # no `not_called` any more
    farm.succeed_with_artifacts("alice", "ok-1")
    failed = farm.db.leases.fail(
        farm.job_row("alice", "bad-1").id, None, {"type": "x", "code": "boom", "message": "no"}
    )
    assert failed is not None
    assert farm.client.post("/v1/jobs/stop-1/cancel", headers=ALICE).json()["state"] == "canceled"


def feed(farm: Farm, after: str | None = None, headers: dict[str, str] = ALICE) -> dict[str, Any]:
    params = {} if after is None else {"after": after}
    response = farm.client.get("/v1/events", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_every_event_arrives_once_signed_through_an_outage_and_the_feed_has_the_same(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    farm = make_farm(**FAST)
    clock = clock_at_now()
    sender = sender_for(farm, clock)
    receiver.down = True
    finish_three_jobs(farm, image_png, receiver.url)
    # Two hours of outage, looked at every minute: tries back off (30 s doubling to 10 min), nothing is lost.
    for _ in range(120):
        sender.deliver_due()
        clock.advance(60)
    assert receiver.accepted == []
    tries_during_outage = receiver.refused
    # 3 events, each tried at 0, ~0.5, ~1.5, ~3.5, ~7.5 min ... then every 5-10 min: far fewer than one a minute.
    assert 3 * 8 <= tries_during_outage <= 3 * 40
    log = farm.client.get("/v1/jobs/ok-1/deliveries", headers=ALICE).json()
    (delivery,) = log["deliveries"]
    assert delivery["state"] == "pending"
    assert len(delivery["log"]) == min(delivery["attempts"], 20)  # the log keeps the latest 20 attempts
    assert {entry["status"] for entry in delivery["log"]} == {503}
    assert delivery["next_attempt_at"] is not None

    receiver.down = False
    for _ in range(12):  # the longest backoff is 10 minutes
        sender.deliver_due()
        clock.advance(60)
    ids = [message.headers["webhook-id"] for message in receiver.accepted]
    assert len(ids) == len(set(ids)) == 3
    secret = secret_of(farm)
    assert all(signature_ok(secret, message) for message in receiver.accepted)
    bodies = {message.headers["webhook-id"]: json.loads(message.body) for message in receiver.accepted}
    assert {body["type"] for body in bodies.values()} == {"job.succeeded", "job.failed", "job.canceled"}
    assert {body["data"]["task_id"]: body["type"] for body in bodies.values()} == {
        "ok-1": "job.succeeded",
        "bad-1": "job.failed",
        "stop-1": "job.canceled",
    }
    # More rounds send nothing again.
    for _ in range(5):
        assert sender.deliver_due() == 0
        clock.advance(3600)
    assert len(receiver.accepted) == 3
    delivered = farm.client.get("/v1/jobs/ok-1/deliveries", headers=ALICE).json()["deliveries"]
    assert [(d["state"], d["log"][-1]["status"], d["next_attempt_at"]) for d in delivered] == [("delivered", 204, None)]

    # The feed: the same ids and bodies, oldest first; a client that has the first reads on from its cursor.
    everything = feed(farm)
    assert [event["id"] for event in everything["events"]] == [
        body["id"]
        for body in sorted(bodies.values(), key=lambda b: ["ok-1", "bad-1", "stop-1"].index(b["data"]["task_id"]))
    ]
    for event in everything["events"]:
        assert {k: v for k, v in event.items() if k != "cursor"} == bodies[event["id"]]
    first = everything["events"][0]["cursor"]
    rest = feed(farm, after=first)
    assert [event["id"] for event in rest["events"]] == [event["id"] for event in everything["events"][1:]]
    assert feed(farm, after=everything["next_cursor"])["events"] == []
    sender.stop()


def test_a_receiver_down_past_the_retry_period_gets_a_failed_delivery_and_the_feed_fills_the_gap(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    farm = make_farm(**{**FAST, "webhook_retry_period_s": 3600.0})
    clock = clock_at_now()
    sender = sender_for(farm, clock)
    created = put_job(farm, "early-1", job_body(b64(image_png), webhook_url=receiver.url))
    assert created.status_code == 201
    farm.succeed_with_artifacts("alice", "early-1")
    sender.deliver_due()
    (seen,) = receiver.accepted
    last_cursor = feed(farm)["next_cursor"]

    receiver.down = True
    finish_three_jobs(farm, image_png, receiver.url)
    for _ in range(90):  # 90 minutes: past the hour of retries
        sender.deliver_due()
        clock.advance(60)
    states = [d["state"] for d in farm.client.get("/v1/jobs/ok-1/deliveries", headers=ALICE).json()["deliveries"]]
    assert states == ["failed"]
    receiver.down = False
    sender.deliver_due()
    assert len(receiver.accepted) == 1  # nothing more is sent after the period
    # The client catches up from the cursor it had: exactly the three events it missed.
    missed = feed(farm, after=last_cursor)["events"]
    assert sorted(event["data"]["task_id"] for event in missed) == ["bad-1", "ok-1", "stop-1"]
    assert seen.headers["webhook-id"] not in {event["id"] for event in missed}
    sender.stop()


def test_the_sender_thread_delivers_without_being_driven(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    farm = make_farm(**FAST)
    sender = WebhookSender(farm.db, farm.settings)
    sender.run_in_thread()
    try:
        put_job(farm, "t-1", job_body(b64(image_png), webhook_url=receiver.url))
        farm.succeed_with_artifacts("alice", "t-1")
        wait_until(lambda: receiver.accepted, 10.0, "the webhook of t-1")
    finally:
        sender.stop()
    assert json.loads(receiver.accepted[0].body)["data"]["task_id"] == "t-1"


def test_a_retried_commit_writes_one_event(make_farm: FarmFactory, image_png: bytes) -> None:
    farm = make_farm(**FAST)
    put_job(farm, "twice-1", job_body(b64(image_png), webhook_url="http://127.0.0.1:9/hook"))
    row = farm.claim("alice", "twice-1")
    farm.db.leases.succeed(row.id, row.attempt, [])
    farm.db.leases.succeed(row.id, row.attempt, [])  # the same commit again (its reply was lost): a no-op
    assert farm.db.leases.fail(row.id, row.attempt, {"type": "x", "code": "late", "message": "fenced"}) is None
    log = farm.client.get("/v1/jobs/twice-1/deliveries", headers=ALICE).json()
    assert [event["type"] for event in log["events"]] == ["job.succeeded"]
    assert len(log["deliveries"]) == 1


def test_rotation_signs_with_both_secrets_during_the_overlap(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    farm = make_farm(**{**FAST, "webhook_secret_overlap_s": 3600.0})
    clock = clock_at_now()
    sender = sender_for(farm, clock)
    old = secret_of(farm)
    rotated = farm.client.post("/v1/webhooks/secret/rotate", headers=ALICE).json()
    new = rotated["secret"]
    assert new != old
    assert rotated["previous_secret"] == old
    put_job(farm, "r-1", job_body(b64(image_png), webhook_url=receiver.url))
    farm.succeed_with_artifacts("alice", "r-1")
    sender.deliver_due()
    (during,) = receiver.accepted
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert signature_ok(old, during)
    assert signature_ok(new, during)

    clock.advance(7200)  # past the overlap: only the new secret signs
    event_id = during.headers["webhook-id"]
    again = farm.client.post(f"/v1/jobs/r-1/deliveries/{event_id}/redeliver", headers=ALICE)
    assert again.status_code == 202, again.text
    sender.deliver_due()
    after = receiver.accepted[1]
    assert after.headers["webhook-id"] == event_id  # the same event, so receivers can drop the duplicate
    assert signature_ok(new, after)
    assert not signature_ok(old, after)
    deliveries = farm.client.get("/v1/jobs/r-1/deliveries", headers=ALICE).json()["deliveries"]
    assert [d["state"] for d in deliveries] == ["delivered", "delivered"]
    sender.stop()


def test_tenants_see_only_their_own_events_and_deliveries(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    farm = make_farm(**FAST)
    put_job(farm, "mine-1", job_body(b64(image_png), webhook_url=receiver.url))
    farm.succeed_with_artifacts("alice", "mine-1")
    assert len(feed(farm)["events"]) == 1
    assert feed(farm, headers=BOB)["events"] == []
    assert farm.client.get("/v1/jobs/mine-1/deliveries", headers=BOB).status_code == 404
    event_id = feed(farm)["events"][0]["id"]
    redo = farm.client.post(f"/v1/jobs/mine-1/deliveries/{event_id}/redeliver", headers=BOB)
    assert redo.status_code == 404
    assert secret_of(farm, BOB) != secret_of(farm, ALICE)


def test_the_feed_waits_for_the_next_event(make_farm: FarmFactory, image_png: bytes) -> None:
    farm = make_farm(**FAST)
    cursor = feed(farm)["next_cursor"]
    assert cursor == "0"
    empty = farm.client.get("/v1/events", params={"after": cursor, "wait_s": 0.3}, headers=ALICE).json()
    assert empty == {"events": [], "next_cursor": "0"}
    assert farm.client.get("/v1/events", params={"after": "x1"}, headers=ALICE).status_code == 422


def test_a_waiting_poll_is_woken_by_the_event_it_waits_for(
    make_farm: FarmFactory, image_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the periodic re-read pushed past the poll's own wait, only the wake-up of the tenant's event key can
    # answer it with the event: without one this poll would come back empty after 30 s.
    monkeypatch.setattr(webhook_routes, "RECHECK_S", 600.0)
    farm = make_farm(**FAST)
    put_job(farm, "wake-1", job_body(b64(image_png)))
    cursor = feed(farm)["next_cursor"]
    answers: list[dict[str, Any]] = []

    def poll() -> None:
        params = {"after": cursor, "wait_s": 30}
        answers.append(farm.client.get("/v1/events", params=params, headers=ALICE).json())

    streams = farm.app.state.services.streams
    poller = threading.Thread(target=poll)
    poller.start()
    wait_until(lambda: len(streams) == 1, 30, "the poll to wait")
    assert farm.client.post("/v1/jobs/wake-1/cancel", headers=ALICE).json()["state"] == "canceled"
    poller.join(timeout=60)
    assert not poller.is_alive()
    (answer,) = answers
    assert [(e["type"], e["data"]["task_id"]) for e in answer["events"]] == [("job.canceled", "wake-1")]
    assert answer["next_cursor"] == answer["events"][0]["cursor"]
    assert len(streams) == 0

    # A graceful shutdown answers a waiting poll at once, empty; its client polls the next scheduler.
    answers.clear()
    cursor = answer["next_cursor"]
    poller = threading.Thread(target=poll)
    poller.start()
    wait_until(lambda: len(streams) == 1, 30, "the poll to wait")
    streams.end_all(farm.app.state.services.live)
    poller.join(timeout=60)
    assert not poller.is_alive()
    assert answers == [{"events": [], "next_cursor": cursor}]


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1:8080/hook", "private_address"),
        ("http://[::1]/hook", "private_address"),
        ("http://10.1.2.3/hook", "private_address"),
        ("http://192.168.0.10/hook", "private_address"),
        ("http://169.254.169.254/latest/meta-data", "private_address"),
        ("http://224.0.0.1/hook", "private_address"),
        ("http://0.0.0.0/hook", "private_address"),
        ("http://[::ffff:127.0.0.1]/hook", "private_address"),
        ("http://localhost:8080/hook", "private_address"),
        ("https://user:secret@93.184.216.34/hook", "credentials_in_url"),
    ],
)
def test_webhook_urls_the_farm_would_not_call_are_422(
    make_farm: FarmFactory, image_png: bytes, url: str, code: str
) -> None:
    farm = make_farm()
    refused = put_job(farm, "hook-1", job_body(b64(image_png), webhook_url=url))
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["field"]) == (code, "webhook_url")


def test_a_public_address_is_accepted_and_the_operator_may_allow_loopback(
    make_farm: FarmFactory, image_png: bytes
) -> None:
    strict = make_farm()
    assert (
        put_job(strict, "pub-1", job_body(b64(image_png), webhook_url="https://93.184.216.34/hook")).status_code == 201
    )
    lenient = make_farm(webhook_allow_private_addresses=True)
    allowed = put_job(lenient, "loop-1", job_body(b64(image_png), webhook_url="http://127.0.0.1:9/hook"))
    assert allowed.status_code == 201, allowed.text


def test_delivery_rechecks_the_address(make_farm: FarmFactory, receiver: Receiver, image_png: bytes) -> None:
    # Admitted while the operator allowed loopback; a sender under the strict policy refuses to call it (as it would
    # a name that resolves to a private address by the time of delivery).
    lenient = make_farm(**FAST)
    put_job(lenient, "rebind-1", job_body(b64(image_png), webhook_url=receiver.url))
    lenient.succeed_with_artifacts("alice", "rebind-1")
    strict_settings = lenient.settings.model_copy(update={"webhook_allow_private_addresses": False})
    clock = clock_at_now()
    sender = WebhookSender(lenient.db, strict_settings, clock=lambda: clock.now)
    assert sender.deliver_due() == 1
    sender.stop()
    assert receiver.accepted == []
    assert receiver.refused == 0
    (delivery,) = lenient.client.get("/v1/jobs/rebind-1/deliveries", headers=ALICE).json()["deliveries"]
    assert delivery["log"][0]["status"] is None
    assert delivery["log"][0]["error"].startswith("private_address")


def test_a_delivery_connects_to_the_address_it_checked(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    # The name exists only for the sender's resolver: a second lookup (the HTTP client's own) could not find it, so
    # the delivery arriving proves it went to the address the check resolved, with the name as its Host.
    farm = make_farm(**FAST)
    port = receiver.server.server_address[1]
    lookups: list[str] = []

    def resolve(host: str, _port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"] if host == "hooks.farm-test.invalid" else []

    put_job(farm, "pin-1", job_body(b64(image_png), webhook_url=f"http://hooks.farm-test.invalid:{port}/hook"))
    farm.succeed_with_artifacts("alice", "pin-1")
    clock = clock_at_now()
    sender = WebhookSender(farm.db, farm.settings, clock=lambda: clock.now, resolve=resolve)
    assert sender.deliver_due() == 1
    sender.stop()
    (received,) = receiver.accepted
    assert received.headers["host"] == f"hooks.farm-test.invalid:{port}"
    assert json.loads(received.body)["data"]["task_id"] == "pin-1"
    assert lookups == ["hooks.farm-test.invalid"]


def test_an_https_delivery_to_a_pinned_address_verifies_the_certificate_of_the_name(
    make_farm: FarmFactory, image_png: bytes, tmp_path: Path
) -> None:
    # The connection goes to the address the check resolved, yet TLS is for the name: its SNI and the name the
    # certificate is checked against. A certificate of the same trusted authority for another name is refused.
    name = "hooks.farm-test.invalid"
    good = make_certificates(tmp_path / "good", name)
    other = make_certificates(tmp_path / "other", "someone-else.invalid", authority=good)
    farm = make_farm(**FAST)
    clock = clock_at_now()

    def resolve(host: str, _port: int) -> list[str]:
        return ["127.0.0.1"] if host == name else []

    for task_id, certificates, delivered in (("tls-1", good, True), ("tls-2", other, False)):
        receiver = start_receiver(certificates.server_context())
        try:
            url = f"https://{name}:{receiver.server.server_address[1]}/hook"
            put_job(farm, task_id, job_body(b64(image_png), webhook_url=url))
            farm.succeed_with_artifacts("alice", task_id)
            # The sender trusts the test authority alone (not the machine's store).
            trusting = httpx.HTTPTransport(verify=good.client_context())
            sender = WebhookSender(farm.db, farm.settings, clock=lambda: clock.now, transport=trusting, resolve=resolve)
            assert sender.deliver_due() == 1
            sender.stop()
        finally:
            receiver.server.shutdown()
            receiver.server.server_close()
        assert [json.loads(r.body)["data"]["task_id"] for r in receiver.accepted] == ([task_id] if delivered else [])
        (delivery,) = farm.client.get(f"/v1/jobs/{task_id}/deliveries", headers=ALICE).json()["deliveries"]
        if delivered:
            assert receiver.accepted[0].headers["host"] == f"{name}:{receiver.server.server_address[1]}"
            assert delivery["state"] == "delivered"
        else:
            assert delivery["state"] == "pending"
            assert "CERTIFICATE_VERIFY_FAILED" in delivery["log"][0]["error"]


def test_the_sdk_verifies_a_delivered_webhook(make_farm: FarmFactory, receiver: Receiver, image_png: bytes) -> None:
    farm = make_farm(**FAST)
    sender = sender_for(farm, clock_at_now())
    put_job(farm, "sdk-1", job_body(b64(image_png), webhook_url=receiver.url))
    farm.succeed_with_artifacts("alice", "sdk-1")
    sender.deliver_due()
    sender.stop()
    (message,) = receiver.accepted
    secret = secret_of(farm)
    sent_at = float(message.headers["webhook-timestamp"])
    event = renderfarm.verify_webhook(secret, message.headers, message.body, now=sent_at + 10)
    assert event == json.loads(message.body)
    assert event["data"]["task_id"] == "sdk-1"
    with pytest.raises(renderfarm.WebhookVerificationError, match="no signature"):
        renderfarm.verify_webhook(secret, message.headers, message.body.replace(b"sdk-1", b"sdk-2"), now=sent_at)
    with pytest.raises(renderfarm.WebhookVerificationError, match="no signature"):
        renderfarm.verify_webhook(secret_of(farm, BOB), message.headers, message.body, now=sent_at)
    with pytest.raises(renderfarm.WebhookVerificationError, match="from now"):
        renderfarm.verify_webhook(secret, message.headers, message.body, now=sent_at + 3600)


def stored_secrets(farm: Farm, tenant: str = "alice") -> tuple[str, str | None]:
    """The tenant's row as the database holds it (what a backup or a read-only role would see)."""
    engine = make_engine(farm.settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            columns = (tenant_webhooks.c.secret, tenant_webhooks.c.previous_secret)
            row = conn.execute(sa.select(*columns).where(tenant_webhooks.c.tenant == tenant)).one()
    finally:
        engine.dispose()
    return row[0], row[1]


def test_webhook_secrets_are_sealed_at_rest_with_the_operator_s_key(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    key = new_key()
    farm = make_farm(**FAST, webhook_secrets_key=key)
    secret = secret_of(farm)
    stored, _ = stored_secrets(farm)
    assert stored.startswith("fernet:")
    assert secret not in stored
    # Deliveries are signed with the secret itself, which the tenant verifies with.
    put_job(farm, "seal-1", job_body(b64(image_png), webhook_url=receiver.url))
    farm.succeed_with_artifacts("alice", "seal-1")
    sender = WebhookSender(farm.db, farm.settings, clock=lambda: clock_at_now().now)
    assert sender.deliver_due() == 1
    sender.stop()
    (message,) = receiver.accepted
    assert signature_ok(secret, message)
    # A rotation keeps both sealed; the overlap still opens the old one.
    rotated = farm.client.post("/v1/webhooks/secret/rotate", headers=ALICE).json()
    assert rotated["previous_secret"] == secret
    assert all(value is not None and value.startswith("fernet:") for value in stored_secrets(farm))
    assert secret_of(farm) == rotated["secret"]


def test_secrets_stored_before_the_key_are_sealed_on_their_next_read(make_farm: FarmFactory) -> None:
    plain = make_farm(**FAST)
    secret = secret_of(plain)
    assert stored_secrets(plain)[0] == secret  # no key: as it is
    # The same database, now served with a key (migrating to sealed secrets needs no downtime or script).
    plain.db.events.box = SecretBox.from_setting(new_key())
    assert secret_of(plain) == secret
    assert stored_secrets(plain)[0].startswith("fernet:")
    assert secret_of(plain) == secret
    # Without the key the sealed secret cannot be read: a clear error naming the setting, never a wrong signature.
    plain.db.events.box = SecretBox()
    with pytest.raises(ConfigError, match="RENDERFARM_WEBHOOK_SECRETS_KEY"):
        plain.db.events.tenant_secrets("alice")


def test_the_sdk_reads_the_feed_from_a_cursor(served_farm: tuple[Farm, str], image_png: bytes) -> None:
    farm, url = served_farm
    for task_id in ("feed-1", "feed-2"):
        assert put_job(farm, task_id, job_body(b64(image_png))).status_code == 201
        farm.succeed_with_artifacts("alice", task_id)
    with renderfarm.Client(url, token=ALICE_TOKEN) as client:
        events = list(client.events())
        assert [event["data"]["task_id"] for event in events] == ["feed-1", "feed-2"]
        assert [event["type"] for event in events] == ["job.succeeded", "job.succeeded"]
        assert [event["id"] for event in client.events(after=events[0]["cursor"])] == [events[1]["id"]]
        assert list(client.events(after=events[-1]["cursor"])) == []


def test_a_batch_finishes_once_even_when_its_last_children_finish_together(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    farm = make_farm(**FAST)
    items = [job_body(b64(image_png), seed=seed, webhook_url=receiver.url) for seed in range(3)]
    created = farm.client.post("/v1/batches", json={"jobs": items}, headers=ALICE)
    assert created.status_code == 201, created.text
    first, *last_two = created.json()["task_ids"]
    farm.succeed_with_artifacts("alice", first)
    assert [event["type"] for event in feed(farm)["events"]] == ["job.succeeded"]  # not finished yet
    rows = [farm.claim("alice", task_id) for task_id in last_two]
    start = threading.Barrier(2)

    def finish(index: int) -> None:
        start.wait()
        if index == 0:
            farm.db.leases.succeed(rows[0].id, rows[0].attempt, [])
        else:
            farm.db.leases.fail(rows[1].id, rows[1].attempt, {"type": "x", "code": "boom", "message": "no"})

    threads = [threading.Thread(target=finish, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    types = [event["type"] for event in feed(farm)["events"]]
    assert sorted(types) == ["batch.finished", "job.failed", "job.succeeded", "job.succeeded"]
    assert types[-1] == "batch.finished"  # after the events of its children
    (finished,) = [event for event in feed(farm)["events"] if event["type"] == "batch.finished"]
    assert finished["data"] == {
        "batch_id": created.json()["batch_id"],
        "counts": {"succeeded": 2, "failed": 1, "canceled": 0},
    }
    sender = sender_for(farm, clock_at_now())
    sender.deliver_due()
    sender.stop()
    delivered = [json.loads(message.body)["type"] for message in receiver.accepted]
    assert sorted(delivered) == sorted(types)


def test_two_senders_never_send_one_delivery_twice(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    farm = make_farm(**FAST)
    for index in range(24):
        assert put_job(farm, f"many-{index}", job_body(b64(image_png), webhook_url=receiver.url)).status_code == 201
        assert farm.client.post(f"/v1/jobs/many-{index}/cancel", headers=ALICE).status_code == 200
    clock = clock_at_now()
    senders = [sender_for(farm, clock) for _ in range(2)]
    start = threading.Barrier(2)
    counts: list[int] = []

    def drain(sender: WebhookSender) -> None:
        start.wait()
        while (sent := sender.deliver_due()) > 0:
            counts.append(sent)

    threads = [threading.Thread(target=drain, args=(sender,)) for sender in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for sender in senders:
        sender.stop()
    ids = [message.headers["webhook-id"] for message in receiver.accepted]
    assert len(ids) == len(set(ids)) == 24
    assert sum(counts) == 24


def test_the_scheduler_app_runs_the_sender_and_stops_it(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    farm = make_farm(**FAST)
    app = create_app(farm.settings, live=farm.live, storage=farm.storage, db=farm.db, start_background=True)
    with TestClient(app, client=LOOPBACK_CLIENT) as client:
        created = client.put("/v1/jobs/app-1", json=job_body(b64(image_png), webhook_url=receiver.url), headers=ALICE)
        assert created.status_code == 201, created.text
        farm.succeed_with_artifacts("alice", "app-1")
        wait_until(lambda: receiver.accepted, 20.0, "the webhook of app-1 from the app's own sender")
    threads = {thread.name for thread in threading.enumerate()}
    assert "renderfarm-webhooks" not in threads


def test_the_tenant_default_url_receives_events_of_jobs_without_one(
    make_farm: FarmFactory, receiver: Receiver, image_png: bytes
) -> None:
    farm = make_farm(**FAST)
    set_url = farm.client.put("/v1/webhooks/default-url", json={"url": receiver.url}, headers=ALICE)
    assert set_url.status_code == 200, set_url.text
    assert set_url.json()["default_url"] == receiver.url
    assert put_job(farm, "plain-1", job_body(b64(image_png))).status_code == 201
    farm.succeed_with_artifacts("alice", "plain-1")
    assert put_job(farm, "plain-2", job_body(b64(image_png)), headers=BOB).status_code == 201
    farm.succeed_with_artifacts("bob", "plain-2")  # bob has no default URL: an event, no delivery
    sender = sender_for(farm, clock_at_now())
    sender.deliver_due()
    sender.stop()
    assert [json.loads(message.body)["data"]["task_id"] for message in receiver.accepted] == ["plain-1"]
    assert farm.client.get("/v1/jobs/plain-2/deliveries", headers=BOB).json()["deliveries"] == []
    assert len(feed(farm, headers=BOB)["events"]) == 1
    strict = make_farm()
    refused = strict.client.put("/v1/webhooks/default-url", json={"url": "http://10.0.0.1/x"}, headers=ALICE)
    assert refused.status_code == 422
    assert (refused.json()["error"]["code"], refused.json()["error"]["field"]) == ("private_address", "url")


def test_a_batch_item_with_a_refused_url_is_422_naming_the_item(make_farm: FarmFactory, image_png: bytes) -> None:
    farm = make_farm()
    items = [job_body(b64(image_png)), job_body(b64(image_png), webhook_url="http://127.0.0.1/hook")]
    refused = farm.client.post("/v1/batches", json={"jobs": items}, headers=ALICE)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["field"] == "jobs.1.webhook_url"


def test_redelivery_of_an_unknown_event_is_404(make_farm: FarmFactory, image_png: bytes) -> None:
    farm = make_farm(**FAST)
    put_job(farm, "x-1", job_body(b64(image_png)))
    response = farm.client.post("/v1/jobs/x-1/deliveries/evt_0/redeliver", headers=ALICE)
    assert response.status_code == 404


def test_a_claim_of_a_dead_sender_expires_and_its_late_result_is_fenced(
    make_farm: FarmFactory, image_png: bytes
) -> None:
    farm = make_farm(**FAST)
    put_job(farm, "claim-1", job_body(b64(image_png), webhook_url="http://127.0.0.1:9/hook"))
    farm.succeed_with_artifacts("alice", "claim-1")
    clock = clock_at_now()
    (first,) = farm.db.events.claim_due(60.0, 10, now=clock.now)
    assert farm.db.events.claim_due(60.0, 10, now=clock.now) == []  # held by the first claim
    clock.advance(61)
    (second,) = farm.db.events.claim_due(60.0, 10, now=clock.now)  # the first sender died: due again
    assert second.delivery.id == first.delivery.id
    late = {"at": "late", "status": 204}
    assert not farm.db.events.record_attempt(first.delivery, late, delivered=True, next_attempt_at=None)
    assert farm.db.events.record_attempt(second.delivery, late, delivered=True, next_attempt_at=None)
    (row,) = farm.client.get("/v1/jobs/claim-1/deliveries", headers=ALICE).json()["deliveries"]
    assert (row["state"], row["attempts"]) == ("delivered", 1)


def test_the_reconcilers_transitions_write_events_too(make_farm: FarmFactory, image_png: bytes) -> None:
    farm = make_farm(**{**FAST, "max_attempts": 1})
    for task_id in ("dead-1", "dead-2"):
        assert put_job(farm, task_id, job_body(b64(image_png))).status_code == 201
        farm.claim("alice", task_id)
    farm.client.post("/v1/jobs/dead-2/cancel", headers=ALICE)  # running: cancel requested
    later = datetime.now(UTC) + timedelta(hours=2)  # both leases (60 s) have expired
    assert [row.task_id for row in farm.db.leases.requeue_expired(later)] == ["dead-2"]
    assert [row.task_id for row in farm.db.leases.fail_exhausted(later)] == ["dead-1"]
    events = {event["data"]["task_id"]: event for event in feed(farm)["events"]}
    assert events["dead-2"]["type"] == "job.canceled"
    assert events["dead-1"]["type"] == "job.failed"
    assert events["dead-1"]["data"]["error"]["code"] == "attempts_exhausted"


def test_the_cli_prints_the_feed_as_json_lines(
    served_farm: tuple[Farm, str], image_png: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    farm, url = served_farm
    assert put_job(farm, "cli-1", job_body(b64(image_png))).status_code == 201
    farm.succeed_with_artifacts("alice", "cli-1")
    assert cli_main(["events", "--url", url, "--token", ALICE_TOKEN]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    event = json.loads(line)
    assert (event["type"], event["data"]["task_id"]) == ("job.succeeded", "cli-1")
    assert cli_main(["events", "--url", url, "--token", ALICE_TOKEN, "--after", event["cursor"]]) == 0
    assert capsys.readouterr().out == ""
