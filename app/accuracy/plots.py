"""The DET plot of ``voxgate eval --plot``: matplotlib is imported only here, and only when drawing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from app.accuracy.metrics import OperatingPoint, det_curve, eer

Float64Array = npt.NDArray[np.float64]

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
