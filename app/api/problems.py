"""Renders every error as RFC 9457 problem+json (``type``, ``title``, ``status``, ``detail``,
``instance`` and a stable ``code``) — VoxGate errors, FastAPI's request validation errors, routing
errors (404/405) and, as a last resort, unexpected exceptions (500, details only in the log)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import VoxGateError
from app.core.ids import invalid_speaker_id

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem_type(code: str) -> str:
    return f"urn:voxgate:problem:{code}"


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
    }
    # The id the request middleware assigned (also in the X-Request-ID header): quote it in bug reports.
    request_id = getattr(request.state, "request_id", None)
    if request_id is not None:
        body["request_id"] = request_id
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return JSONResponse(
        jsonable_encoder(body), status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def error_response(request: Request, exc: VoxGateError) -> JSONResponse:
    """The problem+json answer of a VoxGate error (its status, code, title, detail, extras, headers)."""
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        extra=exc.extra,
        headers=exc.headers() or None,
    )


async def _voxgate_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VoxGateError)
    if exc.status >= 500:
        log.warning("request failed: %s: %s", exc.code, exc.detail)
    return error_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    if first.get("type") == "string_pattern_mismatch" and first["loc"][-1:] == ["speaker_id"]:
        return error_response(request, invalid_speaker_id())
    where = ".".join(str(p) for p in first["loc"])
    return problem_response(
        request,
        status=422,
        code="invalid_request",
        title="Invalid request",
        detail=f"{where}: {first['msg']}" if where else str(first["msg"]),
        extra={"errors": errors},
    )


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str | None:
    """Every method the path supports. Starlette's 405 names only the first route that matched the
    path, so GET and DELETE on /speakers/{id} (two routes) answered ``Allow: GET``. Asks each
    top-level route (included routers too) whether it fully matches the path with that method."""
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed) or None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else ""
    code = phrase.lower().replace(" ", "_").replace("-", "_") or "http_error"
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405 and (allow := _allowed_methods(request)):
        headers["Allow"] = allow
    return problem_response(
        request,
        status=exc.status_code,
        code=code,
        title=phrase or "HTTP error",
        detail=str(exc.detail),
        headers=headers or None,
    )


class UnexpectedErrorMiddleware:
    """The last resort: an exception nothing else handled becomes a 500 problem+json, answered here,
    inside the request middleware, so the answer carries the X-Request-ID and the traceback is logged
    under the request's id (Starlette's own handler runs outside every middleware). The answer says
    ``Connection: close``: the request body may be half read, so the connection cannot be reused."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started:
                raise  # nothing left to answer with; the server closes the connection
            request = Request(scope)
            log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            response = problem_response(
                request,
                status=500,
                code="internal_error",
                title="Internal error",
                detail="an unexpected error occurred; it has been logged",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)


def install_problem_handlers(app: FastAPI) -> None:
    """Problem+json for every error; call before adding the request middleware (it must be outside)."""
    app.add_exception_handler(VoxGateError, _voxgate_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(UnexpectedErrorMiddleware)
