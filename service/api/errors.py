"""The one place where exceptions become HTTP statuses and JSON error bodies.

Native routes answer ``{"error": {"code", "message", "details"}}``; OpenAI-compatible
routes answer OpenAI's ``{"error": {"message", "type", "param", "code"}}``. Each router
declares its format through its route class (:class:`ErrorFormat` on the route that
matched); both use the same status for the same exception.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from loraswap.core.errors import (
    AdapterValidationError,
    ConflictError,
    InvalidRequestError,
    LoraswapError,
    ModelLoadError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    StoreError,
)
from loraswap.service.errors import (
    AuthenticationError,
    InputTooLongError,
    NotReadyError,
    OverloadedError,
    RequestCancelledError,
)

logger = logging.getLogger(__name__)

# Most specific first: the first matching class decides the status.
_STATUS_BY_ERROR: tuple[tuple[type[LoraswapError], int], ...] = (
    (InputTooLongError, 413),
    (PayloadTooLargeError, 413),
    (InvalidRequestError, 400),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (AdapterValidationError, 422),
    (OverloadedError, 429),
    (NotReadyError, 503),
    (RequestCancelledError, 499),
    (ModelLoadError, 503),
    (StoreError, 503),
)



class ErrorFormat(StrEnum):
    """The JSON error shape an API family answers with."""

    NATIVE = "native"
    OPENAI = "openai"


_OPENAI_TYPE_BY_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 409: "invalid_request_error", 413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error", 503: "service_unavailable",
}


def status_for(error: LoraswapError) -> int:
    """HTTP status of a loraswap error."""
    for cls, status in _STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 500


def error_format_for(scope: Scope) -> ErrorFormat:
    """The error shape of the route that serves ``scope`` (native for unmatched paths).

    Routing sets ``scope["route"]``; a middleware that answers before routing (draining)
    matches the app's routes itself.
    """
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            if candidate.matches(scope)[0] is Match.FULL:
                route = candidate
                break
    format_: ErrorFormat = getattr(route, "error_format", ErrorFormat.NATIVE)
    return format_


def error_format_of(request: Request) -> ErrorFormat:
    """The error shape of the route that serves ``request``."""
    return error_format_for(request.scope)


def error_body(format_: ErrorFormat, status: int, code: str, message: str,
               details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON error body in the shape of ``format_``."""
    if format_ is ErrorFormat.OPENAI:
        param = None
        if details:
            param = ".".join(str(p) for p in details[0].get("loc", ())[1:]) or None
        error_type = _OPENAI_TYPE_BY_STATUS.get(status, "server_error")
        return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def error_response(request: Request, error: LoraswapError) -> JSONResponse:
    """The response for a loraswap error (also used inside streaming routes)."""
    status = status_for(error)
    headers = {}
    if isinstance(error, OverloadedError):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if isinstance(error, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"  # RFC 6750: say which scheme to use
    if status >= 500:
        logger.error("request failed: %s", error)
    return JSONResponse(
        error_body(error_format_of(request), status, error.code, error.message),
        status_code=status, headers=headers,
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into a JSON body with the right status."""

    @app.exception_handler(LoraswapError)
    async def on_loraswap_error(request: Request, exc: LoraswapError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        paths = ", ".join(
            ".".join(str(p) for p in d["loc"]) + f": {d['msg']}" for d in details
        )
        format_ = error_format_of(request)
        status = 400 if format_ is ErrorFormat.OPENAI else 422
        body = error_body(format_, status, "validation_error", f"invalid request: {paths}",
                          details)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized",
                413: "payload_too_large", 415: "unsupported_media_type"}.get(
            exc.status_code, "http_error")
        body = error_body(error_format_of(request), exc.status_code, code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        body = error_body(error_format_of(request), 500, "internal_error",
                          "internal server error")
        return JSONResponse(body, status_code=500)
