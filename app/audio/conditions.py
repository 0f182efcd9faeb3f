"""The recording conditions the service accepts, derived from a clean recording: one definition for the
int8 export's calibration and accuracy gate, the start-up self-check's probe, the tests and benchmarks.

An int8 graph's activation ranges are fixed at export, so it is only as good as the inputs its
calibration saw. Users send more than wideband read speech; each condition below is a way their audio
differs from it, derived from speech we have (16 kHz mono float32 in, the same out; deterministic):

* ``as recorded``: unchanged.
* ``telephone band``: what a call centre sends: the speech as an 8 kHz G.711 mu-law WAV (soxr down to
  8 kHz, mu-law by libsndfile), decoded by the service's own upload decoder (soxr back to 16 kHz), so
  nothing is left above 4 kHz. NeMo's log-mel front end normalises each mel band over the utterance;
  bands that hold almost nothing then turn a trace of energy at the utterance's edges into values of
  about sqrt(frames) (24 for 6 s, measured), far outside what wideband speech gives, and every layer
  after it sees activations 3-5x wider. An int8 graph calibrated on wideband speech only clips them and
  gives embeddings that have little to do with float32's (cosine 0.4, measured).
* ``-20 dB``: a quiet microphone (about -45 dBFS RMS for the repository's speech). The log guard of the
  front end flattens quiet bands, so this reaches values louder speech never does.
* ``+12 dB over full scale, clipped``: amplified to 4x its peak and clipped, like an overdriven input.
* ``noise at 10 dB SNR``: white Gaussian noise at a tenth of the recording's mean power (fixed seed).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from app.audio.decode import RESAMPLE_QUALITY, TARGET_SAMPLE_RATE, decode_audio

Float32Array = npt.NDArray[np.float32]

AS_RECORDED = "as recorded"
TELEPHONE = "telephone band"
QUIETER = "-20 dB"
CLIPPED = "+12 dB over full scale, clipped"
NOISY = "noise at 10 dB SNR"

TELEPHONE_SAMPLE_RATE = 8000
NOISE_SNR_DB = 10.0
NOISE_SEED = 0


def _as_recorded(wave: Float32Array) -> Float32Array:
    return wave


def _telephone(wave: Float32Array) -> Float32Array:
    narrow = soxr.resample(wave, TARGET_SAMPLE_RATE, TELEPHONE_SAMPLE_RATE, quality=RESAMPLE_QUALITY)
    file = io.BytesIO()
    sf.write(file, np.clip(narrow, -1.0, 1.0), TELEPHONE_SAMPLE_RATE, format="WAV", subtype="ULAW")
    return decode_audio(file.getvalue()).waveform[: wave.size]


def _quieter(wave: Float32Array) -> Float32Array:
    return (wave * np.float32(0.1)).astype(np.float32)


def _louder_clipped(wave: Float32Array) -> Float32Array:
    peak = float(np.abs(wave).max(initial=0.0))
    gain = 4.0 / peak if peak > 0.0 else 1.0
    louder: Float32Array = np.clip(wave * np.float32(gain), -1.0, 1.0).astype(np.float32)
    return louder


def _noisy(wave: Float32Array) -> Float32Array:
    power = float(np.mean(np.square(wave, dtype=np.float64))) if wave.size else 0.0
    noise = np.random.default_rng(NOISE_SEED).standard_normal(wave.size)
    noisy: Float32Array = np.clip(
        wave + noise * np.sqrt(power / 10.0 ** (NOISE_SNR_DB / 10.0)), -1.0, 1.0
    ).astype(np.float32)
    return noisy


@dataclass(frozen=True)
class Condition:
    name: str
    derive: Callable[[Float32Array], Float32Array]


# In the order manifests list them; the first is the recording itself.
CONDITIONS: tuple[Condition, ...] = (
    Condition(AS_RECORDED, _as_recorded),
    Condition(TELEPHONE, _telephone),
    Condition(QUIETER, _quieter),
    Condition(CLIPPED, _louder_clipped),
    Condition(NOISY, _noisy),
)
CONDITION_NAMES = tuple(c.name for c in CONDITIONS)


def derive(condition: str, wave: Float32Array) -> Float32Array:
    """``wave`` (16 kHz mono float32) as it reaches the graph in ``condition`` (a ``CONDITION_NAMES``)."""
    for known in CONDITIONS:
        if known.name == condition:
            return known.derive(wave)
    raise ValueError(f"unknown recording condition {condition!r}; known: {', '.join(CONDITION_NAMES)}")
