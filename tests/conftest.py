"""Shared fixtures: where the shared data lives, and a real redis-server on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
SPEECH_DIR = SHARED / "data" / "speech"
NEMO_FIXTURES = SHARED / "fixtures" / "nemo"
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "default"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    if not SPEECH_DIR.is_dir():
        pytest.fail(f"shared speech data missing at {SPEECH_DIR}")
    return SPEECH_DIR


@pytest.fixture(scope="session")
def nemo_fixtures() -> Path:
    if not NEMO_FIXTURES.is_dir():
        pytest.fail(f"NeMo fixtures missing at {NEMO_FIXTURES}")
    return NEMO_FIXTURES


class RedisProcess:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc
        self.url = f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private redis-server for the whole test session (tests use their own key prefixes)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not installed (scripts/setup.sh installs it)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield RedisProcess(port, proc)
    proc.terminate()
    proc.wait(timeout=10)
