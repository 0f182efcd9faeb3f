"""Connection limits, read timeouts and the SIGTERM drain of ``voxgate serve`` (app/server/protocol.py).

Each test talks to a real ``voxgate serve`` process (uvicorn, the tiny model, an embedded
redis-server) over real loopback sockets, with small limits so that every timeout is about a second.
Nothing asserts speed: the timeouts are settings, and the tests wait for them with generous patience.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from app.server.protocol import (
    ACCEPT_BURSTS,
    ConnectionGuard,
    ConnectionLimits,
    GuardedServer,
    accept_batch,
    fit_to_fd_limit,
)
from tests.support.data import REPO_ROOT, speech_files
from tests.support.redis_server import free_port

pytestmark = pytest.mark.slow

PATIENCE_S = 30.0  # how long a test waits for what its small settings make take about a second

MAX_CONNECTIONS = 20
HEADER_TIMEOUT_S = 3.0  # longer than the trickle's 1 s between bytes: a timer restarted per byte never fires
BODY_IDLE_TIMEOUT_S = 1.0
KEEPALIVE_TIMEOUT_S = 1.0
BODY_MIN_RATE = 100  # bytes/s

LIMITED_ENV = {
    "VOXGATE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "VOXGATE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "VOXGATE_BODY_IDLE_TIMEOUT_S": str(BODY_IDLE_TIMEOUT_S),
    "VOXGATE_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_TIMEOUT_S),
    "VOXGATE_BODY_MIN_RATE_BYTES_S": str(BODY_MIN_RATE),
}


# --- a voxgate serve process -----------------------------------------------------------------------------


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    data_dir: Path

    def log_lines(self) -> list[dict[str, Any]]:
        text = self.log_path.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def get(self, path: str) -> tuple[int, bytes]:
        """A GET on a new connection (Connection: close)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=PATIENCE_S) as response:
            return response.status, response.read()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=PATIENCE_S)
        return sock

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=90)


def _start_serve(model: Path, workdir: Path, env: dict[str, str]) -> Serve:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "serve.log"  # a file, not a pipe: nothing the server writes can block it
    full_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "VOXGATE_REDIS_URL")}
    full_env.update(
        {"VOXGATE_DATA_DIR": str(workdir / "data"), "VOXGATE_WARMUP": "false", "VOXGATE_LOG_JSON": "true"}
    )
    full_env.update(env)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--model", str(model)],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    serve = Serve(proc, port, log_path, workdir / "data")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log_path.read_text()}")
        try:
            status, _ = serve.get("/readyz")
            if status == 200:
                return serve
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve did not become ready")


