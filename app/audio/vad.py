"""Voice activity detection: where in a waveform someone speaks, and how many seconds of it are speech.

A neural VAD, Silero VAD v6 (MIT, ``app/assets/vad/``), run on the service's own ONNX Runtime (no torch).
The network gives one speech probability per 32 ms frame (512 samples at 16 kHz, each preceded by the
previous frame's last 64 samples, with the LSTM state carried from frame to frame). ``SpeechModel`` runs
it on a batch of recordings at once: the batched graph (derived from Silero's "sequence" graph by
``scripts/derive_batched_vad.py``: a batch dimension over recordings, and each frame's convolutions as
one matrix product over all frames of a call) takes up to ``FRAMES_PER_CALL`` frames of every recording
per ``session.run`` and carries each recording's state across calls. On the development speech it gives
Silero's probabilities within 5e-5 and exactly its regions (``app/assets/vad/README.md``;
tests/audio/test_vad.py). The probabilities become speech regions
with Silero's own rules (``get_speech_timestamps``: speech starts at p >= 0.5, ends after 100 ms below
0.35, regions of 250 ms or less are dropped, 30 ms of padding each side).

It tells speech from noise, music, tones and hum: those give no speech regions, so the API refuses them
(``no_speech``) and a recording that is mostly noise counts only its speech. The service runs it in the
inference engine, batched across the recordings of concurrent requests on the embedding graph's
execution provider (``app.engine.speech``); ``speech_regions`` here is the same model on one CPU thread,
for tools and tests. About 0.55-0.8 ms of CPU per second of audio on one thread, against 1.8 for
Silero's graph (docs/performance.md).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # 32 ms: the graph's frame
CONTEXT_SAMPLES = 64  # the previous frame's tail, prepended to each frame
STATE_SIZE = 128
# Frames of all recordings together per session.run, which bounds a call's work memory (~4.5 MB for
# 128 frames of one recording); one recording gets at most 128 frames a call, a batch of 32 recordings
# 64 each (with Silero's convolutions, 64 a call cost 2.5 instead of 1.9 ms per second of audio; with the
# matrix products, 32-256 a call are within this machine's noise of each other).
FRAMES_PER_CALL = 2048
MAX_FRAMES_PER_RECORDING_CALL = 128
MIN_FRAMES_PER_RECORDING_CALL = 16

# Silero's get_speech_timestamps defaults.
THRESHOLD = 0.5
NEG_THRESHOLD = THRESHOLD - 0.15
MIN_SPEECH_SECONDS = 0.25
MIN_SILENCE_SECONDS = 0.1
PAD_SECONDS = 0.03

MODEL_FILE = "silero_vad_16k_batched.onnx"

Region = tuple[int, int]  # [start, end) in samples


def model_path() -> Path:
    return Path(str(resources.files("app.assets").joinpath("vad", MODEL_FILE)))


def frames_of(n_samples: int) -> int:
    """Frames the VAD gives for ``n_samples`` (the last one zero-padded)."""
    return -(-n_samples // FRAME_SAMPLES)


class SpeechModel:
    """The VAD network in one ONNX Runtime session, on a batch of recordings per call.

    ``providers`` and ``options`` as ONNX Runtime takes them (the engine passes its own, so the VAD runs
    where the embedding graph does); by default one CPU thread without a memory arena (each call's work
    memory is given back when it returns). Safe to call from several threads at once: each call carries
    its own recurrent state."""

    def __init__(self, providers: Sequence[Any] = ("CPUExecutionProvider",), options: Any = None) -> None:
        import onnxruntime as ort

        if options is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.enable_cpu_mem_arena = False
            options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(model_path()), sess_options=options, providers=list(providers)
        )
        self.provider: str = self._session.get_providers()[0]

    def probabilities(self, audio: Float32Array, lengths: Sequence[int]) -> Float32Array:
        """[B, T] speech probabilities of a zero-padded batch ``audio`` [B, N] of recordings with true
        ``lengths``; T frames cover the longest, and a row's frames past its own length are meaningless."""
        batch, width = audio.shape
        n_frames = frames_of(max(lengths, default=0))
        out = np.zeros((batch, n_frames), dtype=np.float32)
        if n_frames == 0 or batch == 0:
            return out
        per_call = max(
            MIN_FRAMES_PER_RECORDING_CALL, min(MAX_FRAMES_PER_RECORDING_CALL, FRAMES_PER_CALL // batch)
        )
        h = np.zeros((1, batch, STATE_SIZE), dtype=np.float32)
        c = np.zeros((1, batch, STATE_SIZE), dtype=np.float32)
        # Work memory of one call, whatever the recordings' length: the frames of one block of calls.
        block = np.zeros((batch, per_call, CONTEXT_SAMPLES + FRAME_SAMPLES), dtype=np.float32)
        piece = np.zeros((batch, per_call * FRAME_SAMPLES), dtype=np.float32)
        context = np.zeros((batch, CONTEXT_SAMPLES), dtype=np.float32)
        for first in range(0, n_frames, per_call):
            count = min(per_call, n_frames - first)
            start, end = first * FRAME_SAMPLES, (first + count) * FRAME_SAMPLES
            chunk = piece[:, : end - start]
            chunk[:] = 0.0
            taken = max(0, min(width, end) - start)
            chunk[:, :taken] = audio[:, start : start + taken]
            for row, n in enumerate(lengths):  # zero past each recording's end (its last frame padded)
                if n < end:
                    chunk[row, max(0, n - start) :] = 0.0
            frames = chunk.reshape(batch, count, FRAME_SAMPLES)
            rows = block[:, :count]
            rows[:, :, CONTEXT_SAMPLES:] = frames
            rows[:, 1:, :CONTEXT_SAMPLES] = frames[:, :-1, -CONTEXT_SAMPLES:]
            rows[:, 0, :CONTEXT_SAMPLES] = context
            context = frames[:, -1, -CONTEXT_SAMPLES:].copy()
            feed = np.ascontiguousarray(rows).reshape(batch * count, CONTEXT_SAMPLES + FRAME_SAMPLES)
            probs, h, c = self._session.run(["speech_probs", "hn", "cn"], {"input": feed, "h": h, "c": c})
            out[:, first : first + count] = np.asarray(probs, dtype=np.float32).reshape(batch, count)
        return out

    def regions(self, audio: Float32Array, lengths: Sequence[int]) -> list[list[Region]]:
        """Each recording's speech regions (see ``regions_from_probabilities``)."""
        probs = self.probabilities(audio, lengths)
        return [regions_from_probabilities(probs[row, : frames_of(n)], n) for row, n in enumerate(lengths)]


class _Default:
    """The one-thread CPU model of ``speech_probabilities`` / ``speech_regions``, made on first use."""

    _lock = threading.Lock()
    _model: SpeechModel | None = None

    @classmethod
    def get(cls) -> SpeechModel:
        if cls._model is None:
            with cls._lock:
                if cls._model is None:
                    cls._model = SpeechModel()
        return cls._model


def _check_rate(sample_rate: int) -> None:
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"the VAD takes {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")


def speech_probabilities(waveform: Float32Array, sample_rate: int = SAMPLE_RATE) -> npt.NDArray[np.float32]:
    """One speech probability per 32 ms frame (the last frame zero-padded)."""
    _check_rate(sample_rate)
    audio = np.asarray(waveform, dtype=np.float32).reshape(1, -1)
    probs: Float32Array = _Default.get().probabilities(audio, [audio.shape[1]])[0]
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
