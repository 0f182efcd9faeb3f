"""Measuring the service on labelled trials: error rates, DET curves, and embedding files as the service does.

Used by ``voxgate eval``, ``voxgate calibrate`` and ``voxgate cohort build`` (``app.cli.accuracy``).

**Definitions** (a trial is accepted when its score >= the threshold):

* FAR(t) = non-target trials with score >= t / non-target trials; FRR(t) = target trials with
  score < t / target trials. Between two consecutive distinct scores u_(i-1) < t <= u_i both rates are
  constant, so every threshold falls in one of these intervals; an interval's *representative
  threshold* is its midpoint (the lowest interval: its upper end; the highest, above every score: just
  above the largest score).
* **EER**: going up the intervals, FAR - FRR falls from 1 to -1. At the first interval where it is <= 0:
  if it is 0 there, EER = FAR = FRR and the threshold is that interval's midpoint (with separated
  classes, the middle of the gap between them); otherwise EER is where the segment joining the two
  (FAR, FRR) points on either side crosses FAR = FRR, and the threshold the score between them.
* **minDCF** at p_target: min over thresholds of (C_miss p FRR + C_fa (1 - p) FAR) / min(C_miss p,
  C_fa (1 - p)), C_miss = C_fa = 1 (NIST SRE's normalised detection cost).
* **FRR at FAR = x**: the lowest FRR among thresholds whose FAR <= x, and that threshold. With fewer
  than 1/x non-target trials it is the FRR at no false accept at all (``far_resolution`` says so).

Files are embedded through the service's own path: ``app.audio.decode_audio``, the VAD (``app.audio.vad``),
the speech gate of ``app.speakers.operations.Policy``, and ``app.speakers.embed_recordings`` on a running
``EmbeddingEngine`` (its batcher, segmenting and padding), so ``voxgate eval`` scores are the scores
``/verify`` answers for the same pair of files.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from app.audio.decode import TARGET_SAMPLE_RATE, decode_audio
from app.audio.vad import regions_seconds, speech_regions
from app.core.errors import AudioTooLarge, VoxGateError
from app.core.settings import Settings
from app.engine.engine import EmbeddingEngine
from app.speakers.operations import Policy, Recording, Waiting, embed_recordings
from app.speakers.scoring import Cohort, Scorer, ScoreType, asnorm

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

DCF_TARGETS = (0.01, 0.05)
FAR_TARGETS = (0.01, 0.001)


# --- error rates ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    far: float
    frr: float


@dataclass(frozen=True)
class _Sweep:
    """Every threshold interval (u_(i-1), u_i] of the scores, with its error rates."""

    lower: Float64Array  # u_(i-1); -inf for the first
    upper: Float64Array  # u_i; +inf for the last
    far: Float64Array
    frr: Float64Array

    def threshold(self, i: int) -> float:
        lo, hi = float(self.lower[i]), float(self.upper[i])
        if math.isinf(lo):
            return hi
        if math.isinf(hi):
            return float(np.nextafter(lo, np.inf))
        return (lo + hi) / 2.0

    def point(self, i: int) -> OperatingPoint:
        return OperatingPoint(self.threshold(i), float(self.far[i]), float(self.frr[i]))


def _scores(values: npt.ArrayLike, what: str) -> Float64Array:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"no {what} scores")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} scores must be finite")
    return np.sort(a)


def _sweep(target: npt.ArrayLike, nontarget: npt.ArrayLike) -> _Sweep:
    tar, non = _scores(target, "target"), _scores(nontarget, "non-target")
    u = np.unique(np.concatenate([tar, non]))
    uppers = np.concatenate([u, [np.inf]])
    lowers = np.concatenate([[-np.inf], u])
    far = (non.size - np.searchsorted(non, uppers, side="left")) / non.size
    frr = np.searchsorted(tar, uppers, side="left") / tar.size
    return _Sweep(lowers, uppers, far.astype(np.float64), frr.astype(np.float64))


def error_rates(target: npt.ArrayLike, nontarget: npt.ArrayLike, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) when scores >= ``threshold`` are accepted."""
    tar, non = _scores(target, "target"), _scores(nontarget, "non-target")
    return float(np.mean(non >= threshold)), float(np.mean(tar < threshold))


