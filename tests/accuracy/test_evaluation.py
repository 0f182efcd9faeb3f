"""Error rates, calibration and AS-Norm on small score lists with known answers (computed by hand in the
comments, and by brute force over thresholds), independent of any model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.accuracy.metrics import compute_metrics, det_curve, eer, error_rates, frr_at_far, min_dcf
from app.accuracy.trials import Embedded, FileResult, Trial, TrialsError, read_trials, score_trials
from app.speakers.scoring import Cohort, CohortError, Scorer, asnorm, fit_llr

TAR = [0.4, 0.6, 0.8, 0.9]
NON = [0.1, 0.3, 0.5, 0.7]


def brute_rates(tar: np.ndarray, non: np.ndarray) -> list[tuple[float, float, float]]:
    """(threshold, FAR, FRR) at every midpoint between distinct scores and beyond both ends."""
    u = np.unique(np.concatenate([tar, non]))
    candidates = [u[0] - 1.0, *((u[:-1] + u[1:]) / 2), u[-1] + 1.0]
    return [(t, float(np.mean(non >= t)), float(np.mean(tar < t))) for t in candidates]


def test_eer_where_the_rates_meet() -> None:
    # Accepting >= 0.55: false accepts {0.7} = 1/4, false rejects {0.4} = 1/4.
    value, threshold = eer(TAR, NON)
    assert value == pytest.approx(0.25)
    assert threshold == pytest.approx(0.55)
    assert error_rates(TAR, NON, threshold) == (0.25, 0.25)


def test_eer_between_two_operating_points() -> None:
    # Thresholds in (0.35, 0.4]: FAR 2/3, FRR 0; in (0.4, 0.5]: FAR 2/3, FRR 1/2; in (0.5, 0.8]: FAR 1/3,
    # FRR 1/2. FAR - FRR goes from +1/6 to -1/6: the segment between (2/3, 1/2) and (1/3, 1/2) crosses
    # FAR = FRR halfway, at 0.5; the threshold reported is the score between them, 0.4.
    value, threshold = eer([0.35, 0.8], [0.3, 0.4, 0.5])
    assert value == pytest.approx(0.5)
    assert threshold == pytest.approx(0.4)


def test_separated_classes_have_zero_eer_in_the_middle_of_the_gap() -> None:
    value, threshold = eer([0.8, 0.9, 0.95], [0.1, 0.2, 0.6])
    assert value == 0.0
    assert threshold == pytest.approx(0.7)


def test_min_dcf_known_answer() -> None:
    # p = 0.01: cost / 0.01 = FRR + 99 FAR. Any false accept costs >= 24.75; with none (threshold above
    # 0.7) the cheapest is (0.7, 0.8]: FRR 2/4 = 0.5.
    value, point = min_dcf(TAR, NON, 0.01)
    assert value == pytest.approx(0.5)
    assert point.threshold == pytest.approx(0.75)
    assert (point.far, point.frr) == (0.0, 0.5)
    # p = 0.5: cost / 0.5 = FRR + FAR, least 0.5 (e.g. at 0.55: 1/4 + 1/4).
    assert min_dcf(TAR, NON, 0.5)[0] == pytest.approx(0.5)


def test_frr_at_far_known_answer() -> None:
    at_quarter = frr_at_far(TAR, NON, 0.25)
    assert (at_quarter.far, at_quarter.frr) == (0.25, 0.25)
    assert at_quarter.threshold == pytest.approx(0.55)
    none = frr_at_far(TAR, NON, 0.0)  # no false accept: everything above 0.7
    assert (none.far, none.frr) == (0.0, 0.5)
    assert none.threshold == pytest.approx(0.75)
    assert frr_at_far(TAR, NON, 1.0).frr == 0.0


def test_det_curve_runs_from_accept_all_to_reject_all() -> None:
    far, frr = det_curve(TAR, NON)
    assert (far[0], frr[0]) == (1.0, 0.0)
    assert (far[-1], frr[-1]) == (0.0, 1.0)
    assert np.all(np.diff(far) <= 0)
    assert np.all(np.diff(frr) >= 0)


scores = st.lists(st.integers(0, 40).map(lambda i: i / 40), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(scores, scores, st.sampled_from([0.01, 0.05, 0.5]), st.sampled_from([0.0, 0.01, 0.1, 0.3]))
def test_figures_agree_with_a_brute_force_sweep(
    tar: list[float], non: list[float], p: float, far: float
) -> None:
    t, n = np.array(tar), np.array(non)
    rates = brute_rates(t, n)
    # minDCF: the least normalised cost over every threshold.
    costs = [(p * frr + (1 - p) * fa) / min(p, 1 - p) for _, fa, frr in rates]
    value, point = min_dcf(t, n, p)
    assert value == pytest.approx(min(costs))
    assert error_rates(t, n, point.threshold) == (point.far, point.frr)
    # FRR at FAR: the least FRR among thresholds with FAR <= far.
    at = frr_at_far(t, n, far)
    assert at.frr == pytest.approx(min(frr for _, fa, frr in rates if fa <= far))
    assert error_rates(t, n, at.threshold) == (at.far, at.frr)
    # EER: between FAR and FRR at every threshold (FAR falls and FRR rises across it).
    e, _ = eer(t, n)
    for _, fa, frr in rates:
        assert min(fa, frr) - 1e-12 <= e <= max(fa, frr) + 1e-12


def test_metrics_report_the_threshold_in_use() -> None:
    m = compute_metrics("cosine", TAR, NON, threshold=0.55, threshold_source="test")
    assert m.threshold is not None
    assert (m.threshold.far, m.threshold.frr) == (0.25, 0.25)
    d = m.as_dict()
    assert d["eer"] == pytest.approx(0.25)
    assert d["threshold"] == {"value": 0.55, "source": "test", "far": 0.25, "frr": 0.25}
    assert d["frr_at_far"]["0.001"]["measurable"] is False  # 4 non-target trials: resolution 0.25
    assert d["far_resolution"] == 0.25


def test_llr_calibration_recovers_a_known_ratio() -> None:
    # Same-speaker scores ~ N(1, 1), different-speaker ~ N(-1, 1): the log-likelihood ratio is exactly
    # ((s + 1)^2 - (s - 1)^2) / 2 = 2 s.
    rng = np.random.default_rng(0)
    cal = fit_llr(rng.normal(1, 1, 20000), rng.normal(-1, 1, 20000))
    assert cal.scale == pytest.approx(2.0, abs=0.08)
    assert cal.offset == pytest.approx(0.0, abs=0.05)
    assert cal.llr(0.5) == pytest.approx(cal.scale * 0.5 + cal.offset)


def test_llr_calibration_of_separated_scores_is_finite_and_increasing() -> None:
    cal = fit_llr([0.8, 0.9], [0.1, 0.2])
    assert math.isfinite(cal.scale)
    assert cal.scale > 0
    assert cal.llr(0.9) > 0 > cal.llr(0.1)


def test_asnorm_known_answer() -> None:
    # Cohort e1, e2, e3; enrollment e1 -> cohort cosines [1, 0, 0], top 2 [1, 0]: mean 0.5, std 0.5.
    # Test (0.8, 0.6, 0) -> [0.8, 0.6, 0], top 2: mean 0.7, std 0.1. Raw cosine 0.8.
    # AS-Norm = ((0.8 - 0.5) / 0.5 + (0.8 - 0.7) / 0.1) / 2 = (0.6 + 1.0) / 2 = 0.8.
    cohort = Cohort(np.eye(3, dtype=np.float32), top_n=2)
    enroll = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    test = np.array([0.8, 0.6, 0.0], dtype=np.float32)
    value = asnorm(0.8, cohort.stats(enroll.reshape(1, -1)), cohort.stats(test.reshape(1, -1)))
    assert float(value[0]) == pytest.approx(0.8, abs=1e-6)
    score = Scorer("asnorm", cohort).score(test, enroll)
    assert score.value == pytest.approx(0.8, abs=1e-6)
    assert score.cosine == pytest.approx(0.8, abs=1e-6)
    assert score.llr is None


def test_a_cohort_needs_two_speakers() -> None:
    with pytest.raises(CohortError):
        Cohort(np.eye(1, 3, dtype=np.float32), top_n=2)
    with pytest.raises(CohortError):
        Scorer("asnorm", None)


def test_trial_scores_are_the_scorers_scores() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((6, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embedded = Embedded({f"f{i}": FileResult(f"f{i}", vectors[i]) for i in range(5)})
    embedded.files["bad"] = FileResult("bad", None, refused="no_speech")
    trials = [
        Trial(True, "f0", "f1"),
        Trial(False, "f2", "f3"),
        Trial(True, "f4", "f0"),
        Trial(False, "f1", "bad"),
    ]
    cohort = Cohort(rng.standard_normal((4, 8)).astype(np.float32), top_n=3)
    cohort = Cohort(cohort.embeddings / np.linalg.norm(cohort.embeddings, axis=1, keepdims=True), top_n=3)
    scored = score_trials(trials, embedded, cohort)
    assert scored.skipped == 1
    assert scored.labels.tolist() == [True, False, True]
    for i, t in enumerate(scored.kept):
        a, b = embedded.embedding(t.a), embedded.embedding(t.b)
        assert a is not None
        assert b is not None
        assert scored.scores["cosine"][i] == pytest.approx(Scorer().score(b, a).value, abs=1e-6)
        assert scored.scores["asnorm"][i] == pytest.approx(
            Scorer("asnorm", cohort).score(b, a).value, abs=1e-5
        )
    assert embedded.refused_counts() == {"no_speech": 1}


def test_trials_file_format(tmp_path: Path) -> None:
    path = tmp_path / "trials.txt"
    path.write_text("# comment\n1 a.flac b.flac\n\n0 a.flac c.flac\n")
    assert read_trials(path) == [Trial(True, "a.flac", "b.flac"), Trial(False, "a.flac", "c.flac")]
    path.write_text("1 a.flac\n")
    with pytest.raises(TrialsError, match=r"trials\.txt:1"):
        read_trials(path)
    path.write_text("2 a b\n")
    with pytest.raises(TrialsError):
        read_trials(path)
