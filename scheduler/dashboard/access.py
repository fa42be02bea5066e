"""Who is looking at the dashboard: the session cookie, the CSRF token of its buttons, and operator access.

- Signing in posts an API token once. The cookie then holds the token's sha256 digest (hex), the form the
  scheduler keeps tokens in (`scheduler.auth.TokenTable`): never the token itself, and HttpOnly, so no script of
  the page can read it; SameSite=Strict, so no other site's page can make the browser send it. No session state is
  kept on the server, so every scheduler process of a cluster accepts the cookie, and a token removed from the
  settings ends its sessions at the next restart.
- Every POST of the dashboard (sign-out, cancel, retry) carries a CSRF token taken from the page: an HMAC of the
  session's digest, which a page of another origin can neither read nor compute. It is checked in constant time.
- Operators are the tenants named in `RENDERFARM_OPERATOR_TENANTS`: they see every tenant's jobs and the workers
  page. In development mode (no tokens) there is no sign-in: the loopback user is tenant `local` and an operator.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from fastapi import Request

from scheduler.auth import DEV_TENANT, TokenTable, is_loopback, token_digest
from scheduler.errors import Forbidden

SESSION_COOKIE: Final = "rf_session"
CSRF_FIELD: Final = "csrf_token"
SESSION_MAX_AGE_S: Final = 12 * 3600  # the browser forgets the cookie after this; signing in again renews it


@dataclass(frozen=True)
class Viewer:
    """A signed-in dashboard user: the tenant, whether it is an operator, and the CSRF token of its pages."""

    tenant: str
    operator: bool
    csrf: str
    all_tenants: tuple[str, ...]  # the tenants an operator may look at (just its own for others)

    def tenants_shown(self) -> tuple[str, ...]:
        return self.all_tenants if self.operator else (self.tenant,)

    def may_see(self, tenant: str) -> bool:
        return tenant == self.tenant or (self.operator and tenant in self.all_tenants)


def cookie_value(token: str) -> str:
    """What the session cookie holds for `token`: its digest, hex."""
    return token_digest(token).hex()


def csrf_for(session: str) -> str:
    """The CSRF token of a session: derived from the session's digest, so it needs no storage."""
    return hmac.new(b"renderfarm-dashboard-csrf", session.encode("ascii"), hashlib.sha256).hexdigest()


def viewer_of(request: Request) -> Viewer | None:
    """The signed-in viewer of `request`, or None (no cookie, or one no configured token matches)."""
    table: TokenTable = request.app.state.tokens
    operators: frozenset[str] = request.app.state.dashboard_operators
    if table.dev_mode:
        host = request.client.host if request.client else None
        if not is_loopback(host):
            raise Forbidden(
                "this farm has no API tokens configured (development mode) and serves only loopback clients",
                code="dev_mode_remote_client",
            )
        return Viewer(DEV_TENANT, True, csrf_for("dev-mode"), (DEV_TENANT,))
    session = request.cookies.get(SESSION_COOKIE, "")
    try:
        digest = bytes.fromhex(session)
    except ValueError:
        return None
    if len(digest) != hashlib.sha256().digest_size:
        return None
    identity = table.identify_digest(digest)
    if identity is None:
        return None
    tenant = identity[0]
    return Viewer(tenant, tenant in operators, csrf_for(session), table.tenants())


def csrf_ok(viewer: Viewer, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(viewer.csrf.encode(), presented.encode())