@pytest.fixture(scope="module")
def limited(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One server with small limits, shared by the tests that do not stop it."""
    serve = _start_serve(tiny_model, tmp_path_factory.mktemp("limited"), LIMITED_ENV)
    try:
        yield serve
    finally:
        assert serve.stop() == 0, serve.log_path.read_text()


# --- raw HTTP over sockets --------------------------------------------------------------------------------


def _read_until_closed(sock: socket.socket, patience_s: float = PATIENCE_S) -> tuple[bytes, str]:
    """Everything the server sends until it closes: (bytes, "eof" | "reset")."""
    sock.settimeout(patience_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open for {patience_s} s: {data!r}"
            ) from None
        if not chunk:
            return data, "eof"
        data += chunk


def _parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _read_one_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length, leaving the connection open."""
    sock.settimeout(PATIENCE_S)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    status, headers, body = _parse_response(data)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        body += chunk
    return status, headers, body


def _problem_code(body: bytes) -> str:
    return str(json.loads(body)["code"])


def _stalled_upload_head(content_length: int = 100_000) -> bytes:
    return (
        "POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=voxgate-test\r\n"
        f"Content-Length: {content_length}\r\n\r\n--voxgate-test\r\n"
    ).encode()


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


# --- limits ----------------------------------------------------------------------------------------------


def test_limit_fits_the_file_descriptor_limit() -> None:
    wanted = ConnectionLimits(2048, 10.0, 10.0, 75.0, 2.0, accept_batch=accept_batch(2048))
    assert wanted.accept_batch == 512
    assert fit_to_fd_limit(wanted, 20_000) == wanted
    for fd_limit in (1024, 2048):
        fitted = fit_to_fd_limit(wanted, fd_limit)
        assert fitted.max_connections < wanted.max_connections
        assert 1 <= fitted.accept_batch <= fitted.max_connections // 4
        assert fitted.max_connections + ACCEPT_BURSTS * fitted.accept_batch <= fd_limit - 256


def test_header_trickle_gets_408_at_the_header_timeout(limited: Serve) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: a-very-slow-client\r\n\r\n"
    with limited.connect() as sock:
        for sent in range(len(request)):
            sock.sendall(request[sent : sent + 1])
            readable, _, _ = select.select([sock], [], [], 1.0)  # one byte a second
            if readable:
                break
        else:
            pytest.fail("the whole request was trickled in, one byte a second, without a timeout")
        raw, how = _read_until_closed(sock)
    status, headers, body = _parse_response(raw)
    assert status == 408, raw
    assert headers["connection"] == "close"
    assert headers["x-request-id"]
    assert _problem_code(body) == "request_timeout"
    assert how == "eof"
    # Cut off long before the last byte: the bytes, each within the timeout of the one before, did not
    # restart the timer (as uvicorn's keep-alive timer is restarted by every byte).
    assert 1 <= sent < len(request) - 1


def test_connection_that_sends_nothing_is_closed_without_an_answer(limited: Serve) -> None:
    with limited.connect() as sock:
        raw, how = _read_until_closed(sock)
    assert (raw, how) == (b"", "eof")


def test_stalled_request_body_gets_408_and_the_app_sees_a_disconnect(limited: Serve) -> None:
    with limited.connect() as sock:
        sock.sendall(_stalled_upload_head())  # the headers, then nothing of the body
        raw, how = _read_until_closed(sock)
    status, headers, body = _parse_response(raw)
    assert status == 408, raw
    assert headers["connection"] == "close"
    assert _problem_code(body) == "request_timeout"
    assert how == "eof"
    # The app saw the client go (its request ends as cancelled, not as a server error) and said so once.
    request_id = headers["x-request-id"]
    deadline = time.monotonic() + PATIENCE_S
    while not (lines := [line for line in limited.log_lines() if line.get("request_id") == request_id]):
        assert time.monotonic() < deadline, "no access line for the timed-out request"
        time.sleep(0.1)
    assert [line["status"] for line in lines if line["logger"] == "voxgate.access"] == [499]
    assert not [line for line in limited.log_lines() if line["level"] == "ERROR"]


def test_request_body_trickled_below_the_minimum_rate_gets_408(limited: Serve) -> None:
    with limited.connect() as sock:
        sock.sendall(_stalled_upload_head())
        deadline = time.monotonic() + PATIENCE_S
        # A byte every quarter of the body idle timeout: never idle, but far below the minimum rate.
        while not select.select([sock], [], [], BODY_IDLE_TIMEOUT_S / 4)[0]:
            assert time.monotonic() < deadline, "a body trickled at 4 bytes/s held its connection"
            sock.sendall(b"x")
        raw, how = _read_until_closed(sock)
    status, headers, body = _parse_response(raw)
    assert status == 408, raw
    assert headers["connection"] == "close"
    assert _problem_code(body) == "request_timeout"
    assert "bytes/s" in json.loads(body)["detail"]
    assert how in ("eof", "reset")  # a trickled byte may reach the socket as it closes


def test_idle_keepalive_connection_is_closed_after_the_keepalive_timeout(limited: Serve) -> None:
    with limited.connect() as sock:
        for _ in range(3):  # a kept-alive connection serves several requests
            status, headers, _ = _read_one_response_after(sock, HEALTHZ)
            assert status == 200
            assert headers.get("connection") != "close"
        raw, how = _read_until_closed(sock)  # then, idle, it is closed without a word
    assert (raw, how) == (b"", "eof")


def _read_one_response_after(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    sock.sendall(request)
    return _read_one_response(sock)


class HoldApp:
    """An ASGI app whose requests all wait until ``release`` is set (their connections stay busy)."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.arrived += 1
        while not self.release.is_set():  # noqa: ASYNC110  # set from the test's thread
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def _in_process_server(app: Any, limits: ConnectionLimits) -> Iterator[tuple[int, ConnectionGuard]]:
    """uvicorn with the guarded protocol, in a thread of this process, on a free loopback port."""
    guard = ConnectionGuard(limits)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=guard.protocol_class(),
        backlog=limits.accept_batch,
        lifespan="off",
        log_config=None,
    )
    server = GuardedServer(config, guard)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + PATIENCE_S
    while not server.started:
        assert thread.is_alive(), "the in-process server stopped"
        assert time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.01)
    try:
        yield port, guard
    finally:
        server.should_exit = True
        thread.join(timeout=PATIENCE_S)


def test_at_the_limit_a_newcomer_evicts_the_longest_idle_connection_or_gets_503_when_none_is() -> None:
    app = HoldApp()
    limits = ConnectionLimits(4, PATIENCE_S, PATIENCE_S, PATIENCE_S, 0.0, accept_batch=1)
    hold = b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with _in_process_server(app, limits) as (port, guard):
        clients = [socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) for _ in range(4)]
        try:
            for sock in clients:
                sock.sendall(hold)
            deadline = time.monotonic() + PATIENCE_S
            while app.arrived < len(clients):  # every connection has a request in progress
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as newcomer:
                raw, how = _read_until_closed(newcomer)
            status, headers, body = _parse_response(raw)
            assert status == 503, raw
            assert headers["connection"] == "close"
            assert headers["retry-after"] == "1"
            assert _problem_code(body) == "connection_limit"
            assert how == "eof"
            assert guard.dropped["refused"] == 1

            app.release.set()
            for sock in clients:
                assert _read_one_response(sock)[0] == 200
            for sock in clients[1:]:  # clients[0] is now the connection idle longest
                assert _read_one_response_after(sock, hold)[0] == 200
            with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as newcomer:
                assert _read_one_response_after(newcomer, hold)[0] == 200
            assert _read_until_closed(clients[0]) == (b"", "eof")
            assert guard.dropped["evicted"] == 1
            for sock in clients[1:]:  # the others are still open and serve requests
                assert _read_one_response_after(sock, hold)[0] == 200
        finally:
            for sock in clients:
                sock.close()


def test_a_client_waiting_for_100_continue_is_not_idle() -> None:
    app = HoldApp()
    body_idle_s = 0.5
    limits = ConnectionLimits(4, PATIENCE_S, body_idle_s, PATIENCE_S, 0.0, accept_batch=1)
    with (
        _in_process_server(app, limits) as (port, guard),
        socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as sock,
    ):
        sock.sendall(
            b"POST /hold HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
        )
        deadline = time.monotonic() + PATIENCE_S
        while app.arrived < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The app has not asked for the body, so no 100 Continue went out: several body idle timeouts
        # pass without the client being cut off for not sending it.
        assert not select.select([sock], [], [], 4 * body_idle_s)[0]
        app.release.set()
        status, _, body = _read_one_response(sock)
        assert (status, body) == (200, b"ok")
        assert guard.dropped["body_timeout"] == 0


def test_idle_connection_flood_leaves_healthz_answering_with_bounded_fds_and_logs(limited: Serve) -> None:
    limits = Path(f"/proc/{limited.proc.pid}/limits").read_text()
    soft, hard = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3:5]
    assert soft == hard  # serve raised its soft open-file limit to the hard one

    flood = 10 * MAX_CONNECTIONS
    batch = accept_batch(MAX_CONNECTIONS)
    baseline = limited.open_fds()
    lines_before = len(limited.log_lines())
    socks: list[socket.socket] = []
    peak = baseline
    healthz_answers = 0
    try:
        for i in range(flood):
            socks.append(limited.connect())
            peak = max(peak, limited.open_fds())
            if i % MAX_CONNECTIONS == MAX_CONNECTIONS - 1:
                assert limited.get("/healthz")[0] == 200
                healthz_answers += 1
        assert limited.get("/healthz")[0] == 200
        # Sockets beyond the open connections are the last accept bursts, being closed.
        assert peak <= baseline + MAX_CONNECTIONS + ACCEPT_BURSTS * batch + 8, (baseline, peak)
        deadline = time.monotonic() + PATIENCE_S
        while limited.open_fds() > baseline + MAX_CONNECTIONS + 2:
            assert time.monotonic() < deadline, (baseline, limited.open_fds())
            time.sleep(0.1)
        # Every flood socket was closed by the server: evicted, or cut off by the header timeout.
        for sock in socks:
            assert _read_until_closed(sock) == (b"", "eof")
    finally:
        for sock in socks:
            sock.close()
    status, metrics = limited.get("/metrics")
    assert status == 200
    evicted = next(
        line
        for line in metrics.decode().splitlines()
        if line.startswith('voxgate_http_connections_dropped_total{reason="evicted"}')
    )
    assert float(evicted.split()[-1]) >= flood - MAX_CONNECTIONS - healthz_answers
    # The log: an access line per /healthz and a summary line every few seconds, not a line per socket.
    time.sleep(6.0)  # the summary interval (5 s): the last summary is written
    new_lines = limited.log_lines()[lines_before:]
    other = [line for line in new_lines if line["logger"] != "voxgate.access"]
    assert len(other) <= 6, other
    summaries = [line for line in other if line["msg"].startswith("HTTP connections dropped")]
    assert sum(line.get("evicted", 0) + line.get("header_timeout", 0) for line in summaries) >= flood


# --- SIGTERM under keep-alive load ---------------------------------------------------------------------


@dataclass
class KeepAliveClient:
    """Loops POST /verify on one kept-alive connection, reconnecting when told Connection: close,
    until a connect is refused (the server is gone)."""

    port: int
    body: bytes
    content_type: str
    responses: list[tuple[float, int, str | None]] = field(
        default_factory=list
    )  # sent at, status, Connection
    failures: list[str] = field(default_factory=list)
    refused: bool = False

    def run(self, stop: threading.Event) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PATIENCE_S)
        while not stop.is_set():
            fresh = conn.sock is None
            sent_at = time.monotonic()
            try:
                conn.request("POST", "/verify", body=self.body, headers={"Content-Type": self.content_type})
                response = conn.getresponse()
                response.read()
            except ConnectionRefusedError:
                if fresh:
                    self.refused = True
                    return
                raise
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc} (fresh connection: {fresh})")
                conn.close()
                continue
            self.responses.append((sent_at, response.status, response.getheader("connection")))
            if response.will_close:
                conn.close()  # the next request opens a new connection
        conn.close()


def _verify_pair_body() -> tuple[bytes, str]:
    files = speech_files()
    probe, reference = files["librispeech_533"][0], files["librispeech_1688"][0]
    boundary = uuid.uuid4().hex
    body = b""
    for name, path in (("audio", probe), ("reference", reference)):
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
                "Content-Type: audio/flac\r\n\r\n"
            ).encode()
            + path.read_bytes()
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_sigterm_under_keepalive_load_answers_every_received_request_then_exits_0(
    tiny_model: Path, tmp_path: Path
) -> None:
    serve = _start_serve(tiny_model, tmp_path, {})
    body, content_type = _verify_pair_body()
    clients = [KeepAliveClient(serve.port, body, content_type) for _ in range(16)]
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + PATIENCE_S
        while (
            min(len(c.responses) for c in clients) < 3
        ):  # every client is looping on a kept-alive connection
            assert time.monotonic() < deadline, [len(c.responses) for c in clients]
            assert not any(c.failures for c in clients), [c.failures for c in clients]
            time.sleep(0.05)
        signalled_at = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        returncode = serve.proc.wait(timeout=90)
        for thread in threads:
            thread.join(timeout=PATIENCE_S)
    finally:
        stop.set()
        if serve.proc.poll() is None:
            serve.proc.kill()
    log = serve.log_path.read_text()
    assert returncode == 0, log
    assert [c.failures for c in clients] == [[]] * len(clients)  # no reset, no request left unanswered
    for client in clients:
        assert client.refused  # it kept going until the server was gone
        assert client.responses[-1][2] == "close"  # told to close before the server went
        for sent_at, status, connection in client.responses:
            assert status in (200, 429)  # answered (429: the admission control's refusal under load)
            if sent_at > signalled_at:
                assert connection == "close"
    assert sum(1 for c in clients for r in c.responses if r[1] == 200) >= 3 * len(clients)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert not [line for line in lines if line["level"] == "ERROR"]
    assert any(line["msg"] == "draining HTTP connections" for line in lines)
    # After the connections, the app's lifespan ended and the embedded redis-server was stopped cleanly.
    assert any(line["msg"] == "embedded redis-server stopped" for line in lines)
    assert "ready to exit" in (serve.data_dir / "redis" / "redis.log").read_text().lower()


def test_an_early_answer_does_not_reset_the_upload_it_answers(limited: Serve) -> None:
    """413 from the headers alone (the declared body is over the limit), to a client that asked for
    Connection: close and goes on sending: the server reads and drops the upload before closing, so the
    client's writes succeed and it reads the answer, instead of a reset under its upload."""
    with limited.connect() as sock:
        sock.sendall(
            b"POST /enroll HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 900000000\r\n\r\n"
        )
        chunk = b"\0" * 65536
        for _ in range(128):  # 8 MB after the server has answered and closed its side
            sock.sendall(chunk)
        status, headers, body = _read_one_response(sock)
    assert status == 413
    assert _problem_code(body) == "audio_too_large"
    assert headers.get("connection") == "close"


def test_a_request_with_both_content_length_and_transfer_encoding_closes_the_connection(
    limited: Serve,
) -> None:
    """RFC 9112 §6.1: the body is read by Transfer-Encoding, and the connection closes after the answer.
    A proxy that framed the body by Content-Length would otherwise have passed the bytes after the
    chunked body through as its own body, and here they would run as a second, unseen request."""
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    with limited.connect() as sock:
        sock.sendall(
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        status, headers, _ = _read_one_response(sock)
        assert status == 405  # the first request, answered
        assert headers.get("connection") == "close"
        sock.settimeout(5)
        assert sock.recv(65536) == b"", "the smuggled request must not be answered"
