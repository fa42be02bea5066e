"""Who is asking: API tokens mapped to tenants, resolved once per request as a dependency (`TenantDep`).

- Tokens come from `Settings.tenant_tokens()` and are kept only as sha256 digests: a memory dump or a debugger
  shows no usable token. A presented token is hashed and compared with every digest in constant time (no early
  exit), so timing tells nothing about which digest, or how much of one, matched.
- `Authorization: Bearer <token>`, or HTTP Basic with the token as the password (A1111 clients only speak Basic;
  the user name is ignored).
- No tokens configured: development mode. Every request is tenant `local`, and only loopback clients are served
  (the CLI also refuses to bind elsewhere with `Settings.check_bind`); a remote client gets 403.
- Missing or unknown credentials: 401 with `WWW-Authenticate: Bearer`.
- Rate limits (scheduler/rate_limits.py) are checked here, with authentication: the source address's failed-auth
  limit decides before the outcome of the credentials shows (a 429 whatever they are), then the address's and the
  token's request limits; a failure is counted after. Over a limit: 429 with `Retry-After`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request

from scheduler.errors import Forbidden, Unauthorized
from scheduler.rate_limits import RateLimiter
from shared.config import TenantToken

DEV_TENANT = "local"  # the tenant of every request in development mode (no tokens configured)


def token_digest(token: str) -> bytes:
    """The sha256 digest a token is kept as."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def is_loopback(host: str | None) -> bool:
    """True for a loopback client address (127.0.0.0/8, ::1, `localhost`). None (a Unix socket) counts as local."""
    if host is None:
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class TokenTable:
    """The configured tokens as sha256 digests → tenant. Empty means development mode."""

    def __init__(self, tokens: Sequence[TenantToken]) -> None:
        # Each token's rate-limit key is `tenant#position`: it names the token without any part of its secret.
        self._entries: tuple[tuple[bytes, str, str], ...] = tuple(
            (token_digest(item.token), item.tenant, f"{item.tenant}#{index}") for index, item in enumerate(tokens)
        )

    @property
    def dev_mode(self) -> bool:
        return not self._entries

    def identify(self, token: str) -> tuple[str, str] | None:
        """(tenant, rate-limit key) of this token, or None. Compares against every entry, in constant time each."""
        return self.identify_digest(token_digest(token))

    def tenants(self) -> tuple[str, ...]:
        """Every configured tenant, once each, in the order of the settings."""
        return tuple(dict.fromkeys(tenant for _digest, tenant, _key in self._entries))

    def identify_digest(self, presented: bytes) -> tuple[str, str] | None:
        """As `identify`, for a token's sha256 digest (the dashboard's session cookie holds the digest, never the
        token). Constant time per entry, as `identify`."""
        found: tuple[str, str] | None = None
        for digest, tenant, key in self._entries:
            if hmac.compare_digest(digest, presented):
                found = (tenant, key)
        return found

    def tenant_for(self, token: str) -> str | None:
        """The tenant whose token this is, or None."""
        identity = self.identify(token)
        return identity[0] if identity else None


def credentials_of(authorization: str | None) -> str | None:
    """The token in an Authorization header (`Bearer <token>`, or Basic with the token as password), else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


def authenticate(table: TokenTable, authorization: str | None, client_host: str | None) -> str:
    """The tenant of a request. Raises Unauthorized (401) or, in development mode, Forbidden (403) for a remote
    client."""
    return identify(table, authorization, client_host)[0]


def identify(table: TokenTable, authorization: str | None, client_host: str | None) -> tuple[str, str]:
    """(tenant, rate-limit key of the token) of a request; raises as `authenticate` does."""
    if table.dev_mode:
        if not is_loopback(client_host):
            raise Forbidden(
                "this farm has no API tokens configured (development mode) and serves only loopback clients; "
                "set RENDERFARM_API_TOKENS to serve others",
                code="dev_mode_remote_client",
            )
        return DEV_TENANT, DEV_TENANT
    token = credentials_of(authorization)
    if token is None:
        raise Unauthorized(
            "send an API token: Authorization: Bearer <token> (or HTTP Basic with the token as password)",
            code="missing_token",
        )
    identity = table.identify(token)
    if identity is None:
        raise Unauthorized("the API token is not valid", code="invalid_token")
    return identity


async def current_tenant(request: Request) -> str:
    """FastAPI dependency: the calling tenant (see `authenticate`), within the rate limits. The token table is on
    `app.state.tokens`, the limiter (optional) on `app.state.rate_limiter`.

    Async on purpose: it only hashes; the limiter's one Redis round trip takes a worker thread of its own.
    """
    table: TokenTable = request.app.state.tokens
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    host = request.client.host if request.client else None
    address = host or "unix-socket"
    try:
        tenant, token_key = identify(table, request.headers.get("authorization"), host)
    except (Unauthorized, Forbidden) as refused:
        # Whether the limits allow the request is decided first, as if the credentials had not been looked at.
        if limiter is not None:
            await limiter.admit(address, None)
            await limiter.note_failed_auth(address)
        raise refused from None
    if limiter is not None:
        await limiter.admit(address, token_key)
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
