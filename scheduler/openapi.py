"""The API's OpenAPI document, made to tell the truth about what the routes answer (docs/api.md "Auth, limits,
errors").

FastAPI's document, as generated, describes FastAPI's defaults rather than the farm: its 422 body is FastAPI's
`HTTPValidationError`, while the farm answers every error with `{error: {type, code, message, ...}}`
(`scheduler/errors.py`), and it lists only the statuses a route declares, not those every route can answer through
the farm's middlewares and dependencies (401 without a token, 413 over the body limit, 503 when a dependency is
down). This module rewrites it once, after generation:

- every 4xx/5xx answer has the farm's `ErrorBody` schema; FastAPI's validation schemas are gone;
- every operation lists the statuses it can really answer: 400 (a malformed `Content-Length`) and 413 (a body over
  `RENDERFARM_MAX_REQUEST_BYTES`) from `BodyLimitMiddleware`, 500 from `InternalErrorMiddleware`; 401 and 429 where
  a token is needed; 503 where the route reads the database or another service; 422 where it takes input; 404
  where it names something (a path parameter, or a body that can reference assets and jobs);
- the constraints the routes enforce and FastAPI cannot see, because the route checks them itself: the task id's
  alphabet and length (`shared.job.ids`, in paths and in `force_task_id`), the asset id's form, at least one init
  image, the prompts' length (`shared.job.spec.MAX_PROMPT_LENGTH`) on the webui's route too, and the prompts' limit
  in CLIP tokens (a setting, so described in words: `shared.prompts.token_limit`).

`tests/api/test_openapi_schemathesis.py` holds the document to the behaviour.
"""

from __future__ import annotations

from typing import Any, Final

from shared.job.ids import MAX_TASK_ID_LENGTH
from shared.job.limits import DEFAULT_MAX_PROMPT_TOKENS
from shared.job.spec import MAX_PROMPT_LENGTH

__all__ = ["ERROR_BODY_SCHEMA", "truthful_document"]

ERROR_REF: Final = "#/components/schemas/ErrorBody"
ERROR_BODY_SCHEMA: Final[dict[str, Any]] = {
    "title": "ErrorBody",
    "description": 'Every error answer of the farm (docs/api.md "Auth, limits, errors").',
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "code", "message"],
            "properties": {
                "type": {"type": "string", "description": "the class of problem (invalid_request, not_found, ...)"},
                "code": {"type": "string", "description": "the precise reason, stable"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the request field at fault (dotted path)"},
                "details": {
                    "type": "array",
                    "description": "one entry per invalid field",
                    "items": {
                        "type": "object",
                        "required": ["field", "code", "message"],
                        "properties": {
                            "field": {"type": "string"},
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    },
                },
                "retry_after_s": {"type": "number", "description": "429 and 503: seconds to wait"},
            },
            # Some errors carry more (a conflict names both request hashes).
            "additionalProperties": True,
        }
    },
}

# Task ids: shared.job.ids.TASK_ID_PATTERN, anchored, without the two path steps `.` and `..`.
TASK_ID_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "pattern": rf"^(?!\.\.?$)[A-Za-z0-9._\-:()]{{1,{MAX_TASK_ID_LENGTH}}}$",
    "minLength": 1,
    "maxLength": MAX_TASK_ID_LENGTH,
}
ASSET_ID_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "pattern": "^(asset:)?[0-9a-f]{64}$",
    "description": "asset:<sha256> or the bare sha256",
}
PATH_PARAMETER_SCHEMAS: Final[dict[str, dict[str, Any]]] = {"task_id": TASK_ID_SCHEMA, "asset_id": ASSET_ID_SCHEMA}

PROMPT_DESCRIPTION: Final = (
    f"At most {MAX_PROMPT_LENGTH} characters, and at most the farm's max_prompt_tokens CLIP tokens (default "
    f"{DEFAULT_MAX_PROMPT_TOKENS}) of the text the worker encodes (extra-network tags and emphasis markup not "
    'counted); a longer prompt is a 422 naming the field (docs/reliability.md, "Limits at the edge").'
)

