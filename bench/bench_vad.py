"""CPU per second of audio of speech detection: one recording per call (the design before the engine
batched it: Silero's sequence graph, one thread, in each decoding thread) against the batched graph the
engine runs (recordings of several requests in one call), in the same run (a benchmark).

Every recording of tests/data/speech, cut to ``--seconds``; each variant runs ``--rounds`` times over
them, interleaved; CPU time (this process, every thread) per second of audio, min/median over rounds,
and the ratio to the one-recording variant.

Usage: python -m bench.bench_vad [--seconds 3] [--rounds 5] [--batches 1,8,32]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import soundfile as sf

from app.audio import vad
from app.engine.backend import session_options

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "tests" / "data" / "speech"
SEQUENCE_GRAPH = REPO / "app" / "assets" / "vad" / "silero_vad_16k_sequence.onnx"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OneRecording:
    """Silero's sequence graph, one recording per call (128 frames a run), one thread: as before."""

    def __init__(self) -> None:
        self.session = ort.InferenceSession(
            str(SEQUENCE_GRAPH), sess_options=session_options(1), providers=["CPUExecutionProvider"]
        )

    def run(self, waves: list[npt.NDArray[np.float32]]) -> None:
        for wave in waves:
            n = vad.frames_of(wave.size)
            frames = np.zeros((n, vad.FRAME_SAMPLES), np.float32)
            frames.reshape(-1)[: wave.size] = wave
            rows = np.zeros((n, vad.CONTEXT_SAMPLES + vad.FRAME_SAMPLES), np.float32)
            rows[:, vad.CONTEXT_SAMPLES :] = frames
            rows[1:, : vad.CONTEXT_SAMPLES] = frames[:-1, -vad.CONTEXT_SAMPLES :]
            h = c = np.zeros((1, 1, vad.STATE_SIZE), np.float32)
            for first in range(0, n, 128):
                _, h, c = self.session.run(None, {"input": rows[first : first + 128], "h": h, "c": c})


class Batched:
    """The engine's speech model: ``batch`` recordings per call, one thread (as on a CPU host)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.model = vad.SpeechModel(options=session_options(1))

    def run(self, waves: list[npt.NDArray[np.float32]]) -> None:
        for start in range(0, len(waves), self.batch):
            chunk = waves[start : start + self.batch]
            longest = max(w.size for w in chunk)
            audio = np.zeros((len(chunk), longest), np.float32)
            for row, wave in enumerate(chunk):
                audio[row, : wave.size] = wave
            self.model.probabilities(audio, [w.size for w in chunk])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", default="1,8,32")
    args = parser.parse_args(argv)
    waves = []
    for path in sorted(SPEECH.rglob("*.flac")):
        wave, _ = sf.read(path, dtype="float32")
        waves.append(np.ascontiguousarray(wave[: round(args.seconds * vad.SAMPLE_RATE)]))
    audio_s = sum(w.size for w in waves) / vad.SAMPLE_RATE
    variants: dict[str, OneRecording | Batched] = {"one recording a call (before)": OneRecording()}
    for batch in (int(b) for b in args.batches.split(",")):
        variants[f"batched, {batch} a call (engine)"] = Batched(batch)
    for variant in variants.values():
        variant.run(waves[:4])  # one-time costs
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            t0 = cpu_s()
            variant.run(waves)
            times[name].append(1000.0 * (cpu_s() - t0) / audio_s)
    base = statistics.median(next(iter(times.values())))
    rounds = f"{args.rounds} rounds"
    print(f"{len(waves)} recordings of up to {args.seconds:g} s ({audio_s:.0f} s of audio), {rounds}")
    print("\n| variant | CPU-ms per s of audio (min / median) | vs before |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {min(values):.2f} / {median:.2f} | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
