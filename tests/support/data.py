"""Where the test data lives and the check that it is all there; the real speech (FLAC, with WAV bytes made
in memory), the NeMo conformance fixtures, and non-speech signals.

Nothing here reads data at import time: a missing data file must reach ``check_test_data()`` (run by
conftest before collection) and give one message, not an import error in every module.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

# --- where things are ---------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_DATA = REPO_ROOT / "tests" / "data"
SPEECH_DIR = TEST_DATA / "speech"
NEMO_FIXTURES = TEST_DATA / "nemo"
EXAMPLES_AUDIO = REPO_ROOT / "examples" / "audio"
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "default"
DEPLOY = REPO_ROOT / "deploy"
# Every data file the tests read (tests/data and examples/audio), with its sha256, relative to REPO_ROOT.
DATA_CHECKSUMS = TEST_DATA / "SHA256SUMS"
SPEECH_SUFFIX = ".flac"
SAMPLE_RATE = 16000


# --- is the data there? ---------------------------------------------------------------------------------
def checksum_entries(listing: Path = DATA_CHECKSUMS) -> list[tuple[str, str]]:
    """(sha256, path relative to the repository root) for every line of a ``sha256sum`` listing."""
    entries = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, _, name = line.partition("  ")
            entries.append((digest, name))
    return entries


def check_test_data(root: Path = REPO_ROOT) -> list[str]:
    """What is missing or damaged among the data files the tests read (empty: all there and intact)."""
    listing = root / DATA_CHECKSUMS.relative_to(REPO_ROOT)
    if not listing.is_file():
        data = root / TEST_DATA.relative_to(REPO_ROOT)
        return [f"{data if not data.is_dir() else listing} is missing"]
    problems = []
    for digest, name in checksum_entries(listing):
        path = root / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{path} is damaged (sha256 differs from {listing.name})")
    return problems


def missing_data_message(problems: list[str], root: Path = REPO_ROOT) -> str:
    shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
    return (
        f"VoxGate test data incomplete ({len(problems)} problem(s)): "
        + "; ".join(shown)
        + f". The test data is part of the repository (tests/data, examples/audio): re-clone it, or restore"
        f" the files with `git -C {root} checkout -- tests/data examples/audio`."
    )


# --- real speech ----------------------------------------------------------------------------------------
def speech_paths() -> list[Path]:
    """Every recording of the speech set, sorted (``SPEAKER/UTTERANCE.flac``)."""
    return sorted(SPEECH_DIR.glob(f"*/*{SPEECH_SUFFIX}"))


def speech_files() -> dict[str, list[Path]]:
    """The recordings of each speaker, by speaker label (the folder name)."""
    return {d.name: sorted(d.glob(f"*{SPEECH_SUFFIX}")) for d in sorted(SPEECH_DIR.iterdir()) if d.is_dir()}


@functools.lru_cache(maxsize=128)
def wav_bytes(path: Path) -> bytes:
    """A 16-bit recording as a 16-bit PCM WAV file in memory (for tests that send or cut WAV bytes).

    For the speech set this is the original WAV byte for byte (its sha256 is in files.tsv, checked by
    tests/support/test_support.py).
    """
    samples, rate = sf.read(path, dtype="int16")
    return encode(samples, rate, "WAV", "PCM_16")


def wav_name(path: Path) -> str:
    return path.with_suffix(".wav").name


def wav_part(path: Path, field: str = "audio") -> tuple[str, tuple[str, bytes, str]]:
    """A multipart file part holding the recording as WAV, as the tests have always sent it."""
    return (field, (wav_name(path), wav_bytes(path), "audio/wav"))


def short_speech(seconds: float, path: Path | None = None) -> np.ndarray:
    """``seconds`` of the loudest stretch of a real recording, padded with 1 s of silence each side.

    Default recording: the first of speaker vctk_p225.
    """
    data, _ = sf.read(path or speech_files()["vctk_p225"][0], dtype="float32")
    n = int(seconds * 16000)
    energy = np.convolve(data**2, np.ones(n), mode="valid")
    start = int(np.argmax(energy))
    pad = np.zeros(16000, dtype=np.float32)
    return np.concatenate([pad, data[start : start + n], pad])


def encode(
    samples: np.ndarray, sample_rate: int = 16000, fmt: str = "WAV", subtype: str | None = None
) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


# --- NeMo conformance fixtures --------------------------------------------------------------------------
# The models of tests/data/nemo/manifest.json (sorted); tests/support/test_support.py checks the list
# against it.
MODELS = ("SpeakerNet_verification_3x2x256-reduced", "ecapa_tdnn-reduced", "titanet-large-reduced")
UTTERANCES = ("utt1", "utt2", "utt3", "utt4")


@functools.lru_cache(maxsize=1)
def _nemo_manifest_text() -> str:
    return (NEMO_FIXTURES / "manifest.json").read_text(encoding="utf-8")


def nemo_manifest() -> dict[str, Any]:
    """The fixtures' manifest.json (a fresh copy each call: callers may change it)."""
    result: dict[str, Any] = json.loads(_nemo_manifest_text())
    return result


