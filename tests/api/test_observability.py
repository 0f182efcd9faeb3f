"""Structured logging, request ids, HTTP metrics and readable settings errors."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.api.middleware import OTHER_METHOD, UNMATCHED_ROUTE, RequestContextMiddleware, accept_request_id
from app.api.problems import install_problem_handlers
from app.core.logs import (
    STARTUP_REFUSALS,
    configure_logging,
    current_request_id,
    redact_value,
    request_id_var,
)
from app.core.settings import Settings
from app.core.settings_errors import InvalidSettings, format_validation_error, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide logging; put it back for the tests that follow."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
    saved = {
        name: (
            list(logging.getLogger(name).handlers),
            logging.getLogger(name).level,
            logging.getLogger(name).propagate,
        )
        for name in names
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def log_stream() -> io.StringIO:
    """JSON logging into a buffer."""
    stream = io.StringIO()
    configure_logging(Settings(log_json=True, log_level="INFO"), stream=stream)
    return stream


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# --- logging -----------------------------------------------------------------------------------------


def test_json_log_line_has_the_fields_and_extras(log_stream: io.StringIO) -> None:
    token = request_id_var.set("req-123")
    try:
        logging.getLogger("voxgate.test").info("scored %s", "x", extra={"speaker_id": "alice", "score": 0.8})
    finally:
        request_id_var.reset(token)
    (line,) = _lines(log_stream)
    assert line["level"] == "INFO"
    assert line["logger"] == "voxgate.test"
    assert line["msg"] == "scored x"
    assert line["request_id"] == "req-123"
    assert line["speaker_id"] == "alice"
    assert line["score"] == 0.8
    assert line["ts"].endswith("+00:00")


def test_exceptions_are_one_json_line(log_stream: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("voxgate.test").exception("failed")
    (line,) = _lines(log_stream)
    assert "ValueError: boom" in line["exc"]
    assert line["request_id"] is None


def test_audio_and_embeddings_never_reach_the_log(log_stream: io.StringIO) -> None:
    embedding = np.random.default_rng(0).standard_normal(192).astype(np.float32)
    logging.getLogger("voxgate.test").info(
        "careless",
        extra={"audio": b"RIFF" + bytes(1000), "embedding": embedding, "as_list": embedding.tolist()},
    )
    raw = log_stream.getvalue()
    (line,) = _lines(log_stream)
    assert line["audio"] == "<1004 bytes redacted>"
    assert line["embedding"] == "<array shape=(192,) redacted>"
    assert line["as_list"] == "<192 numbers redacted>"
    assert f"{embedding[0]:.4f}"[:6] not in raw


def test_redact_keeps_small_values() -> None:
    assert redact_value([0.1, 0.2]) == [0.1, 0.2]
    assert redact_value("alice") == "alice"


def test_text_format_and_uvicorn_routed_through_one_handler() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_json=False, log_level="INFO"), stream=stream)
    configure_logging(Settings(log_json=False, log_level="INFO"), stream=stream)  # idempotent
    assert sum(getattr(h, "_voxgate", False) for h in logging.getLogger().handlers) == 1
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.access").info("duplicate access line")  # silenced: we write our own
    logging.getLogger("voxgate.test").debug("below the level")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert " INFO    uvicorn.error [-] Started server process" in lines[0]


# --- request ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("supplied", "kept"),
    [
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("trace:abc.DEF_123", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("evil\nline", False),
        ("<script>", False),
        ("a b", False),
        (None, False),
    ],
)
def test_request_id_validation(supplied: str | None, kept: bool) -> None:
    result = accept_request_id(supplied)
    assert (result == supplied) is kept
    if not kept:
        assert len(result) == 32
        assert all(c in "0123456789abcdef" for c in result)


# --- middleware on a real FastAPI app ----------------------------------------------------------------


@pytest.fixture
def app_and_registry() -> tuple[FastAPI, CollectorRegistry]:
    registry = CollectorRegistry()
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware, registry=registry)

    @app.get("/v1/speakers/{speaker_id}")
    async def get_speaker(speaker_id: str, request: Request) -> dict[str, Any]:
        logging.getLogger("voxgate.api").info("looked up", extra={"speaker_id": speaker_id})
        return {"speaker_id": speaker_id, "request_id": current_request_id()}

    @app.get("/fail")
    async def fail() -> None:
        raise RuntimeError("unhandled")

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(404, "nope")

    return app, registry


def _count(registry: CollectorRegistry, route: str, status: str, method: str = "GET") -> float:
    value = registry.get_sample_value(
        "voxgate_http_requests_total", {"method": method, "route": route, "status": status}
    )
    return value or 0.0


def test_request_id_echoed_logged_and_metrics_by_route_template(
    app_and_registry: tuple[FastAPI, CollectorRegistry], log_stream: io.StringIO
) -> None:
    app, registry = app_and_registry
    with TestClient(app) as client:
        given = client.get("/v1/speakers/alice", headers={"X-Request-ID": "client-id-1"})
        generated = client.get("/v1/speakers/bob")
        rejected = client.get("/v1/speakers/carol", headers={"X-Request-ID": "bad id\twith tab"})
    assert given.headers["x-request-id"] == "client-id-1" == given.json()["request_id"]
    assert generated.headers["x-request-id"] == generated.json()["request_id"]
    assert len(generated.headers["x-request-id"]) == 32
    assert rejected.headers["x-request-id"] != "bad id\twith tab"

    template = "/v1/speakers/{speaker_id}"
    assert _count(registry, template, "200") == 3
    assert registry.get_sample_value(
        "voxgate_http_request_duration_seconds_count", {"method": "GET", "route": template, "status": "200"}
    ) == pytest.approx(3)
    assert registry.get_sample_value("voxgate_http_requests_in_progress") == 0

    lines = _lines(log_stream)
    app_line = next(line for line in lines if line["msg"] == "looked up" and line["speaker_id"] == "alice")
    assert app_line["request_id"] == "client-id-1"
    access = [line for line in lines if line["logger"] == "voxgate.access"]
    assert len(access) == 3
    first = next(line for line in access if line["request_id"] == "client-id-1")
    assert first["route"] == template
    assert first["status"] == 200
    assert first["path"] == "/v1/speakers/alice"
    assert first["duration_ms"] >= 0
    assert current_request_id() is None, "the request id must not leak out of the request"


def test_errors_and_unmatched_paths_are_counted(
    app_and_registry: tuple[FastAPI, CollectorRegistry], log_stream: io.StringIO
) -> None:
    app, registry = app_and_registry
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/no/such/path/123").status_code == 404
        assert client.get("/missing").status_code == 404
        failed = client.get("/fail")
    assert failed.status_code == 500
    assert _count(registry, UNMATCHED_ROUTE, "404") == 1, "raw unknown paths must not become labels"
    assert _count(registry, "/missing", "404") == 1
    assert _count(registry, "/fail", "500") == 1
    assert registry.get_sample_value("voxgate_http_requests_in_progress") == 0


def test_made_up_methods_share_one_metric_label(
    app_and_registry: tuple[FastAPI, CollectorRegistry], log_stream: io.StringIO
) -> None:
    # Any token is a method to the HTTP parser; one series per client-chosen token would grow /metrics
    # without bound, before any authentication.
    app, registry = app_and_registry
    with TestClient(app) as client:
        for i in range(20):
            assert client.request(f"M{i}XYZ", "/missing").status_code == 405
        client.request("DELETE", "/missing")
    assert _count(registry, "/missing", "405", method=OTHER_METHOD) == 20
    assert _count(registry, "/missing", "405", method="DELETE") == 1
    methods = {
        sample.labels["method"]
        for metric in registry.collect()
        if metric.name == "voxgate_http_requests"
        for sample in metric.samples
    }
    assert methods == {OTHER_METHOD, "DELETE"}


def test_unexpected_error_is_problem_json_with_request_id_and_logged_under_it(
    log_stream: io.StringIO,
) -> None:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(RequestContextMiddleware, registry=CollectorRegistry())

    @app.post("/fail")
    async def fail() -> None:
        raise RuntimeError("unhandled")

    with TestClient(app, raise_server_exceptions=False) as client:
        failed = client.post("/fail", headers={"X-Request-ID": "trace-500"}, content=b"x" * 10)
        after = client.post("/fail")
    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/problem+json"
    assert failed.json()["code"] == "internal_error"
    assert failed.headers["x-request-id"] == "trace-500" == failed.json()["request_id"]
    # The body may be half read when the app fails: the client must not reuse the connection.
    assert failed.headers["connection"] == "close"
    assert after.status_code == 500
    assert after.headers["x-request-id"] != "trace-500"
    logged = [line for line in _lines(log_stream) if line["msg"].startswith("unhandled error")]
    assert [line["request_id"] for line in logged] == ["trace-500", after.headers["x-request-id"]]
    assert "RuntimeError: unhandled" in logged[0]["exc"]


def test_streamed_upload_is_passed_through_chunk_by_chunk() -> None:
    # Pure ASGI: the app must see each body chunk as it arrives, not one buffered body at the end.
    chunks = [b"a" * 10, b"b" * 10, b"c" * 10]
    produced: list[int] = []
    seen_when_received: list[tuple[bytes, int]] = []

    async def receive() -> dict[str, Any]:
        index = len(produced)
        produced.append(index)
        return {"type": "http.request", "body": chunks[index], "more_body": index < len(chunks) - 1}

    async def inner(scope: Any, receive_: Any, send: Any) -> None:
        while True:
            message = await receive_()
            seen_when_received.append((message["body"], len(produced)))
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = RequestContextMiddleware(inner, registry=CollectorRegistry())
    scope = {"type": "http", "method": "POST", "path": "/v1/enroll", "headers": [], "client": None}
    asyncio.run(middleware(scope, receive, send))
    assert seen_when_received == [(chunks[0], 1), (chunks[1], 2), (chunks[2], 3)]
    assert dict(sent[0]["headers"])[b"x-request-id"]


# --- settings errors ---------------------------------------------------------------------------------


def test_bad_port_is_one_readable_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_PORT", "eighty")
    with pytest.raises(InvalidSettings) as caught:
        load_settings()
    message = str(caught.value)
    assert message.splitlines() == [
        "VOXGATE_PORT=eighty: Input should be a valid integer, unable to parse string as an integer"
    ]


def test_several_errors_one_line_each_and_no_secret_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_PORT", "70000")
    monkeypatch.setenv("VOXGATE_LOG_LEVEL", "LOUD")
    with pytest.raises(InvalidSettings) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert any(line.startswith("VOXGATE_PORT=70000: ") for line in lines)
    assert any(line.startswith("VOXGATE_LOG_LEVEL=LOUD: ") for line in lines)
    assert len(lines) == 2

    from pydantic import ValidationError

    monkeypatch.delenv("VOXGATE_PORT")
    monkeypatch.delenv("VOXGATE_LOG_LEVEL")
    with pytest.raises(ValidationError) as invalid:
        Settings(redis_url=123)  # type: ignore[arg-type]
    formatted = format_validation_error(invalid.value)
    assert formatted.startswith("VOXGATE_REDIS_URL: ")
    assert "123" not in formatted


def test_cross_field_error_is_readable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_MIN_SPEECH_SECONDS", "5")
    monkeypatch.setenv("VOXGATE_ENROLL_SPEECH_SECONDS", "2")
    with pytest.raises(InvalidSettings) as caught:
        load_settings()
    assert str(caught.value) == "settings: enroll_speech_seconds must be >= min_speech_seconds"


def test_voxgate_serve_with_bad_port_exits_with_a_message_not_a_traceback() -> None:
    env = {**os.environ, "VOXGATE_PORT": "not-a-port", "VOXGATE_LOG_JSON": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "VOXGATE_PORT=not-a-port: Input should be a valid integer" in result.stderr


def test_a_start_up_refusal_is_logged_as_one_line_and_a_bug_keeps_its_traceback(
    log_stream: io.StringIO,
) -> None:
    # uvicorn logs the traceback Starlette formatted for a failed lifespan start-up as its message.
    def failed_start_up(exc: Exception) -> None:
        try:
            raise exc
        except Exception:
            import traceback

            logging.getLogger("uvicorn.error").error(traceback.format_exc())

    from app.store.vault import VaultError

    failed_start_up(VaultError("VOXGATE_VOICEPRINT_KEY (fingerprint ab) is not the key"))
    failed_start_up(KeyError("a bug"))
    refusal, bug = _lines(log_stream)
    assert refusal["msg"] == "start-up refused: VOXGATE_VOICEPRINT_KEY (fingerprint ab) is not the key"
    assert bug["msg"].startswith("Traceback")
    assert "KeyError: 'a bug'" in bug["msg"]
    # Every name the filter knows is a real exception class (a rename must not silently undo this).
    for path in STARTUP_REFUSALS:
        module, _, name = path.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), name), Exception), path
