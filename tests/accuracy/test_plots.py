"""The DET plot's axes: rates of 0 and 100 % on labelled lines inside the frame, every operating point
on the plot, no marker clipped; and the hint of `--plot` without matplotlib."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from app.accuracy.metrics import OperatingPoint
from app.accuracy.plots import MARGIN, DetAxes, plot_det, require_matplotlib


def test_zero_error_lies_on_a_labelled_line_inside_the_frame() -> None:
    axis = DetAxes.fit(189, [0.0, 0.0])
    low, high = axis.limits
    zero = float(axis.place(np.array([0.0]))[0])
    assert zero == pytest.approx(low + MARGIN)  # not the frame's edge
    assert axis.labels()[0] == "0"
    smallest = float(axis.place(np.array([1 / 189]))[0])  # the smallest rate 189 trials can give
    assert zero < smallest < high
    assert axis.top == 0.5  # nothing above: the usual window
    assert axis.labels()[-1] == "40"


def test_every_operating_point_is_on_the_plot_up_to_100_percent() -> None:
    for frr in (0.96, 0.9894, 1.0):
        axis = DetAxes.fit(189, [0.0, frr])
        low, high = axis.limits
        placed = float(axis.place(np.array([frr]))[0])
        assert low < placed <= high - MARGIN + 1e-9  # a marker's full width inside the frame
    full = DetAxes.fit(189, [1.0])
    assert full.labels()[-1] == "100"
    assert float(full.place(np.array([1.0]))[0]) == pytest.approx(full.limits[1] - MARGIN)


def test_ticks_never_print_over_each_other() -> None:
    for trials in (50, 189, 10_000, 1_000_000):
        axis = DetAxes.fit(trials, [1.0])
        placed = axis.place(np.array(axis.ticks))
        assert np.all(np.diff(placed) >= 0.25 - 1e-9), axis.labels()
        assert len(set(axis.labels())) == len(axis.labels())


def test_plot_det_draws_conditions_at_0_and_100_percent(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    tar, non = rng.normal(0.9, 0.03, 100), rng.normal(0.5, 0.05, 100)
    noisy = rng.normal(0.5, 0.05, 100)
    out = tmp_path / "det.png"
    plot_det(
        out,
        [
            ("clean", tar, non, OperatingPoint(0.75, 0.0, 0.0)),
            ("noisy", noisy, non, OperatingPoint(0.75, 0.0, 1.0)),
        ],
        [("cosine", tar, non, 0.75)],
        "test",
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_hint_names_this_projects_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails, as in the serving install
    with pytest.raises(RuntimeError) as refused:
        require_matplotlib()
    message = str(refused.value)
    assert "pip install -e '.[eval]'" in message
    assert "voxgate[eval]" not in message  # not a PyPI name: an invitation to install a look-alike
