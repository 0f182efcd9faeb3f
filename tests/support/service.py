"""A real ``voxgate serve`` process on a free loopback port, and the ``voxgate`` command run as a user
would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.support.data import REPO_ROOT
from tests.support.redis_server import free_port


# --- a real `voxgate serve` process ------------------------------------------------------------------------
class LiveService:
    """``voxgate serve`` in a subprocess on a free loopback port, with settings given as environment
    variables (``settings={"max_queue_wait_s": "0.5"}`` -> ``VOXGATE_MAX_QUEUE_WAIT_S=0.5``). Started by
    ``with``; waits for ``/readyz``; stopped (SIGTERM, then SIGKILL) on exit. ``log`` is its output."""

    def __init__(
        self,
        model_dir: Path,
        redis_url: str,
        workdir: Path,
        settings: dict[str, str] | None = None,
        ready_timeout_s: float = 240.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "serve.log"
        self.ready_timeout_s = ready_timeout_s
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "VOXGATE_MODEL_DIR": str(model_dir),
            "VOXGATE_PORT": str(self.port),
            "VOXGATE_REDIS_NAMESPACE": f"live-{uuid.uuid4().hex[:8]}",
            "VOXGATE_PROVIDERS": "cpu",
            "VOXGATE_DATA_DIR": str(workdir / "data"),
            "VOXGATE_LOG_LEVEL": "WARNING",
        }
        for name, value in (settings or {}).items():
            self.env[f"VOXGATE_{name.upper()}"] = value
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> LiveService:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"voxgate serve exited {self.proc.returncode}:\n{self.log[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"voxgate serve never became ready:\n{self.log[-3000:]}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait; the exit code (SIGKILL after ``timeout_s``)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def multipart_body(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type (files: field, filename, bytes)."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def run_voxgate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The ``voxgate`` command line, run in the repository with ``env`` on top of this one's."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
