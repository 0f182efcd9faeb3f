"""Cutting long audio into segments and combining segment embeddings: the one place this logic lives.

Both the batching engine (``app.engine.engine``) and the synchronous CLI path (``embed_waveforms``) plan
segments here and average them here, so ``voxgate embed`` and the service give the same vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.audio.vad import Region, overlap_samples, speech_regions
from app.engine.backend import EmbeddingBackend, run_padded
from app.engine.manifest import ModelManifest

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class SegmentPolicy:
    """How a model wants long audio cut (from its manifest)."""

    sample_rate: int
    segment_seconds: float | None
    overlap_seconds: float = 0.0

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> SegmentPolicy:
        return cls(
            sample_rate=manifest.sample_rate,
            segment_seconds=manifest.segment_seconds,
            overlap_seconds=manifest.segment_overlap_seconds,
        )

    @property
    def segment_samples(self) -> int | None:
        if self.segment_seconds is None:
            return None
        return max(1, round(self.segment_seconds * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        seg = self.segment_samples
        if seg is None:
            raise ValueError("no segmenting configured")
        overlap = round(self.overlap_seconds * self.sample_rate)
        # An overlap as long as the segment would never advance; at least a tenth of a segment.
        return max(seg - overlap, max(1, seg // 10))


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """Where each segment starts/ends (samples) and how much its embedding counts in the average."""

    bounds: tuple[tuple[int, int], ...]
    weights: tuple[float, ...]

    def cut(self, waveform: Float32Array) -> list[Float32Array]:
        return [waveform[a:b] for a, b in self.bounds]


def segment_bounds(n_samples: int, policy: SegmentPolicy) -> list[tuple[int, int]]:
    """Segments of ``segment_samples`` every ``hop_samples``; the last one ends exactly at the end.

    Ending the last segment at the end (instead of a short tail) keeps every segment the same length,
    which batches without padding and never gives a tail of a few frames its own embedding.
    """
    seg = policy.segment_samples
    if seg is None or n_samples <= seg:
        return [(0, n_samples)]
    hop = policy.hop_samples
    bounds: list[tuple[int, int]] = []
    start = 0
    while start + seg < n_samples:
        bounds.append((start, start + seg))
        start += hop
    last = (n_samples - seg, n_samples)
    if bounds[-1] != last:
        bounds.append(last)
    return bounds


def speech_weights(
    waveform: Float32Array,
    bounds: list[tuple[int, int]],
    sample_rate: int,
    regions: Sequence[Region] | None = None,
) -> list[float]:
    """Seconds of speech inside each segment; equal weights when no segment has any. ``regions``: where
    the recording's speech is, when its intake already found it (else the VAD runs here)."""
    if len(bounds) == 1:
        return [1.0]
    if regions is None:
        regions = speech_regions(waveform, sample_rate)
    weights = [overlap_samples(regions, a, b) / sample_rate for a, b in bounds]
    if sum(weights) <= 0.0:
        # Nothing the VAD calls speech (the API refuses such audio; the CLI does not): plain average.
        return [1.0] * len(bounds)
    return weights


def plan_segments(
    waveform: Float32Array, policy: SegmentPolicy, regions: Sequence[Region] | None = None
) -> SegmentPlan:
    bounds = segment_bounds(int(waveform.shape[0]), policy)
    weights = speech_weights(waveform, bounds, policy.sample_rate, regions)
    return SegmentPlan(bounds=tuple(bounds), weights=tuple(weights))


def combine_segments(embeddings: Float32Array, weights: tuple[float, ...]) -> Float32Array:
    """Weighted average of segment embeddings [S, D] -> [D] (raw, not normalised)."""
    if embeddings.shape[0] == 1:
        single: Float32Array = np.array(embeddings[0], dtype=np.float32)
        return single
    w = np.asarray(weights, dtype=np.float64)
    # Segments without speech get weight 0 unless all do (see speech_weights).
    combined: Float32Array = ((embeddings.astype(np.float64) * w[:, None]).sum(axis=0) / w.sum()).astype(
        np.float32
    )
    return combined


def embed_waveforms(
    backend: EmbeddingBackend,
    waveforms: list[Float32Array],
    policy: SegmentPolicy,
    *,
    max_batch_size: int = 16,
) -> list[Float32Array]:
    """Embed waveforms synchronously, no batcher (the ``voxgate embed`` CLI and reference checks).

    Segments of all waveforms are sorted by length and run in batches of similar length, so the
    result is the same (within float tolerance) as the engine's.
    """
    plans = [plan_segments(np.asarray(w, dtype=np.float32), policy) for w in waveforms]
    items: list[tuple[int, int, Float32Array]] = []  # (waveform index, segment index, samples)
    for wi, (w, plan) in enumerate(zip(waveforms, plans, strict=True)):
        for si, seg in enumerate(plan.cut(np.asarray(w, dtype=np.float32))):
            items.append((wi, si, seg))
    items.sort(key=lambda item: item[2].shape[0])
    results: list[list[Float32Array | None]] = [[None] * len(p.bounds) for p in plans]
    for start in range(0, len(items), max_batch_size):
        chunk = items[start : start + max_batch_size]
        segs = [seg for _, _, seg in chunk]
        out, _ = run_padded(backend, segs)
        for row, (wi, si, _) in enumerate(chunk):
            results[wi][si] = out[row]
    combined: list[Float32Array] = []
    for plan, rows in zip(plans, results, strict=True):
        stacked = np.stack([r for r in rows if r is not None])
        combined.append(combine_segments(stacked, plan.weights))
    return combined
