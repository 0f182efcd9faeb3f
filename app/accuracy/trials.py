"""Trials files, and embedding their recordings as the service does.

Files are embedded through the service's own path: ``app.audio.recording.decode_recording``, then
``EmbeddingEngine.analyze`` on a running engine (speech detection, the speech gate of
``app.speakers.policy.Policy``, the batcher, segmenting and padding), so ``voxgate eval`` scores are the
scores ``/verify`` answers for the same pair of files.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.audio.recording import Recording, decode_recording
from app.core.errors import AudioTooLarge, VoxGateError
from app.core.settings import Settings
from app.engine.engine import EmbeddingEngine, Waiting
from app.speakers.policy import Policy
from app.speakers.scoring import Cohort, Scorer, ScoreType, asnorm

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]


# --- trials --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    target: bool
    a: str
    b: str


class TrialsError(ValueError):
    pass


def read_trials(path: Path) -> list[Trial]:
    """``1|0 path_a path_b`` per line (1 = same speaker); blank lines and ``#`` comments are skipped."""
    trials: list[Trial] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise TrialsError(f"{path}:{number}: expected '<1|0> <path_a> <path_b>', got {text!r}")
        trials.append(Trial(parts[0] == "1", parts[1], parts[2]))
    if not trials:
        raise TrialsError(f"{path}: no trials")
    return trials


# --- embedding files as the service does -----------------------------------------------------------------
@dataclass
class FileResult:
    path: str
    embedding: Float32Array | None = None
    speech_seconds: float = 0.0
    refused: str | None = None  # the problem code the service would answer (or "unreadable")
    detail: str | None = None


@dataclass
class Embedded:
    files: dict[str, FileResult] = field(default_factory=dict)

    def refused_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.refused for r in self.files.values() if r.refused).items()))

    def embedding(self, name: str) -> Float32Array | None:
        found = self.files.get(name)
        return None if found is None else found.embedding


def _decode(path: Path, max_seconds: float, max_bytes: int) -> Recording:
    # The service's upload limit: a file the service would refuse is not read whole, 32 at a time.
    if (size := path.stat().st_size) > max_bytes:
        raise AudioTooLarge(
            f"{size} bytes; the upload limit is {max_bytes} bytes", max_upload_bytes=max_bytes
        )
    return decode_recording(path.read_bytes(), path.name, max_seconds=max_seconds)


async def embed_files(
    engine: EmbeddingEngine,
    names: Sequence[str],
    root: Path,
    policy: Policy,
    limits: Settings,
    *,
    concurrency: int = 32,
    progress: bool | None = None,
    timeout_s: float = 3600.0,
    drop_non_speech: bool | None = None,
) -> Embedded:
    """Embed every file once (relative ``names`` under ``root``), concurrently through the engine's
    batcher, within the service's upload and duration ``limits``; a file the service would refuse is
    recorded with the problem code it would get."""
    from tqdm import tqdm

    result = Embedded()
    gate = asyncio.Semaphore(max(1, concurrency))
    hidden = not sys.stderr.isatty() if progress is None else not progress
    bar = tqdm(total=len(names), desc="embedding", unit="file", file=sys.stderr, disable=hidden)

    async def one(name: str) -> None:
        item = FileResult(name)
        async with gate:
            try:
                recording = await asyncio.to_thread(
                    _decode, root / name, limits.max_audio_seconds, limits.max_upload_bytes
                )
                waiting = Waiting(deadline=time.monotonic() + timeout_s)
                (found,), (item.embedding,) = await engine.analyze(
                    [recording], waiting, gate=policy.speech_gate, drop_non_speech=drop_non_speech
                )
                item.speech_seconds = found.speech_seconds
            except OSError as exc:
                item.refused, item.detail = "unreadable", str(exc)
            except VoxGateError as exc:
                item.refused, item.detail = exc.code, exc.detail
                item.speech_seconds = float(exc.extra.get("speech_seconds", 0.0))
        result.files[name] = item
        bar.update(1)

    try:
        await asyncio.gather(*(one(n) for n in names))
    finally:
        bar.close()
    result.files = {n: result.files[n] for n in names}
    return result


# --- scoring trials ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialScores:
    """Scores of the trials whose both files were embedded, by score type; and the skipped count."""

    labels: npt.NDArray[np.bool_]
    scores: dict[ScoreType, Float64Array]
    kept: list[Trial]
    skipped: int

    def split(self, score_type: ScoreType) -> tuple[Float64Array, Float64Array]:
        s = self.scores[score_type]
        return s[self.labels], s[~self.labels]


def score_trials(trials: Sequence[Trial], embedded: Embedded, cohort: Cohort | None = None) -> TrialScores:
    """Cosine of every usable trial (and AS-Norm with ``cohort``), as ``app.speakers.scoring.Scorer``
    scores."""
    kept = [t for t in trials if embedded.embedding(t.a) is not None and embedded.embedding(t.b) is not None]
    labels = np.array([t.target for t in kept], dtype=bool)
    if not kept:
        return TrialScores(labels, {"cosine": np.zeros(0)}, kept, len(trials))
    names = sorted({t.a for t in kept} | {t.b for t in kept})
    row = {n: i for i, n in enumerate(names)}
    matrix = np.stack([embedded.embedding(n) for n in names])  # type: ignore[misc]
    ia = np.array([row[t.a] for t in kept])
    ib = np.array([row[t.b] for t in kept])
    raw = np.einsum("ij,ij->i", matrix[ia], matrix[ib]).astype(np.float64)
    # The same arithmetic as Scorer.score_many (checked by tests/accuracy/test_evaluation.py).
    scores: dict[ScoreType, Float64Array] = {"cosine": raw}
    if cohort is not None:
        mean, std = cohort.stats(matrix)
        scores["asnorm"] = asnorm(raw, (mean[ia], std[ia]), (mean[ib], std[ib]))
    return TrialScores(labels, scores, kept, len(trials) - len(kept))


def scorer_scores(trials: Iterable[Trial], embedded: Embedded, scorer: Scorer) -> list[float]:
    """Trial by trial through ``Scorer.score`` (the service's call); for checks, slower."""
    out = []
    for t in trials:
        a, b = embedded.embedding(t.a), embedded.embedding(t.b)
        if a is not None and b is not None:
            out.append(scorer.score(b, a).value)
    return out
