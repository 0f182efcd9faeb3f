"""Cutting long audio into segments and averaging their embeddings by speech duration."""

from __future__ import annotations

import itertools

import numpy as np
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from app.engine.backend import pad_batch
from app.engine.segments import (
    SegmentPolicy,
    combine_segments,
    plan_segments,
    segment_bounds,
    speech_weights,
)
from tests.support.data import SAMPLE_RATE, speech_files

SR = SAMPLE_RATE


def test_short_audio_is_one_segment() -> None:
    policy = SegmentPolicy(SR, 3.0, 0.5)
    assert segment_bounds(3 * SR, policy) == [(0, 3 * SR)]
    assert segment_bounds(SR, SegmentPolicy(SR, None)) == [(0, SR)]
    assert segment_bounds(1000 * SR, SegmentPolicy(SR, None)) == [(0, 1000 * SR)]


def test_long_audio_segments_are_full_length_and_end_at_the_end() -> None:
    policy = SegmentPolicy(SR, 3.0, 0.5)
    bounds = segment_bounds(10 * SR, policy)
    assert bounds == [(0, 3 * SR), (int(2.5 * SR), int(5.5 * SR)), (5 * SR, 8 * SR), (7 * SR, 10 * SR)]


@given(
    n=st.integers(1, 40 * SR),
    seg=st.floats(0.5, 10.0),
    overlap=st.floats(0.0, 12.0),
)
def test_segments_cover_the_audio(n: int, seg: float, overlap: float) -> None:
    policy = SegmentPolicy(SR, seg, overlap)
    bounds = segment_bounds(n, policy)
    seg_n = policy.segment_samples
    assert seg_n is not None
    assert bounds[0][0] == 0
    assert bounds[-1][1] == n
    for (a0, b0), (a1, _) in itertools.pairwise(bounds):
        assert a1 <= b0  # no gap
        assert a1 > a0  # always advances
    if n > seg_n:
        assert all(b - a == seg_n for a, b in bounds)
    else:
        assert bounds == [(0, n)]


def test_segments_weighted_by_their_speech() -> None:
    # 3 s of real speech, then 3 s of near silence and 3 s of noise: only speech carries weight.
    voice = sf.read(speech_files()["vctk_p225"][0], dtype="float32")[0][int(1.5 * SR) : int(4.5 * SR)]
    silence = (1e-5 * np.random.default_rng(0).standard_normal(3 * SR)).astype(np.float32)
    noise = (0.1 * np.random.default_rng(1).standard_normal(3 * SR)).astype(np.float32)
    wave = np.concatenate([voice, silence, noise])
    policy = SegmentPolicy(SR, 3.0, 0.0)
    plan = plan_segments(wave, policy)
    assert plan.bounds == ((0, 3 * SR), (3 * SR, 6 * SR), (6 * SR, 9 * SR))
    assert plan.weights[0] > 2.0
    assert plan.weights[1] < 0.2  # at most the VAD's hangover past the cut (100 ms + 30 ms padding)
    assert plan.weights[2] == 0.0


def test_all_silent_segments_get_equal_weights() -> None:
    silence = np.zeros(9 * SR, dtype=np.float32)
    bounds = segment_bounds(silence.size, SegmentPolicy(SR, 3.0))
    assert speech_weights(silence, bounds, SR) == [1.0, 1.0, 1.0]


def test_combine_is_a_weighted_average() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    np.testing.assert_allclose(combine_segments(emb, (3.0, 1.0, 0.0)), [0.75, 0.25])
    np.testing.assert_array_equal(combine_segments(emb[:1], (1.0,)), emb[0])


def test_pad_batch_zero_pads_and_reports_true_lengths() -> None:
    audio, lengths = pad_batch([np.ones(3, np.float32), np.full(5, 2.0, np.float32)], 8)
    assert audio.shape == (2, 8)
    assert lengths.tolist() == [3, 5]
    np.testing.assert_array_equal(audio[0], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(audio[1], [2, 2, 2, 2, 2, 0, 0, 0])
