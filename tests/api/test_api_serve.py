"""`voxgate serve` end to end (a real process, uvicorn and an embedded redis-server child) and the
redis-server supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis

from app.store.embedded_redis import RedisSupervisor, free_port
from tests.support.data import REPO_ROOT, speech_files, wav_bytes, wav_name
from tests.support.models import build_tiny_model
from tests.support.redis_server import RedisProcess

pytestmark = pytest.mark.slow


def test_supervisor_restarts_a_dead_redis_and_persists_on_stop(tmp_path: Path) -> None:
    sup = RedisSupervisor(tmp_path / "redis")
    url = sup.start()
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.set("k", "v1")
        first_pid = sup.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        for _ in range(400):  # the watcher polls every 0.5 s
            if sup.restarts >= 1:
                break
            time.sleep(0.05)
        assert sup.restarts == 1
        assert sup.pid != first_pid
        assert client.ping()
        client.set("k", "v2")
        client.close()
    finally:
        sup.stop()
    assert sup._proc is not None
    assert sup._proc.poll() is not None
    assert (tmp_path / "redis" / "appendonlydir").is_dir()
    # a clean stop flushed the append-only file: a new server on the same data sees the write
    again = RedisSupervisor(tmp_path / "redis")
    client = redis.Redis.from_url(again.start(), socket_timeout=2)
    try:
        assert client.get("k") == b"v2"
    finally:
        client.close()
        again.stop()


def _post_multipart(url: str, fields: dict[str, str], files: list[tuple[str, Path]]) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, path in files:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{wav_name(path)}"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode()
            + wav_bytes(path)
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _start_serve(
    model: Path, data_dir: Path, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "VOXGATE_REDIS_URL")}
    env.update({"VOXGATE_DATA_DIR": str(data_dir), "VOXGATE_WARMUP": "false", "VOXGATE_LOG_JSON": "true"})
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--model", str(model)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            status, body = _get(f"http://127.0.0.1:{port}/readyz")
            if status == 200 and body["ready"]:
                return proc
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve did not become ready")


def _stop_serve(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    return err.decode()


def test_serve_with_embedded_redis_keeps_data_across_restarts(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model")
    data_dir = tmp_path / "data"
    port = free_port()
    wav = speech_files()["vctk_p225"][0]
    proc = _start_serve(model, data_dir, port)
    try:
        status, body = _post_multipart(
            f"http://127.0.0.1:{port}/enroll", {"speaker_id": "zoe"}, [("audio", wav)]
        )
        assert status == 200, body
    finally:
        logs = _stop_serve(proc)
    # JSON logs on stderr, and the embedded redis-server was shut down with the service
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(line["msg"] == "embedded redis-server stopped" for line in lines)
    redis_log = (data_dir / "redis" / "redis.log").read_text()
    assert "ready to exit" in redis_log.lower()

    proc = _start_serve(model, data_dir, port)
    try:
        status, body = _get(f"http://127.0.0.1:{port}/speakers/zoe")
        assert status == 200, body
        assert body["utterances"] == 1
    finally:
        _stop_serve(proc)


def test_serve_uses_redis_url_when_given(tmp_path: Path, redis_server: RedisProcess) -> None:
    model = build_tiny_model(tmp_path / "model")
    namespace = f"serve-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {"REDIS_URL": redis_server.url, "VOXGATE_REDIS_NAMESPACE": namespace}
    proc = _start_serve(model, tmp_path / "data", port, env)
    try:
        wav = speech_files()["vctk_p226"][0]
        status, body = _post_multipart(
            f"http://127.0.0.1:{port}/enroll", {"speaker_id": "yan"}, [("audio", wav)]
        )
        assert status == 200, body
    finally:
        _stop_serve(proc)
    assert not (tmp_path / "data" / "redis").exists()  # no embedded server was started
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert [k for k in client.scan_iter(match=f"{namespace}:*:spk:yan")]
    finally:
        client.close()
