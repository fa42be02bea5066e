"""The `Allow` header of a 405: every method the path accepts, across all the routes that match it.

Starlette answers a wrong method with the methods of the first route whose path matched, and the farm has several
routes on one path (`GET` and `POST /v1/jobs`, `GET` and `PUT /v1/jobs/{task_id}`), so its `Allow` named one of
them. HTTP (RFC 9110, "405 Method Not Allowed") asks for all of them: each method is tried against the app's routes
here, with Starlette's own matching, so the answer always agrees with the routing.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.routing import Match

__all__ = ["allowed_methods"]

METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """The methods (comma-separated, in METHODS' order) that some route of the request's app accepts on its path."""
    routes = request.app.router.routes
    allowed = []
    for method in METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return ", ".join(allowed)
