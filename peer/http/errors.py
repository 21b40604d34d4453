"""One error body for every refusal of the till's HTTP API.

``{"error": {"code": "...", "message": "...", "details": [{"path", "message"}]}}``:
``code`` is stable and meant for programs, ``message`` is one line for people, and
``details`` lists every violation with the path of the offending value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tillsync.peer.errors import (
    DuplicateEntry,
    Forbidden,
    InvalidInput,
    StoreError,
    TillsyncError,
    UnknownReference,
)
from tillsync.schemas import SchemaViolation, UnknownCollection, UnknownKind

log = logging.getLogger("tillsync.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A refusal with its HTTP status, stable code and details."""

    def __init__(self, status: int, code: str, message: str,
                 details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []


def body(code: str, message: str, details: list[dict[str, str]] | None = None
         ) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def respond(error: ApiError) -> web.Response:
    return web.json_response(body(error.code, error.message, error.details),
                             status=error.status)


def translate(exc: BaseException) -> ApiError | None:
    """The API's answer to an exception the store raises on purpose, or None."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SchemaViolation):
        details = [{"path": v.path, "message": v.message} for v in exc.violations]
        return ApiError(422, "schema_violation",
                        f"{exc.what} is invalid ({len(details)} problem"
                        f"{'' if len(details) == 1 else 's'}); nothing was stored", details)
    if isinstance(exc, UnknownKind):
        return ApiError(400, "unknown_kind", str(exc),
                        [{"path": "kind", "message": str(exc)}])
    if isinstance(exc, UnknownCollection):
        return ApiError(404, "unknown_collection", str(exc),
                        [{"path": "collection", "message": str(exc)}])
    if isinstance(exc, DuplicateEntry):
        return ApiError(409, "client_id_conflict", str(exc),
                        [{"path": "client_id", "message": str(exc)}])
    if isinstance(exc, Forbidden):
        return ApiError(403, "forbidden", str(exc))
    if isinstance(exc, UnknownReference):
        return ApiError(422, "unknown_reference", str(exc))
    if isinstance(exc, InvalidInput):
        return ApiError(422, "invalid", str(exc))
    if isinstance(exc, StoreError):
        return ApiError(503, "store_unavailable", str(exc))
    if isinstance(exc, TillsyncError):
        return ApiError(503, "unavailable", str(exc))
    return None


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal in the one body shape; an unexpected failure is logged and answered
    500 without details (nothing the store refused is ever a 500)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed",
                413: "too_large"}.get(exc.status, "http_error")
        return web.json_response(body(code, exc.reason), status=exc.status)
    except Exception as exc:
        error = translate(exc)
        if error is None:
            log.exception("%s %s failed", request.method, request.path)
            error = ApiError(500, "internal", "internal error; nothing was stored")
        return respond(error)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a 400."""
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"the request body is not valid JSON: {exc}",
                       [{"path": "", "message": str(exc)}]) from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the request body must be a JSON object",
                       [{"path": "", "message": "not an object"}])
    return data
