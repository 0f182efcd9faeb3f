"""Structured logs: one JSON object per line on stderr (or plain text), with the request id of the request
being served.

``configure_logging`` writes ``ts``, ``level``, ``logger``, ``msg``, ``request_id`` and any ``extra=``
fields, or plain text when ``VOXGATE_LOG_JSON=false``; uvicorn's loggers are routed through the same
handler (``uvicorn.run(..., log_config=None, access_log=False)``: the request middleware,
``app.api.middleware``, writes the access line). stderr, because ``voxgate embed`` prints its results on
stdout. Audio and embeddings are never logged: the formatter replaces byte strings, arrays and long float
lists in ``extra`` fields with a short placeholder, as a safety net for careless call sites.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Protocol

request_id_var: ContextVar[str | None] = ContextVar("voxgate_request_id", default=None)


class LoggingSettings(Protocol):
    """The part of ``app.core.settings.Settings`` that logging needs."""

    @property
    def log_level(self) -> str: ...

    @property
    def log_json(self) -> bool: ...


def current_request_id() -> str | None:
    """The id of the request being served in this context, or None outside a request."""
    return request_id_var.get()


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
