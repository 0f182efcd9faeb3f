"""Error rates of a detector on labelled trials: EER, minDCF, FRR at a FAR, DET curves.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from app.speakers.scoring import ScoreType

Float64Array = npt.NDArray[np.float64]

DCF_TARGETS = (0.01, 0.05)
FAR_TARGETS = (0.01, 0.001)


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
