"""CPU per decoded upload: FLAC through dr_flac (what ``app.audio.decode`` uses) against libsndfile (what
it used before), in the same run (a benchmark). WAV is decoded by libsndfile either way and shown for
scale.

Every recording of examples/audio, cut to ``--seconds`` and encoded as 16-bit FLAC (and WAV); each
variant decodes all of them ``--rounds`` times, interleaved; CPU time (this process) per upload, min and
median over rounds, and the ratio to libsndfile. Every variant's waveform is checked to be the same.

Usage: python -m bench.bench_decode [--seconds 3] [--rounds 7]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from app.audio import decode

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "audio"


def encoded(seconds: float, fmt: str) -> list[bytes]:
    out = []
    for path in sorted(EXAMPLES.glob("*.flac")):
        wave, rate = sf.read(path, dtype="float32")
        buf = io.BytesIO()
        sf.write(buf, wave[: round(seconds * rate)], rate, format=fmt, subtype="PCM_16")
        out.append(buf.getvalue())
    return out


def with_libsndfile(data: bytes) -> npt.NDArray[np.float32]:
    """``decode_audio`` as it was: libsndfile for every container."""
    samples = decode._LibsndfileSamples(data)
    header = decode._header(samples, "flac", None)
    return decode._decode_blocks(samples, header, None, None)


def with_service(data: bytes) -> npt.NDArray[np.float32]:
    return decode.decode_audio(data).waveform


def cpu_ms_per_upload(fn: Callable[[bytes], object], uploads: list[bytes]) -> float:
    start = time.process_time()
    for data in uploads:
        fn(data)
    return (time.process_time() - start) * 1000.0 / len(uploads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    flac, wav = encoded(args.seconds, "FLAC"), encoded(args.seconds, "WAV")
    for data in flac:
        np.testing.assert_array_equal(with_service(data), with_libsndfile(data))
    variants: dict[str, tuple[Callable[[bytes], object], list[bytes]]] = {
        "FLAC, libsndfile (before)": (with_libsndfile, flac),
        "FLAC, dr_flac (now)": (with_service, flac),
        "WAV, libsndfile": (with_service, wav),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (fn, uploads) in variants.items():
            times[name].append(cpu_ms_per_upload(fn, uploads * 20))
    base = statistics.median(times["FLAC, libsndfile (before)"])
    print(f"{len(flac)} recordings of {args.seconds:g} s, {args.rounds} rounds; CPU-ms per upload\n")
    print("| variant | min | median | vs libsndfile FLAC |\n| --- | --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {min(values):.3f} | {median:.3f} | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
