"""Admission control and bounded memory against a real `voxgate serve` (small budgets, raw sockets so that
"refused before the body is read" is observable), plus the streaming decoder and the VAD's bounds."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.api.multipart import UploadedFile
from app.audio.decode import BLOCK_SAMPLES, OpenedUpload, decode_audio
from app.audio.vad import speech_seconds
from app.core.errors import AudioTooLarge, AudioTooLong, DeadlineExceeded, Overloaded, RequestCancelled
from app.engine import admission as admission_module
from app.engine.admission import Admission, HeapTrimmer, MemoryBudget, Reservation
from app.engine.config import BatcherConfig
from app.engine.engine import EmbeddingEngine, Waiting
from app.engine.intake import AudioIntake
from app.engine.metrics import EngineMetrics
from tests.support.data import encode, short_speech, speech_files, wav_bytes
from tests.support.models import FakeBackend, default_model_dir, fake_manifest
from tests.support.redis_server import RedisProcess
from tests.support.service import LiveService, multipart_body

MB = 1024 * 1024
UPLOAD = 8 * MB
BUDGET = 64 * MB


def looped_speech(seconds: float) -> np.ndarray:
    piece = short_speech(3.0)
    n = round(seconds * 16000)
    return np.tile(piece, -(-n // piece.size))[:n].astype(np.float32)


def send_headers(port: int, path: str, content_length: int | None, extra: str = "") -> socket.socket:
    """Open a connection and send only the request head of a multipart POST."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    length = f"Content-Length: {content_length}\r\n" if content_length is not None else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"{length}{extra}\r\n"
    )
    sock.sendall(head.encode())
    return sock


def post(
    port: int, path: str, fields: dict[str, str], files: list[tuple[str, str, bytes]]
) -> tuple[int, dict[str, str], bytes]:
    """A whole multipart POST on a fresh connection."""
    data, ctype = multipart_body(fields, files)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


