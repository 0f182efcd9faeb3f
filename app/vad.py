"""Energy-based voice activity detection: how many seconds of a waveform are speech.

Frames of 30 ms (10 ms hop) count as speech when their energy is within ``dynamic_range_db`` of the
loud end of the recording and above an absolute floor. Deliberately simple and deterministic; it is
used to refuse silence and too-short speech, and to weight segment embeddings.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FRAME_SECONDS = 0.030
HOP_SECONDS = 0.010
ABSOLUTE_FLOOR_DB = -55.0  # dBFS: below this nothing is speech (digital silence, hiss)
DYNAMIC_RANGE_DB = 35.0  # frames this far below the loud end are pauses


# Frames are measured this many at a time: the float64 work array stays a few MB whatever the length.
FRAMES_PER_CHUNK = 512


def frame_energies_db(waveform: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.float64]:
    frame = round(FRAME_SECONDS * sample_rate)
    hop = round(HOP_SECONDS * sample_rate)
    if waveform.size < frame:
        return np.zeros(0)
    n = 1 + (waveform.size - frame) // hop
    # A strided view of every frame: no copy until a chunk of frames is measured.
    frames = np.lib.stride_tricks.sliding_window_view(waveform, frame)[::hop][:n]
    energies = np.empty(n, dtype=np.float64)
    for start in range(0, n, FRAMES_PER_CHUNK):
        chunk = frames[start : start + FRAMES_PER_CHUNK].astype(np.float64)
        chunk -= chunk.mean(axis=1, keepdims=True)
        power = np.mean(chunk * chunk, axis=1)
        energies[start : start + FRAMES_PER_CHUNK] = 10.0 * np.log10(power + 1e-12)
    return energies


def speech_mask(waveform: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.bool_]:
    """One boolean per 10 ms hop: is this frame speech."""
    energies = frame_energies_db(waveform, sample_rate)
    if energies.size == 0:
        return np.zeros(0, dtype=bool)
    loud = float(np.percentile(energies, 95))
    threshold = max(ABSOLUTE_FLOOR_DB, loud - DYNAMIC_RANGE_DB)
    mask = energies > threshold
    # Bridge pauses shorter than 100 ms and drop blips shorter than 50 ms (speech is not 1 frame long).
    mask = _close_gaps(mask, max_gap=10)
    return _drop_short_runs(mask, min_run=5)


def speech_seconds(waveform: npt.NDArray[np.float32], sample_rate: int) -> float:
    return float(speech_mask(waveform, sample_rate).sum()) * HOP_SECONDS


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int, bool]]:
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for i in range(1, mask.size + 1):
        if i == mask.size or mask[i] != mask[start]:
            runs.append((start, i, bool(mask[start])))
            start = i
    return runs


def _close_gaps(mask: npt.NDArray[np.bool_], max_gap: int) -> npt.NDArray[np.bool_]:
    out = mask.copy()
    runs = _runs(mask)
    for k, (a, b, value) in enumerate(runs):
        if not value and 0 < k < len(runs) - 1 and b - a <= max_gap:
            out[a:b] = True
    return out


def _drop_short_runs(mask: npt.NDArray[np.bool_], min_run: int) -> npt.NDArray[np.bool_]:
    out = mask.copy()
    for a, b, value in _runs(mask):
        if value and b - a < min_run:
            out[a:b] = False
    return out