# Constraints of request fields that the farm checks after FastAPI's validation (shared.job.spec, the webui
# translation), by schema → field → what the field's string or array branch must say.
FIELD_CONSTRAINTS: Final[dict[str, dict[str, dict[str, Any]]]] = {
    "Img2ImgJob": {
        "init_images": {"minItems": 1},
        "prompt": {"description": PROMPT_DESCRIPTION},
        "negative_prompt": {"description": PROMPT_DESCRIPTION},
        "force_task_id": {k: v for k, v in TASK_ID_SCHEMA.items() if k != "type"},
    },
    "Img2ImgRequest": {
        "init_images": {"minItems": 1},
        "prompt": {"maxLength": MAX_PROMPT_LENGTH, "description": PROMPT_DESCRIPTION},
        "negative_prompt": {"maxLength": MAX_PROMPT_LENGTH, "description": PROMPT_DESCRIPTION},
        "force_task_id": {k: v for k, v in TASK_ID_SCHEMA.items() if k != "type"},
    },
}

# Routes that read nothing but the process itself.
NO_SERVICES: Final = frozenset({"/healthz"})
TOKEN_PREFIXES: Final = ("/v1/", "/sdapi/", "/internal/")
SIGNED_PREFIXES: Final = ("/v1/files/",)

STATUS_DESCRIPTIONS: Final[dict[int, str]] = {
    400: "a malformed request (for example its Content-Length)",
    401: "no token, or an unknown one",
    404: "what the request names does not exist, or is another tenant's",
    410: 'the job was purged at the end of its retention period; `purged_at` says when (docs/api.md "Retention")',
    413: "the request body is over RENDERFARM_MAX_REQUEST_BYTES (or another size limit)",
    422: "the request is invalid; `field` names the culprit",
    429: "a rate or queue limit; retry after `retry_after_s` (also the Retry-After header)",
    500: "an internal error (logged with its id)",
    503: "a dependency (database, storage, broker) is unavailable; retry later",
}
_FASTAPI_VALIDATION_SCHEMAS: Final = ("HTTPValidationError", "ValidationError")


def _needs_token(path: str) -> bool:
    """Every route of the API and of the webui's API needs a token; health checks and the signed download URLs of
    `/v1/files/` do not (scheduler/auth.py)."""
    return path.startswith(TOKEN_PREFIXES) and not path.startswith(SIGNED_PREFIXES)


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses this operation can answer besides those it declares."""
    statuses = {400, 413, 500}
    if _needs_token(path):
        statuses |= {401, 429}
    if path not in NO_SERVICES:
        statuses.add(503)
    writes = method in ("post", "put")
    if operation.get("parameters") or "requestBody" in operation or writes:
        statuses.add(422)
    if writes or any(p.get("in") == "path" for p in operation.get("parameters", [])):
        statuses.add(404)
    if path.startswith("/v1/jobs/{task_id}"):
        statuses.add(410)  # a purged job's tombstone (scheduler/purge.py)
    return statuses


def _constrain(schema: dict[str, Any], constraints: dict[str, Any]) -> None:
    """Add `constraints` to the schema's non-null branch (the schema itself, or the branch of an `anyOf`)."""
    kind = "array" if "minItems" in constraints else "string"
    branches = schema.get("anyOf", [schema])
    for branch in branches:
        if branch.get("type") == kind:
            branch.update(constraints)


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": ERROR_REF}}}


def truthful_document(document: dict[str, Any]) -> dict[str, Any]:
    """Rewrite FastAPI's generated `document` in place (see the module's docstring); returns it."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    schemas["ErrorBody"] = ERROR_BODY_SCHEMA
    for schema_name, fields in FIELD_CONSTRAINTS.items():
        properties = schemas.get(schema_name, {}).get("properties", {})
        for field, constraints in fields.items():
            if field in properties:
                _constrain(properties[field], constraints)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status in _statuses(path, method, operation):
                responses.setdefault(str(status), {"description": STATUS_DESCRIPTIONS[status]})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = _error_content()
            for parameter in operation.get("parameters", []):
                schema = PATH_PARAMETER_SCHEMAS.get(parameter.get("name", ""))
                if parameter.get("in") == "path" and schema is not None:
                    parameter["schema"] = {**parameter.get("schema", {}), **schema}
    return document
