"""Fixtures only (helpers live in tests/support/): the data directories, a real redis-server on a
free port, and the check that the repository's test data is all there before anything is collected."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.data import (
    INT8_EXPORT_SPEAKERS,
    INT8_RECORDINGS_PER_SPEAKER,
    NEMO_FIXTURES,
    SPEECH_DIR,
    check_test_data,
    missing_data_message,
    speaker_folders,
)
from tests.support.models import build_tiny_model
from tests.support.redis_server import RedisProcess, free_port


def pytest_sessionstart(session: pytest.Session) -> None:
    """One clear message instead of a collection error in every module that reads the data.

    A UsageError stops the run before collection: pytest prints it once, as ``ERROR: ...``, and exits 4.
    """
    problems = check_test_data()
    if problems:
        raise pytest.UsageError(missing_data_message(problems))


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    return SPEECH_DIR


@pytest.fixture(scope="session")
def nemo_fixtures() -> Path:
    return NEMO_FIXTURES


@pytest.fixture(scope="session")
def titanet_small_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TitaNet-S, random weights (seed 0), exported in float32 (about 10 s)."""
    from app.export.nemo_export import export_random_init

    out = tmp_path_factory.mktemp("titanet-small") / "fp32"
    export_random_init("titanet-small", out, precision="fp32", name=None)
    return out


@pytest.fixture(scope="session")
def titanet_small_int8(tmp_path_factory: pytest.TempPathFactory, titanet_small_fp32: Path) -> Path:
    """Its int8 bundle as ``voxgate export --precision int8`` writes it, from the speakers of
    ``INT8_EXPORT_SPEAKERS`` (about 12 s)."""
    from app.export.quantize import load_recordings, quantize_bundle, split_calibration

    root = tmp_path_factory.mktemp("titanet-small-int8")
    audio = speaker_folders(INT8_EXPORT_SPEAKERS, root / "calibration", INT8_RECORDINGS_PER_SPEAKER)
    quantize_bundle(titanet_small_fp32, root / "int8", split_calibration(load_recordings(audio)))
    return root / "int8"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private redis-server for the whole test session (tests use their own key prefixes)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not installed (`make test` installs it)")
    port = free_port()
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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real ONNX graph (``build_tiny_model``: default threshold 0.5), one per test module."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))