@pytest.fixture(scope="module")
def service(
    redis_server: RedisProcess, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    settings = {
        "max_upload_bytes": str(UPLOAD),
        "request_memory_bytes": str(BUDGET),
        "max_audio_seconds": "120",
    }
    with LiveService(tiny_model, redis_server.url, tmp_path_factory.mktemp("admission"), settings) as live:
        yield live


def test_a_body_larger_than_the_budget_is_413_before_it_is_sent(service: LiveService) -> None:
    # 40 MB is within /enroll's multipart limit (10 files of 8 MB) but, with what decoding it would need,
    # could never fit a 64 MB budget.
    sock = send_headers(service.port, "/enroll", 40 * MB)
    with sock:
        status, _, body = read_response(sock)  # answered although no body byte was sent
    assert status == 413
    assert b'"code":"audio_too_large"' in body


def test_budget_in_use_is_429_at_once_and_free_again_after(service: LiveService) -> None:
    # 8 MB of body and what decoding it would need (48 MB in all) are reserved; no body is sent.
    holder = send_headers(service.port, "/enroll", 8 * MB)
    try:
        time.sleep(0.3)  # let the server admit it
        second = send_headers(service.port, "/identify", 9 * MB // 2)  # 30 MB: fits alone, not now
        with second:
            status, headers, body = read_response(second)
        assert status == 429
        assert b'"code":"overloaded"' in body
        assert int(headers["retry-after"]) >= 1
    finally:
        holder.close()  # the client gives up: its reservation must come back
    probe = [("audio", "a.wav", wav_bytes(speech_files()["librispeech_1688"][0]))]
    for _ in range(100):  # the server notices the closed connection in its receive loop
        status, _, body = post(service.port, "/identify", {}, probe)
        if status != 429:
            break
        time.sleep(0.1)
    assert status == 200, body


def test_a_chunked_body_is_counted_as_it_streams(service: LiveService) -> None:
    # Ten files of 7 MB each pass the per-file and per-request limits, but not the 64 MB budget.
    sock = send_headers(service.port, "/enroll", None, "Transfer-Encoding: chunked\r\n")
    with sock:
        part = b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
        part += b"\0" * (7 * MB) + b"\r\n"
        try:
            for _ in range(10):
                for start in range(0, len(part), 256 * 1024):
                    chunk = part[start : start + 256 * 1024]
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        status, _, body = read_response(sock)
    assert status == 413
    assert b"the request body" in body


def test_an_over_long_upload_is_refused_while_it_is_still_arriving(service: LiveService) -> None:
    # 594 s of 8 kHz 8-bit audio (4.8 MB): refused from the WAV header in its first 64 KB; the rest of
    # the body is never sent.
    wav = encode(looped_speech(594.0)[::2], 8000, subtype="PCM_U8")
    data, ctype = multipart_body({"speaker_id": "long"}, [("audio", "long.wav", wav)])
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        head = f"POST /enroll HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + data[: 80 * 1024])
        status, _, body = read_response(sock)
    assert status == 422
    assert b'"code":"audio_too_long"' in body
    assert b"long.wav" in body


def test_decoded_audio_is_reserved_from_the_headers_before_any_decoding() -> None:
    # Three recordings of 120 s in small FLACs: all their headers are read and their decoded waveforms
    # (7.7 MB each) reserved before a single block is decoded; a 24 MB budget cannot hold them.
    flac = encode(looped_speech(120.0), fmt="FLAC")
    uploads = [UploadedFile("audio", f"long{i}.flac", None, flac) for i in range(3)]
    engine = EmbeddingEngine(FakeBackend(), fake_manifest(), metrics=EngineMetrics(CollectorRegistry()))
    intake = AudioIntake(workers=1, max_seconds=300.0)
    budget = MemoryBudget(24 * MB)
    admitted = Admission(engine, budget, max_queue_wait_s=60.0).admit(len(flac) * 3, time.monotonic() + 30)
    blocks = 0
    real_decode = OpenedUpload.decode

    def counting_decode(self: OpenedUpload, *args: Any, **kwargs: Any) -> Any:
        nonlocal blocks
        blocks += 1
        return real_decode(self, *args, **kwargs)

    OpenedUpload.decode = counting_decode  # type: ignore[method-assign]
    try:
        with pytest.raises(AudioTooLarge) as refused:
            asyncio.run(intake.decode(uploads, admitted, Waiting(deadline=time.monotonic() + 30)))
    finally:
        OpenedUpload.decode = real_decode  # type: ignore[method-assign]
        admitted.release()
        intake.close()
    assert blocks == 0  # refused from the headers
    assert "the decoded audio of 3 recording(s)" in refused.value.detail
    assert budget.used_bytes == 0  # and everything given back


def test_expected_wait_over_the_bound_is_429_before_the_body(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    # The real default model with its throughput measured at warm-up; the batcher holds each batch open
    # for 3 s and nothing may wait longer than 0.05 s. While two minutes of speech wait in the engine
    # (about a second of inference here), the next request is refused from its headers alone.
    settings = {"max_wait_ms": "3000", "max_queue_wait_s": "0.05"}
    with LiveService(default_model_dir(), redis_server.url, tmp_path, settings) as live:
        long_speech = encode(looped_speech(120.0))
        result: dict[str, int] = {}

        def first() -> None:
            result["status"] = post(live.port, "/identify", {}, [("audio", "long.wav", long_speech)])[0]

        thread = threading.Thread(target=first)
        thread.start()
        time.sleep(1.5)  # the first is decoded and in the batcher's open batch now
        sock = send_headers(live.port, "/identify", 100_000)
        with sock:
            status, headers, body = read_response(sock)
        thread.join(60)
        assert status == 429, body
        assert b"expected wait" in body
        assert int(headers["retry-after"]) >= 1
        assert result["status"] == 200


# --- the engine refuses what cannot finish by its deadline --------------------------------------------
def test_engine_refuses_at_once_what_would_miss_its_deadline() -> None:
    backend = FakeBackend(hold_first=True)
    engine = EmbeddingEngine(
        backend,
        fake_manifest(),
        config=BatcherConfig(max_batch_size=1, max_batch_samples=10**9, max_wait_s=0.0, queue_size=64),
        metrics=EngineMetrics(CollectorRegistry()),
        warmup=False,  # the cautious initial throughput estimate, not one measured on the fake
    )

    async def scenario() -> None:
        await engine.start()
        busy = [asyncio.create_task(engine.embed(np.full(160_000, 0.1, np.float32))) for _ in range(8)]
        await asyncio.to_thread(backend.entered.wait, 10)
        # 80 s of audio queued at the assumed 20x real time: about 4 s of work ahead.
        assert engine.expected_wait_s() > 1.0
        with pytest.raises(Overloaded) as refused:
            await engine.embed(np.full(16_000, 0.1, np.float32), deadline=time.monotonic() + 0.5)
        assert refused.value.retry_after_s > 0
        with pytest.raises(DeadlineExceeded):  # its own work alone is longer than its deadline
            await engine.embed(np.full(1_600_000, 0.1, np.float32), deadline=time.monotonic() + 0.5)
        backend.gate.set()
        await asyncio.gather(*busy)
        await engine.stop()

    asyncio.run(scenario())


def test_audio_that_no_deadline_could_hold_is_refused_with_a_4xx() -> None:
    # 100 s of audio at the cautious first estimates (VAD 100x, embedding 20x real time) needs about 6 s:
    # with requests limited to 3 s it can never be served (413, send less), where a request that merely
    # arrives late for its deadline is a 504.
    engine = EmbeddingEngine(
        FakeBackend(), fake_manifest(), metrics=EngineMetrics(CollectorRegistry()), warmup=False
    )
    hundred_seconds = 100 * 16000
    admission = Admission(engine, MemoryBudget(64 * MB), max_queue_wait_s=60.0, request_timeout_s=3.0)
    admitted = admission.admit(None, time.monotonic() + 3)
    with pytest.raises(AudioTooLarge) as refused:
        admitted.refuse_unless_in_time(hundred_seconds, 0.0, 0.0, time.monotonic() + 3)
    assert refused.value.status == 413
    assert "send less audio" in refused.value.detail
    roomy = Admission(engine, MemoryBudget(64 * MB), max_queue_wait_s=60.0, request_timeout_s=30.0)
    late = roomy.admit(None, time.monotonic() + 3)
    with pytest.raises(DeadlineExceeded):
        late.refuse_unless_in_time(hundred_seconds, 0.0, 0.0, time.monotonic() + 3)
    admitted.release()
    late.release()


# --- decoding and speech measurement stay bounded ------------------------------------------------------
def test_an_over_long_stream_is_cut_off_while_decoding() -> None:
    # A WAV that does not say how long it is (data size 0xFFFFFFFF, as streaming writers leave it).
    wave = looped_speech(120.0)
    data = bytearray(encode(wave))
    pos = data.find(b"data")
    data[pos + 4 : pos + 8] = b"\xff\xff\xff\xff"
    blocks = 0

    def count() -> None:
        nonlocal blocks
        blocks += 1

    with pytest.raises(AudioTooLong):
        decode_audio(bytes(data), max_seconds=10.0, should_stop=count)
    # Stopped right after the cap: not one block more than 10 s needs.
    assert blocks <= 10 * 16000 // BLOCK_SAMPLES + 2


def test_a_header_that_is_too_long_is_refused_before_any_block() -> None:
    wave = looped_speech(30.0)
    blocks = 0

    def count() -> None:
        nonlocal blocks
        blocks += 1

    with pytest.raises(AudioTooLong):
        decode_audio(encode(wave, fmt="FLAC"), max_seconds=10.0, should_stop=count)
    assert blocks == 0


def test_vad_work_memory_does_not_grow_with_the_recording() -> None:
    rng = np.random.default_rng(0)
    peaks = []
    for seconds in (30, 300):
        wave = (0.1 * rng.standard_normal(seconds * 16000)).astype(np.float32)
        tracemalloc.start()
        speech_seconds(wave, 16000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # 10x the audio, not 10x the work arrays (the old frames x 480 float64 matrix was 350 MB at 300 s).
    assert peaks[1] < 32 * MB
    assert peaks[1] < 4 * peaks[0]


def test_audio_on_its_way_counts_for_the_next_requests() -> None:
    # The engine's cautious first estimates (no warm-up): 100 s of declared audio on its way to the engine
    # means 1 s of speech detection (at 100x real time) and 5 s of embedding (20x) ahead of anyone next.
    engine = EmbeddingEngine(
        FakeBackend(), fake_manifest(), metrics=EngineMetrics(CollectorRegistry()), warmup=False
    )
    admission = Admission(engine, MemoryBudget(64 * MB), max_queue_wait_s=2.0)
    first = admission.admit(None, time.monotonic() + 30)
    first.body_read()
    hundred_seconds = 100 * 16000
    first.refuse_unless_in_time(hundred_seconds, 0.5, 0.0, time.monotonic() + 30)  # alone: in time
    first.declare(hundred_seconds)
    with pytest.raises(Overloaded) as refused:
        admission.admit(None, time.monotonic() + 30)
    assert "expected wait for inference is 6.0 s" in refused.value.detail
    second = Admission(engine, MemoryBudget(64 * MB), max_queue_wait_s=60.0).admit(None, time.monotonic() + 3)
    with pytest.raises(DeadlineExceeded):  # its own decoding and inference alone outlast its deadline
        second.refuse_unless_in_time(hundred_seconds, 0.5, 0.0, time.monotonic() + 3)
    first.release()
    admission.admit(None, time.monotonic() + 30).release()  # nothing on its way any more


def test_the_heap_is_trimmed_twice_once_a_burst_has_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(admission_module, "trim_heap", lambda: trims.append(1) or True)
    budget = MemoryBudget(1024 * MB)
    trimmer = HeapTrimmer(budget)

    async def steps() -> list[int]:
        counts = []
        assert budget.try_take(100 * MB)
        for held in (True, True, False, False, False, False):
            if not held and budget.used_bytes:
                budget.give_back(100 * MB)
            await trimmer.step()
            counts.append(len(trims))
        return counts

    # Not while the burst holds memory; then twice (its last objects are freed just after it lets go);
    # then not again until the next burst. A small request alone never triggers a trim.
    assert asyncio.run(steps()) == [0, 0, 1, 2, 2, 2]
    assert budget.try_take(MB)
    budget.give_back(MB)
    asyncio.run(trimmer.step())
    assert len(trims) == 2


def _intake_setup(workers: int = 1) -> tuple[AudioIntake, MemoryBudget, Admission]:
    engine = EmbeddingEngine(
        FakeBackend(), fake_manifest(), metrics=EngineMetrics(CollectorRegistry()), warmup=False
    )
    budget = MemoryBudget(64 * MB)
    return (
        AudioIntake(workers=workers, max_seconds=30.0),
        budget,
        Admission(engine, budget, max_queue_wait_s=60.0),
    )


@pytest.mark.parametrize("threads_busy", [False, True])
def test_one_upload_decodes_the_same_in_one_trip_or_two(threads_busy: bool) -> None:
    """A free decoding thread takes one upload's header, checks and decoding in one trip; with every
    thread busy the header is read beside the pool first. Same recording, same refusals, all memory
    given back either way."""
    intake, budget, admission = _intake_setup()
    flac = encode(short_speech(3.0), fmt="FLAC")
    too_long = encode(looped_speech(40.0), fmt="FLAC")
    if threads_busy:
        intake._busy = intake.workers  # as if every thread were decoding another request's audio
    try:
        admitted = admission.admit(len(flac), time.monotonic() + 30)
        admitted.body_read()  # as the route's form reading does: on its way to the engine from here
        (recording,) = asyncio.run(
            intake.decode(
                [UploadedFile("audio", "a.flac", None, flac)], admitted, Waiting(time.monotonic() + 30)
            )
        )
        admitted.release()
        np.testing.assert_array_equal(recording.waveform, decode_audio(flac).waveform)
        admitted = admission.admit(len(too_long), time.monotonic() + 30)
        admitted.body_read()
        with pytest.raises(AudioTooLong) as refused:
            asyncio.run(
                intake.decode(
                    [UploadedFile("audio", "long.flac", None, too_long)],
                    admitted,
                    Waiting(time.monotonic() + 30),
                )
            )
        admitted.release()
        assert refused.value.extra["file"] == "long.flac"
    finally:
        intake.close()
    assert budget.used_bytes == 0
    nothing_on_its_way = Admission(admission.engine, MemoryBudget(MB), max_queue_wait_s=60.0)
    assert admission.expected_wait_s() == nothing_on_its_way.expected_wait_s()


def test_a_request_cancelled_while_its_upload_is_on_a_thread_holds_no_memory_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client went away while a decoding thread was reading its upload's header: the request ends
    (its reservation released) before the thread reserves the decoded audio, and that late reservation
    is refused instead of holding budget for good."""
    intake, budget, admission = _intake_setup()
    flac = encode(short_speech(3.0), fmt="FLAC")
    on_thread, go_on = threading.Event(), threading.Event()
    real_init = OpenedUpload.__init__

    def slow_open(self: OpenedUpload, *args: Any, **kwargs: Any) -> None:
        on_thread.set()
        go_on.wait(10)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(OpenedUpload, "__init__", slow_open)

    async def scenario() -> None:
        admitted = admission.admit(len(flac), time.monotonic() + 30)
        admitted.body_read()
        upload = UploadedFile("audio", "a.flac", None, flac)
        task = asyncio.create_task(intake.decode([upload], admitted, Waiting(time.monotonic() + 30)))
        assert await asyncio.to_thread(on_thread.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        admitted.release()  # what the request's dependency does when it ends

    try:
        asyncio.run(scenario())
        go_on.set()
        intake._pool.submit(lambda: None).result(timeout=10)  # the thread's trip has ended by now
    finally:
        go_on.set()
        intake.close()
    assert budget.used_bytes == 0
    nothing_on_its_way = Admission(admission.engine, MemoryBudget(MB), max_queue_wait_s=60.0)
    assert admission.expected_wait_s() == nothing_on_its_way.expected_wait_s()


def test_a_released_reservation_takes_nothing_more() -> None:
    budget = MemoryBudget(10 * MB)
    reservation = Reservation(budget)
    reservation.grow(MB, "a body")
    reservation.release()
    with pytest.raises(RequestCancelled):
        reservation.grow(MB, "late decoded audio")
    with pytest.raises(RequestCancelled):
        reservation.prepay(MB, "late decoding")
    assert budget.used_bytes == 0
