"""An embedded redis-server child for ``voxgate serve`` without ``REDIS_URL``.

Data lives under ``data_dir`` with append-only persistence (fsync every second), the server listens
only on 127.0.0.1 on a free port, a watcher thread restarts it (same port, same data) if it dies, and
``stop()`` shuts it down cleanly (SHUTDOWN flushes the AOF) before the service exits.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
_WATCH_INTERVAL_S = 0.5
_MAX_BACKOFF_S = 10.0
_PR_SET_PDEATHSIG = 1


# Written beside the data while the server runs: where admin commands (`voxgate keys`, `voxgate
# audit`) find the embedded server of a `voxgate serve` without REDIS_URL.
ENDPOINT_FILE = "endpoint"


class RedisSupervisorError(RuntimeError):
    pass


def running_endpoint(data_dir: Path) -> str | None:
    """The URL of the embedded redis-server serving ``data_dir``, when one answers."""
    path = data_dir.resolve() / ENDPOINT_FILE
    try:
        url = path.read_text().strip()
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    except (OSError, ValueError, IndexError):
        return None
    return url if _ping("127.0.0.1", port) else None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the service dies without stopping us (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisSupervisor:
    def __init__(self, data_dir: Path, *, binary: str | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.binary = binary or shutil.which("redis-server")
        if self.binary is None:
            raise RedisSupervisorError(
                "redis-server not found on PATH: install it, or set REDIS_URL to use an existing Redis"
            )
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _command(self) -> list[str]:
        assert self.binary is not None
        return [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Own session: a Ctrl-C to the terminal's process group must not kill Redis before the service
        # has drained its requests; stop() shuts it down last.
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RedisSupervisorError(
                    f"redis-server exited with {self._proc.returncode}; see {self.data_dir / 'redis.log'}"
                )
            if _ping(self.host, self.port):
                return
            time.sleep(0.05)
        self._proc.kill()
        self._proc.wait()
        raise RedisSupervisorError(f"redis-server did not answer within {START_TIMEOUT_S:g} s")

    def start(self) -> str:
        """Start the server and its watcher; returns the URL to connect to."""
        with self._lock:
            self._spawn()
        (self.data_dir / ENDPOINT_FILE).write_text(self.url + "\n")
        log.info("embedded redis-server started", extra={"port": self.port, "data_dir": str(self.data_dir)})
        self._watcher = threading.Thread(target=self._watch, name="redis-supervisor", daemon=True)
        self._watcher.start()
        return self.url

    def _watch(self) -> None:
        backoff = 0.5
        while not self._stopping.wait(_WATCH_INTERVAL_S):
            with self._lock:
                proc = self._proc
                if proc is None or proc.poll() is None or self._stopping.is_set():
                    continue
                log.error("embedded redis-server died (exit %s); restarting", proc.returncode)
                try:
                    self._spawn()
                    self.restarts += 1
                    backoff = 0.5
                    log.info("embedded redis-server restarted", extra={"restarts": self.restarts})
                except RedisSupervisorError as exc:
                    log.error("restarting redis-server failed: %s", exc)
            if self._proc is not None and self._proc.poll() is not None:
                self._stopping.wait(backoff)
                backoff = min(_MAX_BACKOFF_S, backoff * 2)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        (self.data_dir / ENDPOINT_FILE).unlink(missing_ok=True)
        if self._watcher is not None:
            self._watcher.join(timeout=timeout_s)
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            proc.terminate()  # SIGTERM = SHUTDOWN: flushes the append-only file
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("embedded redis-server stopped")