def eer(target: npt.ArrayLike, nontarget: npt.ArrayLike) -> tuple[float, float]:
    """(equal error rate, threshold at it); see the module docstring for the exact definition."""
    s = _sweep(target, nontarget)
    d = s.far - s.frr
    j = int(np.argmax(d <= 0.0))  # d[-1] = -1, so there is one
    if d[j] == 0.0:
        return float(s.far[j]), s.threshold(j)
    # d[j-1] > 0 > d[j] (j >= 1 since d[0] = 1): where the segment between the two points crosses.
    lam = d[j - 1] / (d[j - 1] - d[j])
    value = s.far[j - 1] + lam * (s.far[j] - s.far[j - 1])
    return float(value), float(s.upper[j - 1])


def min_dcf(
    target: npt.ArrayLike, nontarget: npt.ArrayLike, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, OperatingPoint]:
    """(normalised minimum detection cost, the operating point reaching it)."""
    s = _sweep(target, nontarget)
    cost = (c_miss * p_target * s.frr + c_fa * (1 - p_target) * s.far) / min(
        c_miss * p_target, c_fa * (1 - p_target)
    )
    i = int(np.argmin(cost))
    return float(cost[i]), s.point(i)


def frr_at_far(target: npt.ArrayLike, nontarget: npt.ArrayLike, far: float) -> OperatingPoint:
    """The lowest-FRR operating point whose FAR is at most ``far``."""
    s = _sweep(target, nontarget)
    i = int(np.argmax(s.far <= far))  # far[-1] = 0: there is one
    return s.point(i)


def det_curve(target: npt.ArrayLike, nontarget: npt.ArrayLike) -> tuple[Float64Array, Float64Array]:
    """(FAR, FRR) of every threshold interval, FAR falling."""
    s = _sweep(target, nontarget)
    return s.far, s.frr


@dataclass(frozen=True)
class Metrics:
    """The figures of one score type on one set of trials."""

    score_type: ScoreType
    target_trials: int
    nontarget_trials: int
    eer: float
    eer_threshold: float
    min_dcf: dict[float, tuple[float, OperatingPoint]]
    frr_at_far: dict[float, OperatingPoint]
    threshold: OperatingPoint | None  # at the configured threshold, when there is one
    threshold_source: str | None

    @property
    def far_resolution(self) -> float:
        return 1.0 / self.nontarget_trials

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "score_type": self.score_type,
            "target_trials": self.target_trials,
            "nontarget_trials": self.nontarget_trials,
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "min_dcf": {
                f"{p:g}": {"value": v, "threshold": op.threshold, "far": op.far, "frr": op.frr}
                for p, (v, op) in self.min_dcf.items()
            },
            "frr_at_far": {
                f"{x:g}": {
                    "frr": op.frr,
                    "threshold": op.threshold,
                    "far": op.far,
                    "measurable": x >= self.far_resolution,
                }
                for x, op in self.frr_at_far.items()
            },
            "far_resolution": self.far_resolution,
            "threshold": None,
        }
        if self.threshold is not None:
            out["threshold"] = {
                "value": self.threshold.threshold,
                "source": self.threshold_source,
                "far": self.threshold.far,
                "frr": self.threshold.frr,
            }
        return out


def compute_metrics(
    score_type: ScoreType,
    target: npt.ArrayLike,
    nontarget: npt.ArrayLike,
    threshold: float | None = None,
    threshold_source: str | None = None,
) -> Metrics:
    tar, non = _scores(target, "target"), _scores(nontarget, "non-target")
    value, at = eer(tar, non)
    current = None
    if threshold is not None:
        far, frr = error_rates(tar, non, threshold)
        current = OperatingPoint(threshold, far, frr)
    return Metrics(
        score_type=score_type,
        target_trials=int(tar.size),
        nontarget_trials=int(non.size),
        eer=value,
        eer_threshold=at,
        min_dcf={p: min_dcf(tar, non, p) for p in DCF_TARGETS},
        frr_at_far={x: frr_at_far(tar, non, x) for x in FAR_TARGETS},
        threshold=current,
        threshold_source=threshold_source,
    )


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


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    audio = decode_audio(path.read_bytes(), max_seconds=max_seconds)
    regions = speech_regions(audio.waveform, TARGET_SAMPLE_RATE)
    return Recording(path.name, audio.waveform, regions_seconds(regions), regions)


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
                item.speech_seconds = recording.speech_seconds
                policy.check_speech(recording)
                waiting = Waiting(deadline=time.monotonic() + timeout_s)
                (item.embedding,) = await embed_recordings(
                    engine, [recording], waiting, drop_non_speech=drop_non_speech
                )
            except OSError as exc:
                item.refused, item.detail = "unreadable", str(exc)
            except VoxGateError as exc:
                item.refused, item.detail = exc.code, exc.detail
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
    """Cosine of every usable trial (and AS-Norm with ``cohort``), as ``app.speakers.scoring.Scorer`` scores."""
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
    # The same arithmetic as Scorer.score_many (checked by tests/test_evaluation.py).
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


