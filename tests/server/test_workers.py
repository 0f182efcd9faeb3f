"""``voxgate serve`` with front-end workers and one inference process (VOXGATE_WORKERS=2), as real processes
on a real redis-server: the processes are what they claim, answers equal the one-process service's, a
killed worker is replaced, a killed inference process turns readiness off and is replaced, nothing in
Redis is half-written either way, and SIGTERM stops everything cleanly."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
import redis

from app.core.ids import validate_speaker_id
from tests.support.data import EXAMPLES_AUDIO
from tests.support.models import default_model_dir
from tests.support.redis_server import RedisProcess
from tests.support.service import LiveService

pytestmark = pytest.mark.slow

ENROLL = [EXAMPLES_AUDIO / f"1688-142285-000{i}.flac" for i in (2, 3, 4)]
PROBE = EXAMPLES_AUDIO / "1688-142285-0005.flac"
OTHER = EXAMPLES_AUDIO / "p225_003.flac"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def roles(service: LiveService) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"inference": [], "worker": []}
    for child in children(service.pid):
        text = cmdline(child)
        if "app.engine.inference" in text:
            out["inference"].append(child)
        elif "app.server.worker" in text:
            out["worker"].append(child)
    return out


def files(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("audio", (p.name, p.read_bytes(), "audio/flac")) for p in paths]


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout_s:g} s")


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def stored_voiceprints_are_whole(url: str, namespace: str) -> list[str]:
    """Every voiceprint hash complete, and the speaker set naming exactly the stored ones: what a write
    cut off half-way would break."""
    r = redis.Redis.from_url(url)
    speakers: list[str] = []
    for key in r.scan_iter(match=f"{namespace}:*:spk:*"):
        fields = r.hgetall(key)
        speaker = key.decode().rsplit(":spk:", 1)[1]
        validate_speaker_id(speaker)
        assert {b"sum", b"count", b"speech_seconds", b"rev"} <= set(fields), (key, sorted(fields))
        assert int(fields[b"count"]) >= 1
        speakers.append(speaker)
    members = set()
    for key in r.scan_iter(match=f"{namespace}:*:speakers"):
        members |= {m.decode() for m in r.zrange(key, 0, -1)}
    assert members == set(speakers)
    return speakers


@pytest.fixture(scope="module")
def one_process(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """The scores the one-process service gives (the reference the workers must equal)."""
    with (
        LiveService(
            default_model_dir(), redis_server.url, tmp_path_factory.mktemp("w0"), {"workers": "0"}
        ) as s,
        httpx.Client(base_url=s.url, timeout=60) as c,
    ):
        assert c.post("/enroll", data={"speaker_id": "spk"}, files=files(*ENROLL)).status_code == 200
        same = c.post("/verify", data={"speaker_id": "spk"}, files=files(PROBE)).json()["score"]
        other = c.post("/verify", data={"speaker_id": "spk"}, files=files(OTHER)).json()["score"]
    return {"same": same, "other": other}


def test_workers_and_an_inference_process_answer_as_one_process_does(
    redis_server: RedisProcess, tmp_path: Path, one_process: dict[str, float]
) -> None:
    # Eight verifications of one speaker at once, half of them failing: the lockout would (rightly) make some
    # wait or lock the speaker; this test is about the answers, so it is off here.
    settings = {"workers": "2", "lockout_failures": "0"}
    with LiveService(default_model_dir(), redis_server.url, tmp_path, settings) as service:
        found = roles(service)
        assert len(found["inference"]) == 1, found
        assert len(found["worker"]) == 2, found
        assert "inference" in cmdline(found["inference"][0])  # told apart from outside
        with httpx.Client(base_url=service.url, timeout=60) as c:
            r = c.post("/enroll", data={"speaker_id": "spk"}, files=files(*ENROLL))
            assert r.status_code == 200, r.text
            assert r.json()["speech_seconds"] > 8.0
            # Requests land on both workers (one connection each); the answers are the one process's.
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                answers = list(
                    pool.map(
                        lambda path: httpx.post(
                            f"{service.url}/verify", data={"speaker_id": "spk"}, files=files(path), timeout=60
                        ).json(),
                        [PROBE, OTHER] * 4,
                    )
                )
            for answer, key in zip(answers, ["same", "other"] * 4, strict=True):
                assert answer["score"] == pytest.approx(one_process[key], abs=1e-5)
            assert [a["match"] for a in answers[:2]] == [True, False]
            identified = c.post("/identify", files=files(PROBE)).json()
            assert identified["speaker_id"] == "spk"
            problem = c.post(
                "/verify", data={"speaker_id": "spk"}, files=[("audio", ("x.wav", b"text", "audio/wav"))]
            )
            assert (problem.status_code, problem.json()["code"]) == (415, "unsupported_media_type")
            silence = c.post(
                "/verify",
                data={"speaker_id": "spk"},
                files=[("audio", ("s.wav", _silence_wav(), "audio/wav"))],
            )
            assert (silence.status_code, silence.json()["code"]) == (422, "no_speech")
            metrics = c.get("/metrics").text  # every process's, whichever worker answers
            assert "voxgate_engine_batch_size_count" in metrics
            assert "voxgate_vad_batch_size_count" in metrics
        service.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert service.proc.wait(60) == 0  # type: ignore[union-attr]
        assert all(
            not Path(f"/proc/{pid}").exists() or "app." not in cmdline(pid)
            for pid in [*found["inference"], *found["worker"]]
        )


def _silence_wav() -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(32000, dtype=np.float32), 16000, format="WAV")
    return buf.getvalue()


def _enroll_many(url: str, prefix: str, count: int) -> list[int | str]:
    """Enrollments from several threads, answered or cut off (a killed process resets its connections)."""

    def one(i: int) -> int | str:
        try:
            return httpx.post(
                f"{url}/enroll", data={"speaker_id": f"{prefix}{i}"}, files=files(*ENROLL[:2]), timeout=60
            ).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        return list(pool.map(one, range(count)))


def test_a_killed_worker_is_replaced_and_nothing_is_half_written(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    with LiveService(default_model_dir(), redis_server.url, tmp_path, {"workers": "2"}) as service:
        victim = roles(service)["worker"][0]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            storm = pool.submit(_enroll_many, service.url, "w", 24)
            time.sleep(1.0)
            os.kill(victim, signal.SIGKILL)
            outcomes = storm.result(timeout=300)
        assert set(outcomes) <= {200, "RemoteProtocolError", "ReadError", "ConnectError", "WriteError"}
        wait_for(
            lambda: len(roles(service)["worker"]) == 2 and victim not in roles(service)["worker"],
            30,
            "replaced",
        )
        with httpx.Client(base_url=service.url, timeout=60) as c:
            wait_for(lambda: ready(c), 60, "ready again")
            stored = stored_voiceprints_are_whole(redis_server.url, service.env["VOXGATE_REDIS_NAMESPACE"])
            assert {f"w{i}" for i, o in enumerate(outcomes) if o == 200} <= set(stored)
            for speaker in stored:  # every stored voiceprint is usable
                r = c.post("/verify", data={"speaker_id": speaker}, files=files(PROBE))
                assert r.status_code == 200, r.text
                assert r.json()["match"], r.text


def test_a_killed_inference_process_turns_readiness_off_and_is_replaced(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    with LiveService(default_model_dir(), redis_server.url, tmp_path, {"workers": "2"}) as service:
        victim = roles(service)["inference"][0]
        with httpx.Client(base_url=service.url, timeout=60) as c:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                storm = pool.submit(_enroll_many, service.url, "i", 24)
                time.sleep(1.0)
                os.kill(victim, signal.SIGKILL)
                wait_for(lambda: c.get("/readyz").status_code == 503, 10, "readiness off")
                during = c.post("/verify", data={"speaker_id": "nobody"}, files=files(PROBE))
                assert during.status_code in (404, 503)  # never a 500
                outcomes = storm.result(timeout=300)
            # The requests the dead process had: 503 engine_unavailable, never a 500.
            assert set(outcomes) <= {200, 503}, outcomes
            wait_for(lambda: ready(c), 120, "ready with a new inference process")
            replaced = roles(service)["inference"]
            assert replaced
            assert victim not in replaced
            stored = stored_voiceprints_are_whole(redis_server.url, service.env["VOXGATE_REDIS_NAMESPACE"])
            assert {f"i{i}" for i, o in enumerate(outcomes) if o == 200} <= set(stored)
            assert c.post("/verify", data={"speaker_id": stored[0]}, files=files(PROBE)).json()["match"]


def test_a_client_that_goes_away_has_its_work_dropped_in_the_inference_process(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    # Batches held open for 3 s: the request waits there while its client hangs up.
    settings = {"workers": "1", "max_wait_ms": "3000"}
    with (
        LiveService(default_model_dir(), redis_server.url, tmp_path, settings) as service,
        httpx.Client(base_url=service.url, timeout=60) as c,
    ):
        assert c.post("/enroll", data={"speaker_id": "spk"}, files=files(*ENROLL)).status_code == 200
        assert not _cancelled_in_engine(c.get("/metrics").text)
        body, ctype = _multipart({"speaker_id": "spk"}, PROBE)
        with socket.create_connection(("127.0.0.1", service.port)) as sock:
            head = f"POST /verify HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(1.0)  # in the held-open batch now
        wait_for(lambda: _cancelled_in_engine(c.get("/metrics").text), 15, "the engine's work dropped")


def _cancelled_in_engine(metrics: str) -> bool:
    return any(
        line.startswith(("voxgate_engine_requests_total", "voxgate_vad_requests_total"))
        and 'outcome="cancelled"' in line
        and float(line.rsplit(" ", 1)[1]) >= 1
        for line in metrics.splitlines()
    )


def _multipart(fields: dict[str, str], path: Path) -> tuple[bytes, str]:
    boundary = "voxgateboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{path.name}"\r\n'
        "Content-Type: audio/flac\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
