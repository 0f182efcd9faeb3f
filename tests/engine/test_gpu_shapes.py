"""The GPU shape plan (app.engine.shapes): what warm-up visits, and that every batch the batcher can cut
runs as one of those shapes. Runs on the CPU: the plan is arithmetic, and a CPU session can be told to
run it (``plan_shapes=True``) to show that the padding it adds leaves embeddings unchanged."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.settings import Settings
from app.engine.backend import OnnxBackend
from app.engine.batcher import cut_batch
from app.engine.manifest import load_manifest
from app.engine.shapes import ShapePlan, length_series_seconds

SR = 16000
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "default"


def serving_plan() -> ShapePlan:
    """The plan of a 30 s-segment model under the settings' defaults."""
    s = Settings.model_validate({})
    return ShapePlan(SR, 30 * SR, s.max_batch_size, round(s.max_batch_audio_seconds * SR))


def test_the_default_plan_is_small() -> None:
    plan = serving_plan()
    assert [n / SR for n in plan.lengths] == [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30]
    assert plan.batch_sizes(3 * SR) == (1, 2, 4, 8, 16, 32)
    assert plan.batch_sizes(10 * SR) == (1, 2, 4, 8, 16, 24)  # 24 x 10 s = the 240 s budget
    assert plan.batch_sizes(30 * SR) == (1, 2, 4, 8)
    # Before: every 1 s bucket x batch sizes 1, 2, 4, ..., 32 = 142 shapes, 9,791 s of audio.
    assert len(plan.shapes) == 73
    assert plan.audio_seconds() == 5028.0
    assert len(set(plan.shapes)) == len(plan.shapes)
    sizes = [b * n for b, n in plan.shapes]
    assert sizes == sorted(sizes, reverse=True)  # largest first: the memory arena grows once


def test_length_series_steps_are_at_most_a_third() -> None:
    series = list(itertools.islice(length_series_seconds(), 40))
    assert series[:14] == [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40]
    assert all(b > a for a, b in itertools.pairwise(series))
    # From 3 s up a bucket pads by at most 25 % of what it runs (as the batcher bounds its mismatch).
    assert all(b / a <= 4 / 3 + 1e-9 for a, b in itertools.pairwise(series) if a >= 3)


def _check_covered(plan: ShapePlan, rows: int, longest: int) -> None:
    want_rows, width = plan.run_shape(rows, longest)
    assert (want_rows, width) in plan.shapes, (rows, longest, want_rows, width)
    assert want_rows >= rows
    assert width >= longest
    assert want_rows == 1 or want_rows * width <= plan.max_batch_samples


@pytest.mark.parametrize(
    ("max_seconds", "max_batch", "budget_seconds"),
    [(30, 32, 240), (30, 8, 60), (3, 32, 240), (27.3, 20, 100), (10, 1, 10), (60, 64, 500)],
)
def test_every_batch_the_batcher_may_cut_runs_as_a_planned_shape(
    max_seconds: float, max_batch: int, budget_seconds: float
) -> None:
    """The batcher's limits: at most max_batch items and count x bucket(longest) <= the budget, or one
    item up to the longest segment. Every length that changes the bucket is visited (each bucket's
    first and last sample), at every row count those limits allow."""
    plan = ShapePlan(SR, round(max_seconds * SR), max_batch, round(budget_seconds * SR))
    edges = {1, plan.max_samples}
    for low, high in zip((0, *plan.lengths), plan.lengths, strict=False):
        edges |= {low + 1, high}
    for longest in sorted(edges):
        bucket = plan.bucket(longest)
        assert bucket in plan.lengths
        for rows in range(1, max_batch + 1):
            if rows == 1 or rows * bucket <= plan.max_batch_samples:
                _check_covered(plan, rows, longest)


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=SR // 10, max_value=30 * SR), min_size=1, max_size=80),
    max_batch=st.integers(min_value=1, max_value=64),
    budget_seconds=st.integers(min_value=30, max_value=480),
)
def test_batches_cut_by_the_real_batcher_run_as_planned_shapes(
    lengths: list[int], max_batch: int, budget_seconds: int
) -> None:
    plan = ShapePlan(SR, 30 * SR, max_batch, budget_seconds * SR)
    pending: list[Any] = [SimpleNamespace(n=n) for n in lengths]
    while pending:
        batch = cut_batch(
            pending,
            max_batch_size=max_batch,
            max_batch_samples=plan.max_batch_samples,
            bucket=plan.bucket,
        )
        assert batch
        _check_covered(plan, len(batch), max(it.n for it in batch))
        chosen = {id(it) for it in batch}
        pending = [it for it in pending if id(it) not in chosen]