# --- the DET plot --------------------------------------------------------------------------------------
DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


def plot_det(
    path: Path,
    curves: Sequence[tuple[str, Float64Array, Float64Array, OperatingPoint | None]],
    histograms: Sequence[tuple[str, Float64Array, Float64Array, float | None]],
    title: str,
) -> None:
    """DET curves on normal-deviate axes (left) and score histograms of both classes (right).

    ``curves``: (label, target scores, non-target scores, operating point at the threshold in use);
    ``histograms``: (label, target scores, non-target scores, threshold).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # the serving install has no matplotlib
        raise RuntimeError("--plot needs matplotlib: pip install 'voxgate[eval]'") from exc

    nd = NormalDist()
    lo, hi = 0.0005, 0.5

    def deviate(p: Float64Array) -> Float64Array:
        clipped = np.clip(p, lo, hi)
        return np.array([nd.inv_cdf(float(x)) for x in clipped])

    width = 5.2 + 4.4 * len(histograms) if histograms else 7.6
    fig, axes = plt.subplots(1, 1 + len(histograms), figsize=(width, 4.6), dpi=90)
    axes = np.atleast_1d(axes)
    det = axes[0]
    for label, tar, non, point in curves:
        far, frr = det_curve(tar, non)
        value, _ = eer(tar, non)
        (line,) = det.plot(
            deviate(far), deviate(frr), drawstyle="steps-post", lw=1.6, label=f"{label} (EER {value:.2%})"
        )
        if point is not None:
            det.plot(
                deviate(np.array([point.far])),
                deviate(np.array([point.frr])),
                "o",
                color=line.get_color(),
                ms=6,
                mfc="none",
                mew=1.6,
            )
    ticks = deviate(np.array(DET_TICKS))
    labels = [f"{100 * t:g}" for t in DET_TICKS]
    det.set_xticks(ticks, labels)
    det.set_yticks(ticks, labels)
    det.set_xlim(deviate(np.array([lo]))[0], deviate(np.array([hi]))[0])
    det.set_ylim(deviate(np.array([lo]))[0], deviate(np.array([hi]))[0])
    det.plot(det.get_xlim(), det.get_ylim(), ":", color="0.6", lw=0.8)
    det.set_xlabel("false-accept rate (%)")
    det.set_ylabel("false-reject rate (%)")
    det.set_title("DET (o = threshold in use)", fontsize=10)
    det.grid(True, color="0.85", lw=0.6)
    if histograms:
        det.legend(fontsize=7, loc="upper right")
    else:  # many curves: the legend beside the axes
        det.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.text(0.01, 0.01, "error rates of 0 are drawn on the axes' edge", fontsize=6, color="0.4")
    for ax, (label, tar, non, threshold) in zip(axes[1:], histograms, strict=True):
        both = np.concatenate([tar, non])
        bins = np.linspace(float(both.min()), float(both.max()), 40)
        ax.hist(non, bins=bins, alpha=0.6, color="tab:red", label=f"different speakers ({non.size})")
        ax.hist(tar, bins=bins, alpha=0.6, color="tab:blue", label=f"same speaker ({tar.size})")
        if threshold is not None:
            ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"threshold {threshold:.3f}")
        ax.set_xlabel(f"{label} score")
        ax.set_ylabel("trials")
        ax.set_title(f"{label} scores", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
