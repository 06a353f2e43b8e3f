"""Errors as OpenAI-style JSON bodies: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the web layer can meet is mapped here: request validation (400, the field named),
planning errors (400), unknown routes (404), a full queue (429), a stopped engine (503), a wrong
or missing API key (401), an oversized body (413) and anything unexpected (500, logged, no
traceback sent).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .planning import FieldError

log = logging.getLogger("mlx_steer.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "overloaded_error"}
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before",
         "function-wrap", "tagged-union", "union"}


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.message, param=exc.param, code=exc.code),
                        status_code=exc.status, headers=exc.headers)


def field_path(loc: Any) -> str | None:
    """``('body', 'steering', 0, 'scale')`` -> ``steering[0].scale`` (pydantic's union tags dropped)."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _FIELD.match(part) and part not in _TAGS:
            out += f".{part}" if out else part
    return out or None


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first failing field of a request body, with every message pydantic gave for it."""
    errors: list[dict[str, Any]] = [dict(e) for e in exc.errors()]
    first: dict[str, Any] = errors[0] if errors else {"type": "missing", "loc": ("body",), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        where = first["loc"][-1] if len(first.get("loc", ())) > 1 else None
        ctx: dict[str, Any] = first.get("ctx") or {}
        detail = ctx.get("error", "")
        at = f" at character {where}" if isinstance(where, int) else ""
        return ApiError(400, f"the request body is not valid JSON{at}: {detail}".rstrip(": "), code="invalid_json")
    param = field_path(first.get("loc", ()))
    if param is None:
        return ApiError(400, "the request body must be a JSON object with the request's fields", code="invalid_body")
    msgs = []
    for e in errors:
        if field_path(e.get("loc", ())) == param and e["msg"] not in msgs:
            msgs.append(_message(e))
    code = "missing_field" if first.get("type") == "missing" else "invalid_value"
    return ApiError(400, f"{param}: {' or '.join(msgs)}", param=param, code=code)


def _message(e: dict) -> str:
    msg = str(e["msg"])
    return msg.removeprefix("Value error, ")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(FieldError)
    async def _field(request: Request, exc: FieldError) -> JSONResponse:
        return error_response(ApiError(400, f"{exc.param}: {exc}" if exc.param else str(exc),
                                       param=exc.param, code=exc.code))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(exc.status_code, message, headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}", code="internal_error"))