def test_a_cpu_session_keeps_its_fine_buckets_and_small_warmup() -> None:
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    backend = OnnxBackend(DEFAULT_MODEL_DIR, manifest, providers=["cpu"], max_samples=30 * SR)
    assert backend.shape_plan is None
    assert backend.bucket(int(2.03 * SR)) == int(2.1 * SR)
    shapes = backend.warmup_shapes(max_batch_size=32, max_samples=30 * SR, max_batch_samples=240 * SR)
    assert shapes == [(1, SR // 10), (2, SR // 10), (1, 30 * SR), (2, 30 * SR)]


def test_warmup_visits_the_plan_and_planned_padding_leaves_embeddings_unchanged() -> None:
    """A session told to run the plan (as on a GPU): warm-up runs exactly the planned shapes; a batch
    of 3 odd lengths runs as 4 rows x the 3 s bucket and gives each item its alone-embedding."""
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    limits = {"max_batch_size": 4, "max_samples": 3 * SR, "max_batch_samples": 8 * SR}
    planned = OnnxBackend(
        DEFAULT_MODEL_DIR,
        manifest,
        providers=["cpu"],
        plan_shapes=True,
        max_batch_size=4,
        max_samples=3 * SR,
        max_batch_samples=8 * SR,
    )
    plain = OnnxBackend(DEFAULT_MODEL_DIR, manifest, providers=["cpu"], max_samples=3 * SR)
    plan = planned.shape_plan
    assert plan is not None
    assert plan.shapes == ((4, 2 * SR), (2, 3 * SR), (2, 2 * SR), (4, SR), (1, 3 * SR), (1, 2 * SR),
                           (2, SR), (1, SR))  # fmt: skip
    assert planned.warmup_shapes(**limits) == list(plan.shapes)
    assert planned.warmup(**limits) == len(plan.shapes)
    assert plan.run_shape(3, int(1.5 * SR)) == (4, 2 * SR)
    # 3 x 3 s is over the 8 s budget, so the batcher never cuts it; were it run, it keeps its rows.
    assert plan.batch_sizes(3 * SR) == (1, 2)
    assert plan.run_shape(3, int(2.2 * SR)) == (3, 3 * SR)

    rng = np.random.default_rng(7)
    waves = [(0.1 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in (1.3, 2.2)]
    alone = [plain.embed(w[None, :], np.array([w.size], np.int64))[0] for w in waves]
    batch = np.zeros((2, waves[1].size), np.float32)
    for i, w in enumerate(waves):
        batch[i, : w.size] = w
    out = planned.embed(batch, np.array([w.size for w in waves], np.int64))  # runs as (2, 3 s)
    assert out.shape == (2, manifest.embedding_dim)
    np.testing.assert_allclose(out, np.stack(alone), atol=1e-4)
    one = planned.embed(waves[0][None, :], np.array([waves[0].size], np.int64))  # (1, 2 s)
    np.testing.assert_allclose(one[0], alone[0], atol=1e-4)
    three = np.zeros((3, SR), np.float32)  # 3 x 1 s runs as 4 rows: the copy's output is dropped
    three[:, : int(0.9 * SR)] = (0.1 * rng.standard_normal((3, int(0.9 * SR)))).astype(np.float32)
    got = planned.embed(three, np.full(3, int(0.9 * SR), np.int64))
    want = plain.embed(three, np.full(3, int(0.9 * SR), np.int64))
    assert got.shape == (3, manifest.embedding_dim)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_the_search_mode_is_a_setting() -> None:
    assert Settings.model_validate({}).cudnn_conv_algo_search == "HEURISTIC"
    assert Settings.model_validate({"cudnn_conv_algo_search": "exhaustive"}).cudnn_conv_algo_search == (
        "EXHAUSTIVE"
    )
    with pytest.raises(ValueError, match="cudnn_conv_algo_search"):
        Settings.model_validate({"cudnn_conv_algo_search": "fastest"})
