"""Voice activity detection: where in a waveform someone speaks, and how many seconds of it are speech.

A neural VAD, Silero VAD v6 (MIT, ``app/assets/vad/``: the 16 kHz "sequence" ONNX graph of PyPI
``silero-vad`` 6.2.3), run on the service's own ONNX Runtime (no torch). The graph gives one speech
probability per 32 ms frame (512 samples at 16 kHz, each preceded by the previous frame's last 64
samples, with the LSTM state carried from frame to frame); it runs ``FRAMES_PER_CALL`` frames per
``session.run`` and carries the state across calls: on the development speech that gives exactly the
probabilities of Silero's frame-by-frame graph (``app/assets/vad/README.md``). The probabilities become
speech regions with Silero's own rules (``get_speech_timestamps``: speech starts at p >= 0.5, ends after
100 ms below 0.35, regions of 250 ms or less are dropped, 30 ms of padding each side).

Unlike the energy VAD it replaced, it tells speech from noise, music, tones and hum: those give no
speech regions, so the API refuses them (``no_speech``) and a recording that is mostly noise counts
only its speech. Measurements (docs/accuracy.md): about 2-3 ms of CPU per second of audio on one thread;
the work memory of a call is ~4 MB whatever the recording's length (bounded by ``FRAMES_PER_CALL``; the
session has no memory arena, so it is given back after each call).

Everything here is blocking CPU work (callers run it in the decode pool). One session is shared by every
thread: ONNX Runtime sessions may run concurrently, and each call carries its own recurrent state.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # 32 ms: the graph's frame
CONTEXT_SAMPLES = 64  # the previous frame's tail, prepended to each frame
STATE_SIZE = 128
# Frames per session.run: 128 frames = 4.1 s of audio, ~4.5 MB of work memory, 1.9 ms per second of
# audio (256 frames: ~8.6 MB, no faster; 64 frames: 2.5 ms per second).
FRAMES_PER_CALL = 128

# Silero's get_speech_timestamps defaults.
THRESHOLD = 0.5
NEG_THRESHOLD = THRESHOLD - 0.15
MIN_SPEECH_SECONDS = 0.25
MIN_SILENCE_SECONDS = 0.1
PAD_SECONDS = 0.03

MODEL_FILE = "silero_vad_16k_sequence.onnx"

Region = tuple[int, int]  # [start, end) in samples


def model_path() -> Path:
    return Path(str(resources.files("app.assets").joinpath("vad", MODEL_FILE)))


class _Session:
    """The one ONNX Runtime session, created on first use (or by ``load``)."""

    _lock = threading.Lock()
    _session: object | None = None

    @classmethod
    def get(cls) -> object:
        if cls._session is None:
            with cls._lock:
                if cls._session is None:
                    import onnxruntime as ort

                    options = ort.SessionOptions()
                    options.intra_op_num_threads = 1  # each decode thread runs its own call
                    options.inter_op_num_threads = 1
                    # Without an arena each call's work memory is freed when it returns: the decode
                    # pool's memory stays what app.engine.admission budgets, not the largest call ever seen.
                    options.enable_cpu_mem_arena = False
                    options.log_severity_level = 3
                    cls._session = ort.InferenceSession(
                        str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
                    )
        return cls._session


def load() -> None:
    """Create the session now (start-up), so a missing or broken VAD graph stops the service early."""
    _Session.get()


def _check_rate(sample_rate: int) -> None:
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"the VAD takes {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")


def speech_probabilities(waveform: Float32Array, sample_rate: int = SAMPLE_RATE) -> npt.NDArray[np.float32]:
    """One speech probability per 32 ms frame (the last frame zero-padded)."""
    _check_rate(sample_rate)
    audio = np.asarray(waveform, dtype=np.float32).reshape(-1)
    n_frames = -(-audio.size // FRAME_SAMPLES)
    probs = np.empty(n_frames, dtype=np.float32)
    if n_frames == 0:
        return probs
    session = _Session.get()
    h = np.zeros((1, 1, STATE_SIZE), dtype=np.float32)
    c = np.zeros((1, 1, STATE_SIZE), dtype=np.float32)
    context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
    block = np.empty((FRAMES_PER_CALL, CONTEXT_SAMPLES + FRAME_SAMPLES), dtype=np.float32)
    for first in range(0, n_frames, FRAMES_PER_CALL):
        count = min(FRAMES_PER_CALL, n_frames - first)
        piece = audio[first * FRAME_SAMPLES : (first + count) * FRAME_SAMPLES]
        rows = block[:count]
        if piece.size == count * FRAME_SAMPLES:
            frames = piece.reshape(count, FRAME_SAMPLES)
        else:  # the last frame of the recording, zero-padded
            frames = np.zeros((count, FRAME_SAMPLES), dtype=np.float32)
            frames.reshape(-1)[: piece.size] = piece
        rows[:, CONTEXT_SAMPLES:] = frames
        rows[0, :CONTEXT_SAMPLES] = context
        rows[1:, :CONTEXT_SAMPLES] = frames[:-1, -CONTEXT_SAMPLES:]
        context = frames[-1, -CONTEXT_SAMPLES:].copy()
        out, h, c = session.run(["speech_probs", "hn", "cn"], {"input": rows, "h": h, "c": c})  # type: ignore[attr-defined]
        probs[first : first + count] = np.asarray(out, dtype=np.float32).reshape(-1)
    return probs


def regions_from_probabilities(probs: npt.NDArray[np.float32], n_samples: int) -> list[Region]:
    """Speech regions from frame probabilities, by the rules of Silero's ``get_speech_timestamps``
    (no maximum region length)."""
    min_speech = SAMPLE_RATE * MIN_SPEECH_SECONDS
    min_silence = SAMPLE_RATE * MIN_SILENCE_SECONDS
    pad = round(SAMPLE_RATE * PAD_SECONDS)
    regions: list[list[int]] = []
    triggered = False
    start = temp_end = 0
    for i, p in enumerate(probs.tolist()):
        sample = FRAME_SAMPLES * i
        if p >= THRESHOLD and temp_end:
            temp_end = 0
        if p >= THRESHOLD and not triggered:
            triggered, start = True, sample
            continue
        if p < NEG_THRESHOLD and triggered:
            if not temp_end:
                temp_end = sample
            if sample - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                regions.append([start, temp_end])
            triggered, temp_end = False, 0
    if triggered and n_samples - start > min_speech:
        regions.append([start, n_samples])
    for i, region in enumerate(regions):
        if i == 0:
            region[0] = max(0, region[0] - pad)
        if i < len(regions) - 1:
            gap = regions[i + 1][0] - region[1]
            if gap < 2 * pad:
                region[1] += gap // 2
                regions[i + 1][0] = max(0, regions[i + 1][0] - gap // 2)
            else:
                region[1] = min(n_samples, region[1] + pad)
                regions[i + 1][0] = max(0, regions[i + 1][0] - pad)
        else:
            region[1] = min(n_samples, region[1] + pad)
    return [(a, b) for a, b in regions if b > a]


def speech_regions(waveform: Float32Array, sample_rate: int = SAMPLE_RATE) -> list[Region]:
    """Where the speech is: sorted, disjoint [start, end) sample ranges."""
    audio = np.asarray(waveform, dtype=np.float32).reshape(-1)
    return regions_from_probabilities(speech_probabilities(audio, sample_rate), int(audio.size))


def regions_seconds(regions: list[Region], sample_rate: int = SAMPLE_RATE) -> float:
    return sum(b - a for a, b in regions) / sample_rate


def speech_seconds(waveform: Float32Array, sample_rate: int = SAMPLE_RATE) -> float:
    """Net speech in the waveform, in seconds."""
    return regions_seconds(speech_regions(waveform, sample_rate), sample_rate)


def overlap_samples(regions: Sequence[Region], start: int, end: int) -> int:
    """How many samples of [start, end) lie inside the regions."""
    return sum(max(0, min(b, end) - max(a, start)) for a, b in regions)


def speech_only(waveform: Float32Array, regions: Sequence[Region]) -> Float32Array:
    """The speech regions of a waveform joined end to end (non-speech dropped)."""
    if not regions:
        return np.zeros(0, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([waveform[a:b] for a, b in regions]), dtype=np.float32)
