"""Webhook signatures (the Standard Webhooks scheme) and the address policy of webhook URLs (docs/api.md "Events
and webhooks").

Signature: `webhook-signature: v1,<base64 of HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`, where the
key is the base64-decoded part of the tenant's `whsec_...` secret. During a rotation's overlap the header carries one
such signature per secret, separated by spaces; a receiver accepts the message when any of them verifies.

Addresses: a webhook URL is http or https, without credentials, and its host must not be (or resolve to) a loopback,
link-local, private, multicast, reserved or unspecified address unless the operator allows those
(`RENDERFARM_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`). The check runs at submission and again before every delivery, since
a name may resolve elsewhere by then; a delivery then connects to the address it checked (`delivery_target`), never
to what a second lookup of the name answers (DNS rebinding).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

SECRET_PREFIX = "whsec_"  # noqa: S105 - the scheme's prefix, not a secret
SIGNATURE_VERSION = "v1"

Resolver = Callable[[str, int], list[str]]


class WebhookUrlRefused(ValueError):
    """A webhook URL the farm will not call; `code` says why (`invalid_url`, `credentials_in_url`,
    `private_address`, `unresolvable_host`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secrets: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: one `v1,<base64>` per secret, space-separated."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
        signatures.append(f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}")
    return " ".join(signatures)


def headers_for(secrets: Sequence[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one delivery attempt, plus the JSON content type."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, message_id, timestamp, body),
    }


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (raises OSError when it does not)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
    )


def _addresses_of(
    host: str, port: int, resolve: Resolver | None
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The host's addresses: itself when it is a literal IP, else what `resolve` finds (none without a resolver)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    if resolve is None:
        return []
    try:
        found = [ipaddress.ip_address(text.split("%")[0]) for text in resolve(host, port)]
    except OSError as exc:
        raise WebhookUrlRefused("unresolvable_host", f"host {host!r} does not resolve: {exc}") from None
    if not found:
        raise WebhookUrlRefused("unresolvable_host", f"host {host!r} does not resolve")
    return found


def check_webhook_url(url: str, *, allow_private: bool, resolve: Resolver | None = system_resolver) -> None:
    """Raise WebhookUrlRefused unless the farm may call `url`.

    `resolve=None` checks only the form and a literal IP host (no DNS lookup). With a resolver, a host name is
    looked up and every address it resolves to must pass; a name that does not resolve is refused.
    """
    _checked(url, allow_private=allow_private, resolve=resolve, need_addresses=False)


@dataclass(frozen=True)
class DeliveryTarget:
    """Where one delivery connects. `url` has a host name replaced by an address the check passed, so the
    connection goes where the check looked and not where a second lookup points (DNS rebinding); `host_header` and
    `tls_server_name` then carry the original name (the Host header; TLS's SNI and the certificate's name)."""

    url: str
    host_header: str | None = None
    tls_server_name: str | None = None


def delivery_target(url: str, *, allow_private: bool, resolve: Resolver = system_resolver) -> DeliveryTarget:
    """Check `url` as `check_webhook_url` does (raising WebhookUrlRefused) and pin the address checked."""
    parts, addresses = _checked(url, allow_private=allow_private, resolve=resolve, need_addresses=True)
    host = parts.hostname or ""
    if not addresses or _is_literal_ip(host):
        return DeliveryTarget(url)
    address = addresses[0]
    pinned = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{pinned}:{parts.port}" if parts.port is not None else pinned
    secure = parts.scheme.lower() == "https"
    return DeliveryTarget(urlunsplit(parts._replace(netloc=netloc)), parts.netloc, host if secure else None)


def _is_literal_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _checked(
    url: str, *, allow_private: bool, resolve: Resolver | None, need_addresses: bool
) -> tuple[SplitResult, list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """The URL's parts and its host's addresses (looked up only when they are checked or `need_addresses`)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise WebhookUrlRefused("invalid_url", "must be an http or https URL with a host")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlRefused(
            "credentials_in_url", "must not carry credentials (user:password@); sign with the secret"
        )
    if allow_private and not need_addresses:
        return parts, []
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise WebhookUrlRefused("invalid_url", "has an invalid port") from None
    addresses = _addresses_of(host, port, resolve)
    if not allow_private:
        for address in addresses:
            if not _is_public(address):
                raise WebhookUrlRefused(
                    "private_address",
                    f"host {host!r} is or resolves to {address}, a loopback, link-local, private, multicast or "
                    "unspecified address, which the farm does not call (the operator may allow them)",
                )
    return parts, addresses
