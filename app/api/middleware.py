"""The request middleware: request id, access log line and HTTP metrics for each request.

Pure ASGI, so streamed uploads are passed through untouched: it takes the request id from
``X-Request-ID`` when it is well formed (1-128 characters of ``A-Za-z0-9._:-``) or makes a new one, keeps
it in a contextvar for every log line of the request (``app.core.logs``), echoes it as ``X-Request-ID`` in
the response, counts requests and their latency by route template and status, and writes one access log
line per request (logger ``voxgate.access``).

What only the app learns - who the caller is (tenant, key id) and which problem a refusal answered
(its stable code; for ``overloaded`` also why) - reaches it through the request's scope state
(``note_caller`` / ``note_problem``): every refusal is counted by its code, and a key's own 429
(``rate_limited``) is told apart from the server's (``overloaded``, by reason) in metrics and logs.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import OVERLOAD_REASONS, VoxGateError
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
CALLER_STATE_KEY: Final = "caller"
PROBLEM_STATE_KEY: Final = "problem"
# A problem code outside the known set (none today) is counted under this label, never as itself.
OTHER_PROBLEM: Final = "<other>"
# Codes the problem handlers give besides VoxGate errors' own (app.api.problems).
_HANDLER_CODES: Final = frozenset({"invalid_request", "internal_error", "http_error"})

_access_log = logging.getLogger("voxgate.access")


def accept_request_id(value: str | None) -> str:
    """The client's request id if it is well formed, else a fresh one (never trust header text in logs)."""
    if value is not None and _REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return uuid.uuid4().hex


@dataclass(frozen=True)
class CallerNote:
    """Who a request acted for, once its key was accepted (before its rate limit is checked)."""

    tenant: str
    key_id: str | None


@dataclass(frozen=True)
class ProblemNote:
    """The problem a request was answered with: its stable code, and for ``overloaded`` the reason."""

    code: str
    reason: str | None = None


def note_caller(state: dict[str, Any], tenant: str, key_id: str | None) -> None:
    """Record the request's caller in its scope state (``request.state`` is backed by it)."""
    state[CALLER_STATE_KEY] = CallerNote(tenant, key_id)


def note_problem(state: dict[str, Any], code: str, reason: str | None = None) -> None:
    """Record the problem a request is answered with, for its metrics and its access log line."""
    state[PROBLEM_STATE_KEY] = ProblemNote(code, reason)


def _error_codes(cls: type[VoxGateError]) -> set[str]:
    codes = {cls.code}
    for sub in cls.__subclasses__():
        codes |= _error_codes(sub)
    return codes


def _status_codes() -> set[str]:
    # The codes of routing errors (404, 405, ...): their status phrase, as app.api.problems makes them.
    return {s.phrase.lower().replace(" ", "_").replace("-", "_") for s in HTTPStatus}


def problem_label(code: str) -> str:
    """``code`` as a metric label when it is one of the service's stable codes, else ``<other>``: a label
    value never comes from anything a client can choose."""
    known = code in _HANDLER_CODES or code in _error_codes(VoxGateError) or code in _status_codes()
    return code if known else OTHER_PROBLEM


class HttpMetrics:
    """Request count and latency by method, route template and status, and refusals by problem code,
    registered on ``registry``."""

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
        self.problems = Counter(
            "voxgate_http_problems_total",
            "Requests answered with a problem (every refusal and error), by its stable code.",
            ("code",),
            registry=registry,
        )
        self.overloaded = Counter(
            "voxgate_overload_refusals_total",
            "Requests refused as overloaded (429), by reason: queue_full (the segment queue), "
            "expected_wait (the expected wait for inference, or the request's deadline), memory (the "
            "memory held for requests).",
            ("reason",),
            registry=registry,
        )
        for reason in OVERLOAD_REASONS:  # every reason is a series from the start (rate() needs it)
            self.overloaded.labels(reason)

    def count_problem(self, problem: ProblemNote) -> None:
        self.problems.labels(problem_label(problem.code)).inc()
        if problem.code == "overloaded" and problem.reason in OVERLOAD_REASONS:
            self.overloaded.labels(problem.reason).inc()


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
            problem = state.get(PROBLEM_STATE_KEY)
            if isinstance(problem, ProblemNote):
                self.metrics.count_problem(problem)
            caller = state.get(CALLER_STATE_KEY)
            client = scope.get("client")
            extra: dict[str, Any] = {
                "method": method,
                "path": scope.get("path", ""),
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000.0, 2),
                "client": f"{client[0]}:{client[1]}" if client else None,
                "tenant": caller.tenant if isinstance(caller, CallerNote) else None,
                "key_id": caller.key_id if isinstance(caller, CallerNote) else None,
                "problem": problem.code if isinstance(problem, ProblemNote) else None,
            }
            if isinstance(problem, ProblemNote) and problem.reason is not None:
                extra["reason"] = problem.reason
            _access_log.info("%s %s %d", method, scope.get("path", ""), status, extra=extra)
            request_id_var.reset(token)