def nemo_path(model: str) -> Path:
    return NEMO_FIXTURES / model / f"{model}.nemo"


def audio(utt: str) -> npt.NDArray[np.float32]:
    """The float32 waveform of a fixture utterance as NeMo reads it: int16 / 32768 (exact in float32).

    The fixture set's ``audio/<utt>.f32.npy`` held exactly this; it is derived from the FLAC instead.
    """
    samples, rate = sf.read(NEMO_FIXTURES / "audio" / f"{utt}.flac", dtype="int16")
    assert rate == SAMPLE_RATE
    return samples.astype(np.float32) / np.float32(32768)


def reference(model: str, name: str) -> np.ndarray:
    """NeMo's own output ``name`` (e.g. ``utt1.emb``, ``batch4.emb``) for a fixture model."""
    return np.load(NEMO_FIXTURES / model / f"{name}.npy")


# --- non-speech signals (the VAD must find no speech in them) ---------------------------------------------
@functools.lru_cache(maxsize=4)
def non_speech_signals(seconds: float = 5.0) -> dict[str, npt.NDArray[np.float32]]:
    """Silence, noise, tones, hum and a synthetic piece of music (piano-like notes and a drum), at 16 kHz."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    pink = np.fft.irfft(spectrum, n)
    freqs = (220, 440, 880, 1760, 3520)
    tones = np.concatenate([np.sin(2 * np.pi * f * t[: n // len(freqs)]) for f in freqs])
    music = np.zeros(n)
    for i in range(int(seconds * 4)):
        start = int(i * SAMPLE_RATE / 4)
        d = t[: n - start]
        for semi in (0, 4, 7) if i % 4 == 0 else (12 + int(rng.integers(0, 12)),):
            f = 440 * 2 ** ((48 + semi - 69) / 12)
            note = sum(np.exp(-3 * k * d) * np.sin(2 * np.pi * f * k * d) / k for k in range(1, 7))
            music[start:] += note * np.exp(-2.5 * d)
        if i % 2 == 0:
            m = min(n - start, 800)
            music[start : start + m] += rng.standard_normal(m) * np.exp(-np.arange(m) / 200)
    signals = {
        "silence": np.zeros(n),
        "white_noise": 0.1 * rng.standard_normal(n),
        "loud_white_noise": 0.3 * rng.standard_normal(n),
        "pink_noise": 0.1 * pink / pink.std(),
        "steady_tones": 0.3 * np.pad(tones, (0, n - tones.size)),
        "hum": 0.2 * sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 8)),
        "music": 0.3 * music / np.abs(music).max(),
    }
    return {name: np.asarray(x, dtype=np.float32) for name, x in signals.items()}


# --- the int8 export the tests share (conftest: ``titanet_small_int8``) ----------------------------------
# TitaNet-S (the full-size architecture, random weights) quantised on four speakers: the default split
# holds out vctk_p225 for the gate and calibrates on the other three. The rest it never hears: the
# self-check probe's readers (1688, 1998) and vctk_p226, one corpus each way.
INT8_EXPORT_SPEAKERS = ("librispeech_2033", "librispeech_3080", "librispeech_533", "vctk_p225")
INT8_GATE_SPEAKERS = ["vctk_p225"]
INT8_UNSEEN_SPEAKERS = ("librispeech_1688", "librispeech_1998", "vctk_p226")
# Recordings per speaker the export uses (keeps the suite quick: 12 calibrate, 4 gate).
INT8_RECORDINGS_PER_SPEAKER = 4


def speaker_folders(speakers: tuple[str, ...] | list[str], dst: Path, per_speaker: int | None = None) -> Path:
    """A copy of the given speakers' recordings (the first ``per_speaker`` of each) in speaker folders."""
    for speaker in speakers:
        (dst / speaker).mkdir(parents=True)
        for path in speech_files()[speaker][:per_speaker]:
            shutil.copyfile(path, dst / speaker / path.name)
    return dst
