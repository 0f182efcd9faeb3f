"""Every refusal the API makes, with real bad inputs, through the full app (real engine on a small real
ONNX graph, real Redis). Each refused request must leave the stored data untouched."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from starlette.requests import Request

from app.api.factory import create_app
from app.api.multipart import read_multipart
from app.core.errors import AudioTooLarge
from app.core.settings import Settings
from tests.support.data import encode, short_speech, speech_files, wav_bytes, wav_part
from tests.support.redis_server import OwnRedis, RedisProcess, redis_snapshot, settings_for

MAX_UPLOAD = 600_000  # bytes: a few seconds of 16-bit audio fit, a minute does not
MAX_SECONDS = 20.0

SPEECH = speech_files()
WAV_A = SPEECH["vctk_p225"][0]
WAV_B = SPEECH["vctk_p226"][0]


@pytest.fixture(scope="module")
def settings(redis_server: RedisProcess, tiny_model: Path) -> Settings:
    return settings_for(
        redis_server.url, tiny_model, max_upload_bytes=MAX_UPLOAD, max_audio_seconds=MAX_SECONDS
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def enrolled(client: TestClient) -> str:
    """One speaker enrolled before the refusals run (so 'unchanged' has something to protect)."""
    r = client.post(
        "/enroll",
        data={"speaker_id": "known", "metadata": '{"team": "qa"}'},
        files=[wav_part(p) for p in SPEECH["vctk_p225"][:2]],
    )
    assert r.status_code == 200, r.text
    return "known"


def wav_file(
    data: bytes, name: str = "x.wav", ctype: str = "audio/wav"
) -> tuple[str, tuple[str, bytes, str]]:
    return ("audio", (name, data, ctype))


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"] == f"urn:voxgate:problem:{code}"
    assert body["title"]
    assert body["detail"]
    assert body["instance"].startswith("/")
    assert body["request_id"] == r.headers["x-request-id"]
    return body


# --- bad audio, on every endpoint that takes audio ------------------------------------------------
def _silence() -> bytes:
    return encode(np.zeros(16000 * 3, dtype=np.float32))


def _too_long() -> bytes:
    # 25 s of real speech, 8-bit so the file stays under the upload limit
    data, _ = sf.read(WAV_A, dtype="float32")
    return encode(np.tile(data, int(np.ceil(25 * 16000 / data.size)))[: 25 * 16000], subtype="PCM_U8")


BAD_AUDIO: dict[str, tuple[bytes, str, int, str]] = {
    "zero_bytes": (b"", "audio/wav", 400, "invalid_audio"),
    "truncated_wav": (wav_bytes(WAV_A)[:30000], "audio/wav", 400, "invalid_audio"),
    "header_only_wav": (wav_bytes(WAV_A)[:44], "audio/wav", 400, "invalid_audio"),
    "text_named_wav": (b"hello, I am a text file\n" * 50, "audio/wav", 415, "unsupported_media_type"),
    "declared_text": (wav_bytes(WAV_A), "text/plain", 415, "unsupported_media_type"),
    "silence": (_silence(), "audio/wav", 422, "no_speech"),
    "speech_0_3s": (encode(short_speech(0.3)), "audio/wav", 422, "not_enough_speech"),
    "too_long": (_too_long(), "audio/wav", 422, "audio_too_long"),
}


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
@pytest.mark.parametrize("endpoint", ["/enroll", "/verify", "/identify"])
def test_bad_audio_is_refused_and_nothing_changes(
    client: TestClient, settings: Settings, enrolled: str, case: str, endpoint: str
) -> None:
    data, ctype, status, code = BAD_AUDIO[case]
    before = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
    form = {"speaker_id": "newcomer" if endpoint == "/enroll" else enrolled}
    if endpoint == "/identify":
        form = {}
    r = client.post(endpoint, data=form, files=[wav_file(data, "bad.wav", ctype)])
    body = assert_problem(r, status, code)
    assert body["file"] == "bad.wav"
    assert redis_snapshot(settings.redis_url or "", settings.redis_namespace) == before


def test_one_bad_recording_refuses_the_whole_enrollment(
    client: TestClient, settings: Settings, enrolled: str
) -> None:
    before = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
    r = client.post(
        "/enroll",
        data={"speaker_id": enrolled},
        files=[
            wav_file(wav_bytes(WAV_A), "good.wav"),
            wav_file(_silence(), "silent.wav"),
        ],
    )
    body = assert_problem(r, 422, "no_speech")
    assert body["file"] == "silent.wav"
    assert redis_snapshot(settings.redis_url or "", settings.redis_namespace) == before


def test_oversized_upload_is_413(client: TestClient, settings: Settings, enrolled: str) -> None:
    before = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
    big = encode(np.zeros(16000 * 30, dtype=np.float32), subtype="PCM_16")  # 960 kB > 600 kB
    for endpoint in ("/enroll", "/verify", "/identify"):
        r = client.post(endpoint, data={"speaker_id": enrolled}, files=[wav_file(big)])
        body = assert_problem(r, 413, "audio_too_large")
        assert body["max_upload_bytes"] == MAX_UPLOAD
    assert redis_snapshot(settings.redis_url or "", settings.redis_namespace) == before


def test_oversized_upload_is_refused_while_streaming() -> None:
    """The reader stops at the limit: most of a large body is never received."""
    boundary = "xyzzy"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    chunk = b"\0" * 65536
    total_chunks = 200  # 13 MB
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        body = head if received == 1 else chunk
        return {"type": "http.request", "body": body, "more_body": received < total_chunks}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/enroll",
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
    }

    async def run() -> None:
        await read_multipart(Request(scope, receive), max_file_bytes=1_000_000, max_files=1)

    with pytest.raises(AudioTooLarge):
        asyncio.run(run())
    assert received <= 1 + 1_000_000 // 65536 + 1


def test_declared_content_length_over_the_limit_is_refused_before_reading(client: TestClient) -> None:
    r = client.post(
        "/identify",
        content=b"--b\r\n",
        headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(10**9)},
    )
    assert_problem(r, 413, "audio_too_large")


# --- bad ids, unknown speakers, malformed requests -------------------------------------------------
@pytest.mark.parametrize("bad_id", ["has space", "a:b", "-x", "x" * 129])
def test_bad_speaker_id(client: TestClient, settings: Settings, enrolled: str, bad_id: str) -> None:
    before = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
    r = client.post("/enroll", data={"speaker_id": bad_id}, files=[wav_file(wav_bytes(WAV_A))])
    assert_problem(r, 422, "invalid_speaker_id")
    r = client.post("/verify", data={"speaker_id": bad_id}, files=[wav_file(wav_bytes(WAV_A))])
    assert_problem(r, 422, "invalid_speaker_id")
    r = client.post(
        "/identify", data={"candidates": f"{enrolled},{bad_id}"}, files=[wav_file(wav_bytes(WAV_A))]
    )
    assert_problem(r, 422, "invalid_speaker_id")
    if "/" not in bad_id:
        assert_problem(client.get(f"/speakers/{bad_id}"), 422, "invalid_speaker_id")
        assert_problem(client.delete(f"/speakers/{bad_id}"), 422, "invalid_speaker_id")
    assert redis_snapshot(settings.redis_url or "", settings.redis_namespace) == before


def test_unknown_speaker(client: TestClient, settings: Settings, enrolled: str) -> None:
    before = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
    r = client.post("/verify", data={"speaker_id": "nobody"}, files=[wav_file(wav_bytes(WAV_A))])
    assert_problem(r, 404, "speaker_not_found")
    assert_problem(client.get("/speakers/nobody"), 404, "speaker_not_found")
    assert_problem(client.delete("/speakers/nobody"), 404, "speaker_not_found")
    assert redis_snapshot(settings.redis_url or "", settings.redis_namespace) == before


MALFORMED: dict[str, tuple[str, dict[str, str], int]] = {
    "enroll_without_audio": ("/enroll", {"speaker_id": "x"}, 0),
    "enroll_without_speaker": ("/enroll", {}, 1),
    "enroll_metadata_not_object": ("/enroll", {"speaker_id": "x", "metadata": "[1, 2]"}, 1),
    "enroll_metadata_not_json": ("/enroll", {"speaker_id": "x", "metadata": "{nope"}, 1),
    "enroll_metadata_nan": ("/enroll", {"speaker_id": "x", "metadata": '{"a": NaN}'}, 1),
    "enroll_metadata_too_big": ("/enroll", {"speaker_id": "x", "metadata": '{"a": "' + "x" * 5000 + '"}'}, 1),
    "verify_neither": ("/verify", {}, 1),
    "verify_bad_threshold": ("/verify", {"speaker_id": "known", "threshold": "1.5"}, 1),
    "verify_threshold_text": ("/verify", {"speaker_id": "known", "threshold": "high"}, 1),
    "identify_top_k_zero": ("/identify", {"top_k": "0"}, 1),
    "identify_top_k_text": ("/identify", {"top_k": "many"}, 1),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests(client: TestClient, settings: Settings, enrolled: str, case: str) -> None:
    endpoint, form, n_files = MALFORMED[case]
    before = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
    files = [wav_file(wav_bytes(WAV_A))] * n_files
    r = (
        client.post(endpoint, data=form, files=files)
        if files
        else client.post(endpoint, data=form, files={"x": ("", b"")})
    )
    assert_problem(r, 422, "invalid_request")
    assert redis_snapshot(settings.redis_url or "", settings.redis_namespace) == before


def test_verify_with_both_speaker_and_reference(client: TestClient, enrolled: str) -> None:
    r = client.post(
        "/verify",
        data={"speaker_id": enrolled},
        files=[wav_file(wav_bytes(WAV_A)), ("reference", ("r.wav", wav_bytes(WAV_B), "audio/wav"))],
    )
    assert_problem(r, 422, "invalid_request")


def test_not_multipart_is_415(client: TestClient) -> None:
    r = client.post("/identify", json={"audio": "base64?"})
    assert_problem(r, 415, "unsupported_media_type")


def test_framework_validation_and_routing_errors_are_problems(client: TestClient) -> None:
    body = assert_problem(client.get("/speakers", params={"limit": 0}), 422, "invalid_request")
    assert body["errors"][0]["loc"] == ["query", "limit"]
    assert_problem(client.get("/speakers", params={"limit": "ten"}), 422, "invalid_request")
    assert_problem(client.get("/no/such/route"), 404, "not_found")
    assert_problem(client.put("/enroll"), 405, "method_not_allowed")


# --- overload: 429 with Retry-After ------------------------------------------------------------------
def test_overloaded_is_429_with_retry_after(redis_server: RedisProcess, tiny_model: Path) -> None:
    # Queue of one segment, and the batcher holds a batch open for 3 s: the second request cannot fit.
    settings = settings_for(redis_server.url, tiny_model, queue_size=1, max_wait_ms=3000.0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        engine = client.app_state["voxgate"].engine
        first: dict[str, Any] = {}

        def send_first() -> None:
            first["response"] = client.post("/identify", files=[wav_file(wav_bytes(WAV_A))])

        thread = threading.Thread(target=send_first)
        thread.start()
        while engine.queue_depth() < 1 and thread.is_alive():
            threading.Event().wait(0.01)
        assert engine.queue_depth() == 1
        r = client.post("/identify", files=[wav_file(wav_bytes(WAV_B))])
        body = assert_problem(r, 429, "overloaded")
        assert int(r.headers["retry-after"]) >= 1
        assert body["detail"]
        before = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
        r = client.post(
            "/enroll",
            data={"speaker_id": "late"},
            files=[wav_file(wav_bytes(WAV_A)), wav_file(wav_bytes(WAV_B))],
        )
        assert_problem(r, 429, "overloaded")
        assert redis_snapshot(settings.redis_url or "", settings.redis_namespace) == before
        thread.join()
        assert first["response"].status_code == 200, first["response"].text


# --- Redis down and back --------------------------------------------------------------------------
def test_redis_down_is_503_and_recovers_without_restart(tmp_path: Path, tiny_model: Path) -> None:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        settings = settings_for(server.url, tiny_model)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            files = [wav_file(wav_bytes(WAV_A))]
            assert client.post("/enroll", data={"speaker_id": "s1"}, files=files).status_code == 200
            server.stop()
            for r in (
                client.post("/enroll", data={"speaker_id": "s2"}, files=files),
                client.post("/verify", data={"speaker_id": "s1"}, files=files),
                client.get("/speakers"),
                client.get("/speakers/s1"),
                client.delete("/speakers/s1"),
            ):
                body = assert_problem(r, 503, "store_unavailable")
                assert "Redis" in body["detail"]
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"] is False
            # the index sync notices too; identify refuses rather than answer from a stale index
            deadline = 200
            while client.get("/readyz").json()["checks"]["index_synced"] and deadline:
                threading.Event().wait(0.05)
                deadline -= 1
            assert_problem(client.post("/identify", files=files), 503, "store_unavailable")
            assert client.get("/healthz").status_code == 200

            server.start()  # same port; this test server keeps no data
            r = client.post("/enroll", data={"speaker_id": "s2"}, files=files)
            assert r.status_code == 200, r.text
            assert r.json()["created"] is True
            deadline = 200
            while client.get("/readyz").status_code != 200 and deadline:
                threading.Event().wait(0.05)
                deadline -= 1
            assert client.get("/readyz").json()["ready"] is True
            r = client.post("/identify", files=files)
            assert r.status_code == 200, r.text
            assert [c["speaker_id"] for c in r.json()["candidates"]] == ["s2"]
    finally:
        server.stop()
