"""Every error the API answers with has one shape: `{"error": {"type", "code", "message", "field"?, ...}}`.

- `RenderfarmError` (and subclasses): their own `http_status` and `to_body()`, plus `Retry-After` for errors that
  carry `retry_after_s` and `WWW-Authenticate: Bearer` for 401s.
- FastAPI's `RequestValidationError` (a bad path, query or body parameter): 422 `invalid_request` naming the field.
- Starlette's `HTTPException` (unknown route 404, wrong method 405, body too large 413): typed as well.
- Anything else is our bug: `InternalErrorMiddleware` logs it with a reference id and answers a typed 500 without
  the traceback.

`BodyLimitMiddleware` refuses request bodies over the farm's limit (413), both by `Content-Length` and while a
body without one is streamed.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scheduler.allowed_methods import allowed_methods
from shared.errors import Conflict, FieldProblem, InputError, RenderfarmError, TransientError

log = logging.getLogger("scheduler.errors")

TRANSIENT_RETRY_AFTER_S = 5.0  # what a client is told to wait after a 503 for a dependency that is briefly down

# The parts of FastAPI's error locations that say where a parameter came from, not which one it is.
_LOCATION_PREFIXES = frozenset({"body", "query", "path", "header", "cookie"})
_VALIDATION_CODES = {
    "missing": "missing",
    "json_invalid": "invalid_json",
    "string_pattern_mismatch": "invalid_format",
    "enum": "invalid_choice",
    "literal_error": "invalid_choice",
    "uuid_parsing": "invalid_format",
    "uuid_type": "invalid_format",
    "int_parsing": "invalid_type",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "dict_type": "invalid_type",
}


class Unauthorized(RenderfarmError, type="unauthorized", http_status=401, default_code="unauthorized"):
    """No credentials, or credentials that name no tenant (401, with `WWW-Authenticate: Bearer`)."""


class Forbidden(RenderfarmError, type="forbidden", http_status=403, default_code="forbidden"):
    """The request is understood but refused for where it comes from (development mode on a remote address)."""


class TaskIdConflict(Conflict):
    """A task id reused with a different request (409). The body names both request hashes."""

    def __init__(self, task_id: str, existing_hash: str, request_hash: str) -> None:
        super().__init__(
            f"task id {task_id!r} is already used by a different request (existing request hash {existing_hash}, "
            f"this request's hash {request_hash}); choose another task id or send the same request",
            code="task_id_conflict",
            field="task_id",
        )
        self.existing_hash = existing_hash
        self.request_hash = request_hash

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        body["error"]["existing_request_hash"] = self.existing_hash
        body["error"]["request_hash"] = self.request_hash
        return body


def error_headers(exc: RenderfarmError) -> dict[str, str]:
    """The headers that go with an error: Retry-After (whole seconds, rounded up) for 429/503, WWW-Authenticate for
    401."""
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is None and isinstance(exc, TransientError):
        retry_after = TRANSIENT_RETRY_AFTER_S
    if isinstance(retry_after, int | float) and retry_after > 0:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="renderfarm"'
    return headers


def error_response(exc: RenderfarmError) -> JSONResponse:
    """The typed JSON response of one of the farm's errors. Errors without an HTTP meaning (500) are logged."""
    if exc.http_status >= 500:
        log.warning("answering %s: %s", exc.http_status, exc.message)
    return JSONResponse(exc.to_body(), status_code=exc.http_status, headers=error_headers(exc))


def _field_of(loc: Sequence[int | str]) -> str:
    parts = list(loc)
    if parts and parts[0] in _LOCATION_PREFIXES:
        parts = parts[1:]
    return ".".join(str(part) for part in parts) or "body"


def validation_problems(errors: Sequence[Any]) -> list[FieldProblem]:
    """FastAPI's validation errors as the farm's field problems (dotted field path, stable code, message)."""
    problems: list[FieldProblem] = []
    for error in errors:
        error_type = str(error.get("type", "invalid"))
        code = _VALIDATION_CODES.get(error_type, "invalid")
        loc = tuple(error.get("loc", ()))
        if error_type == "json_invalid":
            # FastAPI puts the character offset where a field name would be.
            field = "body"
            reason = (error.get("ctx") or {}).get("error", "")
            position = f" at character {loc[1]}" if len(loc) > 1 else ""
            message = f"the body is not valid JSON ({reason}{position})" if reason else "the body is not valid JSON"
        else:
            field = _field_of(loc)
            message = str(error.get("msg", "invalid"))
        problems.append(FieldProblem(field, message, code))
    return problems or [FieldProblem("body", "the request is invalid", "invalid")]


async def _renderfarm_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RenderfarmError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(InputError.from_problems(validation_problems(exc.errors())))


def _http_error_body(status: int, detail: object) -> tuple[str, str, str]:
    """(type, code, message) for one of Starlette's own HTTP errors."""
    if status == 404:
        return "not_found", "no_route", "no such route; see /openapi.json for the API"
    if status == 405:
        return "method_not_allowed", "method_not_allowed", "this route does not accept that method"
    if status == 413:
        return "payload_too_large", "request_too_large", str(detail)
    if status == 401:
        return "unauthorized", "unauthorized", str(detail)
    kind = "invalid_request" if 400 <= status < 500 else "internal"
    return kind, "http_error", str(detail)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type, code, message = _http_error_body(exc.status_code, exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette's names the first matching route's methods only (scheduler/allowed_methods.py).
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return JSONResponse(
        {"error": {"type": error_type, "code": code, "message": message}},
        status_code=exc.status_code,
        headers=headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the typed handlers above on `app`."""
    app.add_exception_handler(RenderfarmError, _renderfarm_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


# --------------------------------------------------------------------------------------------------------------
# ASGI middlewares


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()
    ]
    # A body refused before it was read: ask the client to close, so the unread rest is not taken as a request.
    if status == 413:
        raw_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class InternalErrorMiddleware:
    """Turn an unhandled exception (our bug) into a typed 500 with a reference id; the traceback goes to the log.

    Starlette's own ServerErrorMiddleware re-raises after answering, which makes servers log the error twice and
    test clients raise; this answers and stops here. If the response had already started, the connection is
    dropped (re-raising is the only honest option then).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            reference = uuid.uuid4().hex[:12]
            log.exception("unhandled error in %s %s (reference %s)", scope.get("method"), scope.get("path"), reference)
            if started:
                raise
            await _send_json(
                send,
                500,
                {
                    "error": {
                        "type": "internal",
                        "code": "internal",
                        "message": f"internal error (reference {reference}); the operators have it in their logs",
                    }
                },
            )


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when a streamed body passes the limit; FastAPI lets HTTPExceptions through as they are."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with a typed 413.

    A `Content-Length` over the limit is refused before anything is read. A body sent without one (chunked) is
    counted while the app reads it, and `BodyTooLarge` is raised from `receive` once it passes the limit, so no
    route ever holds more than `max_bytes` of a body in memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await _send_json(
                        send,
                        400,
                        {"error": {"type": "invalid_request", "code": "bad_content_length", "message": "bad header"}},
                    )
                    return
                if declared > self.max_bytes:
                    error = BodyTooLarge(self.max_bytes)
                    await _send_json(
                        send,
                        413,
                        {"error": {"type": "payload_too_large", "code": "request_too_large", "message": error.detail}},
                    )
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)
