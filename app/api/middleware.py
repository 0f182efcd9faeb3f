"""The request middleware: request id, access log line and HTTP metrics for each request.

Pure ASGI, so streamed uploads are passed through untouched: it takes the request id from
``X-Request-ID`` when it is well formed (1-128 characters of ``A-Za-z0-9._:-``) or makes a new one, keeps
it in a contextvar for every log line of the request (``app.core.logs``), echoes it as ``X-Request-ID`` in
the response, counts requests and their latency by route template and status, and writes one access log
line per request (logger ``voxgate.access``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import request_id_var

REQUEST_ID_HEADER: Final = "x-request-id"
_REQUEST_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Latency buckets (seconds): a verify on a warm GPU takes milliseconds, an enrollment of several long
# recordings on a CPU several seconds; the request deadline defaults to 30 s.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED_ROUTE: Final = "<unmatched>"
# The method is the client's token (any token parses): others share one label, as unmatched paths do.
METRIC_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD: Final = "<other>"
ARRIVED_STATE_KEY: Final = "arrived_monotonic"

_access_log = logging.getLogger("voxgate.access")


def accept_request_id(value: str | None) -> str:
    """The client's request id if it is well formed, else a fresh one (never trust header text in logs)."""
    if value is not None and _REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return uuid.uuid4().hex


class HttpMetrics:
    """Request count and latency by method, route template and status, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "voxgate_http_requests_total",
            "HTTP requests answered, by method, route template and status code.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "voxgate_http_request_duration_seconds",
            "Time from request start to the end of the response body, by method, route and status.",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "voxgate_http_requests_in_progress",
            "HTTP requests being served right now.",
            registry=registry,
            multiprocess_mode="livesum",
        )


def route_template(scope: Mapping[str, Any]) -> str:
    """The matched route's path template (``/v1/speakers/{speaker_id}``), never the raw path.

    Raw paths carry ids and would make one metric series per speaker; unmatched paths share one label.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str) and template:
        return f"{scope.get('root_path', '')}{template}"
    return UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Request id, access log and metrics for each HTTP request."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.metrics = HttpMetrics(registry if registry is not None else CollectorRegistry())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        supplied = next(
            (value.decode("latin-1") for key, value in scope["headers"] if key == b"x-request-id"), None
        )
        request_id = accept_request_id(supplied)
        token = request_id_var.set(request_id)
        # Also reachable by the app through the scope (request.state is backed by scope["state"]).
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # When the request arrived: its deadline covers reading, decoding, queueing and inference.
        state[ARRIVED_STATE_KEY] = time.monotonic()
        status = 500  # what the client sees if the app fails before starting a response
        started = time.perf_counter()

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.in_progress.dec()
            method = str(scope.get("method", ""))
            route = route_template(scope)
            method_label = method if method in METRIC_METHODS else OTHER_METHOD
            self.metrics.requests.labels(method_label, route, str(status)).inc()
            self.metrics.latency.labels(method_label, route, str(status)).observe(elapsed)
            client = scope.get("client")
            _access_log.info(
                "%s %s %d",
                method,
                scope.get("path", ""),
                status,
                extra={
                    "method": method,
                    "path": scope.get("path", ""),
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000.0, 2),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                },
            )
            request_id_var.reset(token)
