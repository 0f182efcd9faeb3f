"""Structured logs, request ids and HTTP request metrics.

How to wire it (two lines, both already done in ``app/main.py`` / ``app/server.py`` once they exist)::

    # once at start-up, before uvicorn runs; uvicorn must not install its own logging config:
    configure_logging(settings)
    uvicorn.run(app, host=..., port=..., log_config=None, access_log=False)

    # in the app factory; ``registry`` is the prometheus_client.CollectorRegistry that /metrics serves:
    app.add_middleware(RequestContextMiddleware, registry=registry)

What that gives:

* ``configure_logging`` writes one JSON object per line to stderr (``ts``, ``level``, ``logger``, ``msg``,
  ``request_id`` and any ``extra=`` fields) or plain text when ``VOXGATE_LOG_JSON=false``; uvicorn's
  loggers are routed through the same handler. stderr, because ``voxgate embed`` prints its results on
  stdout. Audio and embeddings are never logged: the formatter replaces byte strings, arrays and long
  float lists in ``extra`` fields with a short placeholder, as a safety net for careless call sites.
* ``RequestContextMiddleware`` (pure ASGI, so streamed uploads are passed through untouched): takes the
  request id from ``X-Request-ID`` when it is well formed (1-128 characters of ``A-Za-z0-9._:-``) or
  makes a new one, keeps it in a contextvar for every log line of the request, echoes it as
  ``X-Request-ID`` in the response, counts requests and their latency by route template and status, and
  writes one access log line per request (logger ``voxgate.access``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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

request_id_var: ContextVar[str | None] = ContextVar("voxgate_request_id", default=None)

_access_log = logging.getLogger("voxgate.access")


class LoggingSettings(Protocol):
    """The part of ``app.core.settings.Settings`` that logging needs."""

    @property
    def log_level(self) -> str: ...

    @property
    def log_json(self) -> bool: ...


def current_request_id() -> str | None:
    """The id of the request being served in this context, or None outside a request."""
    return request_id_var.get()


def accept_request_id(value: str | None) -> str:
    """The client's request id if it is well formed, else a fresh one (never trust header text in logs)."""
    if value is not None and _REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return uuid.uuid4().hex


# --- logging -------------------------------------------------------------------------------------------

# Attributes every LogRecord has; whatever else is on a record came from ``extra=``.
_STANDARD_RECORD_ATTRS: Final = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
        "message",
        "asctime",
        "request_id",
        "taskName",
        "color_message",  # uvicorn's ANSI-coloured copy of msg
    }
)
_MAX_LOGGED_SEQUENCE: Final = 16


def redact_value(value: Any) -> Any:
    """Keep audio and embeddings out of the logs: raw bytes, arrays and long number lists are summarised."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes redacted>"
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"<array shape={tuple(shape)} redacted>"
    if (
        isinstance(value, list | tuple)
        and len(value) > _MAX_LOGGED_SEQUENCE
        and all(isinstance(v, int | float) for v in value)
    ):
        return f"<{len(value)} numbers redacted>"
    return value


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: redact_value(value)
        for key, value in vars(record).items()
        if key not in _STANDARD_RECORD_ATTRS and not key.startswith("_")
    }


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id (None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Plain text for humans: time, level, logger, request id, message, then extras as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        rid = getattr(record, "request_id", None) or "-"
        line = f"{ts} {record.levelname:<7} {record.name} [{rid}] {record.getMessage()}"
        extras = " ".join(f"{key}={value}" for key, value in _extras(record).items())
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


_UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

# Start-up refusals that are the operator's to fix, not bugs: uvicorn logs the traceback Starlette
# formatted for them, of which only the last line (the exception and its message) says anything.
STARTUP_REFUSALS: Final = (
    "app.store.vault.VaultError",
    "app.engine.selfcheck.SelfCheckFailed",
    "app.engine.manifest.ManifestError",
    "app.core.errors.StoreUnavailable",
)


class StartupRefusalFilter(logging.Filter):
    """uvicorn's record of a start-up refusal, cut to its last line (no traceback for a wrong key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error" and record.levelno >= logging.ERROR:
            text = record.getMessage()
            last = text.rstrip().rsplit("\n", 1)[-1]
            if text.startswith("Traceback") and last.startswith(STARTUP_REFUSALS):
                record.msg, record.args = f"start-up refused: {last.split(': ', 1)[-1]}", ()
        return True


def configure_logging(settings: LoggingSettings, stream: Any = None) -> logging.Handler:
    """Send every log record (ours and uvicorn's) through one handler; idempotent. Returns that handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(StartupRefusalFilter())
    handler._voxgate = True  # type: ignore[attr-defined]  # marks the handler a later call replaces

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_voxgate", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level)

    for name in _UVICORN_LOGGERS:
        uv_logger = logging.getLogger(name)
        uv_logger.handlers.clear()
        uv_logger.propagate = True
        uv_logger.setLevel(settings.log_level)
    # The middleware writes the access line (with request id and route); uvicorn's would be a duplicate.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    return handler


# --- HTTP metrics and request context -----------------------------------------------------------------


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
    """Request id, access log and metrics for each HTTP request (see the module docstring)."""

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
