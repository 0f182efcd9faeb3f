"""The DET plot of ``voxgate eval --plot``: matplotlib is imported only here, and only when drawing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from app.accuracy.metrics import OperatingPoint, det_curve, eer

Float64Array = npt.NDArray[np.float64]

# Ticks of the normal-deviate axes (error rates); those too close to the 0 or 100 % lines are left out.
DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999)
# Room (in normal deviates) between the frame and the outermost line or marker, so none is clipped.
MARGIN = 0.3
# Ticks closer than this (in normal deviates) would print over each other.
MIN_TICK_GAP = 0.25
# The upper end of the axes when no operating point lies above it: the usual DET window.
USUAL_TOP = 0.5
MATPLOTLIB_MISSING = (
    "--plot needs matplotlib, which the serving install leaves out: in this repository, run "
    "`pip install -e '.[eval]'` in the environment voxgate runs from (`make setup` does)"
)


def require_matplotlib() -> None:
    """Refuse ``--plot`` before any work when matplotlib is missing, with the command that installs it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:  # the serving install has no matplotlib
        raise RuntimeError(MATPLOTLIB_MISSING) from exc


@dataclass(frozen=True)
class DetAxes:
    """Where a DET plot draws error rates, in normal deviates (probit), on both axes.

    A rate of exactly 0 (or 1) has no normal deviate. It is drawn on a dashed line labelled 0 (100) at
    half the smallest non-zero rate N trials can give (1/N), and that line lies ``MARGIN`` inside the
    frame: a curve at 0 % error and a marker on it stay visible, unclipped, and read as 0. The top
    reaches every operating point (a noisy condition's 96-100 % false rejects included)."""

    zero: float  # the rate drawn as 0 (and 1 - zero as 100 %)
    top: float  # the largest rate inside the axes
    ticks: tuple[float, ...]

    @classmethod
    def fit(cls, trials: int, rates: Sequence[float]) -> DetAxes:
        """Axes for curves of at most ``trials`` trials of a class, showing every rate of ``rates``."""
        zero = 0.5 / max(trials, 1)
        highest = max((r for r in rates if np.isfinite(r)), default=0.0)
        top = 1.0 - zero if highest >= 1.0 - zero else max(USUAL_TOP, highest)
        hundred = top >= 1.0 - zero
        ticks = [zero]
        for t in DET_TICKS:  # readable: none within MIN_TICK_GAP of another, or of the 100 % line
            if _deviate(t) - _deviate(ticks[-1]) >= MIN_TICK_GAP and _deviate(t) <= _deviate(top) - (
                MIN_TICK_GAP if hundred else 0.0
            ):
                ticks.append(t)
        return cls(zero, top, (*ticks, *((1.0 - zero,) if hundred else ())))

    def place(self, rates: Float64Array) -> Float64Array:
        """Normal deviates of ``rates``, 0 and 1 on their own lines."""
        clipped = np.clip(rates, self.zero, 1.0 - self.zero)
        return np.array([_deviate(float(x)) for x in clipped])

    @property
    def limits(self) -> tuple[float, float]:
        return _deviate(self.zero) - MARGIN, _deviate(self.top) + MARGIN

    def labels(self) -> list[str]:
        def label(t: float) -> str:
            if t == self.zero:
                return "0"
            if t == 1.0 - self.zero:
                return "100"
            return f"{100 * t:g}"

        return [label(t) for t in self.ticks]


_NORMAL = NormalDist()


def _deviate(p: float) -> float:
    return _NORMAL.inv_cdf(p)


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
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = max((max(tar.size, non.size) for _, tar, non, _ in curves), default=1)
    points = [p for *_, p in curves if p is not None]
    axis = DetAxes.fit(trials, [r for p in points for r in (p.far, p.frr)])

    width = 5.2 + 4.4 * len(histograms) if histograms else 7.6
    fig, axes = plt.subplots(1, 1 + len(histograms), figsize=(width, 4.6), dpi=90)
    axes = np.atleast_1d(axes)
    det = axes[0]
    for label, tar, non, point in curves:
        far, frr = det_curve(tar, non)
        value, _ = eer(tar, non)
        (line,) = det.plot(
            axis.place(far),
            axis.place(frr),
            drawstyle="steps-post",
            lw=1.6,
            label=f"{label} (EER {value:.2%})",
        )
        if point is not None:
            det.plot(
                axis.place(np.array([point.far])),
                axis.place(np.array([point.frr])),
                "o",
                color=line.get_color(),
                ms=6,
                mfc="none",
                mew=1.6,
                clip_on=False,
                zorder=3,
            )
    ticks = axis.place(np.array(axis.ticks))
    det.set_xticks(ticks, axis.labels())
    det.set_yticks(ticks, axis.labels())
    det.set_xlim(*axis.limits)
    det.set_ylim(*axis.limits)
    det.plot(axis.limits, axis.limits, ":", color="0.6", lw=0.8)
    edges = [ticks[0], ticks[-1]] if axis.top >= 1.0 - axis.zero else [ticks[0]]
    for edge in edges:  # the 0 (and 100) % lines
        det.axhline(float(edge), color="0.55", lw=0.7, ls="--")
        det.axvline(float(edge), color="0.55", lw=0.7, ls="--")
    det.set_xlabel("false-accept rate (%)")
    det.set_ylabel("false-reject rate (%)")
    det.set_title("DET (o = threshold in use)", fontsize=10)
    det.grid(True, color="0.85", lw=0.6)
    if histograms:
        det.legend(fontsize=7, loc="upper right")
    else:  # many curves: the legend beside the axes
        det.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.text(
        0.01,
        0.01,
        f"dashed lines: error rates of exactly 0 (and 100) %, which normal-deviate axes cannot place; "
        f"with {trials} trials the smallest other rate is {100 / trials:.2g} %",
        fontsize=6,
        color="0.4",
    )
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
