"""Batching logic of the engine: batch closing, length grouping, overload, deadlines, cancellation,
failure isolation, supervision and shutdown. Uses the FakeBackend (pure batching logic); the real
ONNX Runtime path is covered by tests/engine/test_engine_onnx.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from app.core.errors import DeadlineExceeded, EngineUnavailable, InvalidAudio, Overloaded, RequestCancelled
from app.engine.batcher import MAX_CONSECUTIVE_FAILURES, InferenceFailed, Item, cut_batch
from app.engine.config import BatcherConfig
from app.engine.engine import EmbeddingEngine
from app.engine.metrics import EngineMetrics
from tests.support.data import SAMPLE_RATE
from tests.support.models import FakeBackend, fake_manifest

SR = SAMPLE_RATE


def wave(n: int, value: float = 0.1) -> npt.NDArray[np.float32]:
    # Distinct first sample per length lets results be matched to inputs.
    w = np.full(n, value, dtype=np.float32)
    w[0] = n / 1e6
    return w


def expected(w: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.array([w.mean(), w.size / SR, w[0]], dtype=np.float32)


def make_engine(
    backend: FakeBackend,
    *,
    registry: CollectorRegistry | None = None,
    segment_seconds: float | None = None,
    request_timeout_s: float = 30.0,
    **config: Any,
) -> EmbeddingEngine:
    cfg = {"max_batch_size": 8, "max_batch_samples": 240 * SR, "max_wait_s": 0.002, "queue_size": 64}
    cfg.update(config)
    return EmbeddingEngine(
        backend,
        fake_manifest(segment_seconds),
        config=BatcherConfig(**cfg),
        request_timeout_s=request_timeout_s,
        metrics=EngineMetrics(registry or CollectorRegistry()),
    )


async def until(predicate: Callable[[], bool], patience_s: float = 10.0) -> None:
    """Poll (without blocking the loop) until ``predicate`` holds; fail the test otherwise."""
    end = time.monotonic() + patience_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def occupy_worker(engine: EmbeddingEngine, backend: FakeBackend) -> asyncio.Task[Any]:
    """Start one request and wait until the worker is stuck in the (gated) backend with it."""
    first = asyncio.create_task(engine.embed(wave(SR // 2 + 7)))
    await asyncio.to_thread(backend.entered.wait, 10)
    return first


def item(n: int, t: float) -> Item:
    return Item(ticket=None, future=None, samples=np.zeros(n, np.float32), enqueued=t)  # type: ignore[arg-type]


# --- cut_batch: pure batch formation --------------------------------------------------------------
def test_cut_batch_takes_oldest_and_groups_similar_lengths() -> None:
    lengths = [16000, 160000, 16100, 159000, 15900, 161000]
    pending = [item(n, i) for i, n in enumerate(lengths)]
    batch = cut_batch(pending, max_batch_size=8, max_batch_samples=10**9, bucket=lambda n: n)
    assert sorted(it.n for it in batch) == [15900, 16000, 16100]
    rest = [it for it in pending if it not in batch]
    batch2 = cut_batch(rest, max_batch_size=8, max_batch_samples=10**9, bucket=lambda n: n)
    assert sorted(it.n for it in batch2) == [159000, 160000, 161000]


def test_cut_batch_respects_size_and_padded_audio_limits() -> None:
    pending = [item(SR, i) for i in range(10)]
    assert len(cut_batch(pending, max_batch_size=4, max_batch_samples=10**9, bucket=lambda n: n)) == 4
    assert len(cut_batch(pending, max_batch_size=32, max_batch_samples=3 * SR, bucket=lambda n: n)) == 3
    # One item longer than the audio budget still runs (alone).
    assert len(cut_batch([item(10 * SR, 0)], max_batch_size=4, max_batch_samples=SR, bucket=lambda n: n)) == 1


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 200_000), min_size=1, max_size=60),
    max_batch_size=st.integers(1, 16),
    max_batch_samples=st.integers(1, 2_000_000),
    step=st.sampled_from([1, 1600, 16000]),
)
def test_cut_batch_invariants(
    lengths: list[int], max_batch_size: int, max_batch_samples: int, step: int
) -> None:
    def bucket(n: int) -> int:
        return max(step, -(-n // step) * step)

    pending = [item(n, i) for i, n in enumerate(lengths)]
    batch = cut_batch(
        pending, max_batch_size=max_batch_size, max_batch_samples=max_batch_samples, bucket=bucket
    )
    assert pending[0] in batch  # the oldest is never starved
    assert len({id(it) for it in batch}) == len(batch)
    assert 1 <= len(batch) <= max_batch_size
    if len(batch) > 1:
        assert len(batch) * bucket(max(it.n for it in batch)) <= max_batch_samples
    # Contiguous in length order: nothing of an in-between length was skipped over.
    lo, hi = min(it.n for it in batch), max(it.n for it in batch)
    inside = [it for it in pending if lo < it.n < hi]
    assert all(it in batch for it in inside)


# --- engine with the fake backend -----------------------------------------------------------------
def test_lone_request_is_served_and_warmup_runs_at_start() -> None:
    backend = FakeBackend()
    engine = make_engine(backend)

    async def scenario() -> None:
        assert not engine.ready
        with pytest.raises(EngineUnavailable):
            await engine.embed(wave(SR))
        await engine.start()
        assert engine.ready
        assert backend.warmups == 1
        w = wave(SR + 3)
        np.testing.assert_allclose(await engine.embed(w), expected(w), rtol=1e-6)
        await engine.stop()

    asyncio.run(scenario())
    assert backend.batches == [[SR + 3]]


def test_full_batch_closes_without_waiting_for_max_wait() -> None:
    # max_wait is far longer than the request timeout: only the size rule can close this batch.
    backend = FakeBackend()
    engine = make_engine(backend, max_batch_size=2, max_wait_s=60.0, request_timeout_s=20.0)

    async def scenario() -> list[npt.NDArray[np.float32]]:
        await engine.start()
        out = await asyncio.gather(engine.embed(wave(SR)), engine.embed(wave(SR + 1)))
        await engine.stop()
        return out

    a, b = asyncio.run(scenario())
    assert backend.batches == [[SR, SR + 1]]
    np.testing.assert_allclose(a, expected(wave(SR)), rtol=1e-6)
    np.testing.assert_allclose(b, expected(wave(SR + 1)), rtol=1e-6)


def test_batches_respect_max_batch_size_and_audio_budget() -> None:
    backend = FakeBackend(hold_first=True)
    engine = make_engine(backend, max_batch_size=4, max_batch_samples=3 * SR)

    async def scenario() -> None:
        await engine.start()
        first = await occupy_worker(engine, backend)
        waves = [wave(SR - i) for i in range(10)]
        tasks = [asyncio.create_task(engine.embed(w)) for w in waves]
        await until(lambda: engine.queue_depth() == 10)
        backend.gate.set()
        results = await asyncio.gather(first, *tasks)
        for w, r in zip(waves, results[1:], strict=True):
            np.testing.assert_allclose(r, expected(w), rtol=1e-6)
        await engine.stop()

    asyncio.run(scenario())
    later = backend.batches[1:]
    assert sum(len(b) for b in later) == 10
    assert all(len(b) <= 3 for b in later)  # 3 s budget of 1 s items is the tighter limit
    assert max(len(b) for b in later) == 3


def test_waiting_work_is_grouped_by_length() -> None:
    backend = FakeBackend(hold_first=True)
    engine = make_engine(backend, max_batch_size=8)

    async def scenario() -> None:
        await engine.start()
        first = await occupy_worker(engine, backend)
        lengths = [SR + i if i % 2 == 0 else 8 * SR + i for i in range(8)]  # interleaved 1 s / 8 s
        tasks = [asyncio.create_task(engine.embed(wave(n))) for n in lengths]
        await until(lambda: engine.queue_depth() == 8)
        backend.gate.set()
        await asyncio.gather(first, *tasks)
        await engine.stop()

    asyncio.run(scenario())
    later = backend.batches[1:]
    assert len(later) == 2
    for batch in later:
        assert max(batch) - min(batch) < SR  # never a 1 s item padded to 8 s


def test_full_queue_refuses_at_once_with_retry_after() -> None:
    backend = FakeBackend(hold_first=True)
    registry = CollectorRegistry()
    engine = make_engine(backend, queue_size=3, registry=registry, segment_seconds=1.0)

    async def scenario() -> None:
        await engine.start()
        first = await occupy_worker(engine, backend)
        tasks = [asyncio.create_task(engine.embed(wave(SR - i))) for i in range(3)]
        await until(lambda: engine.queue_depth() == 3)
        with pytest.raises(Overloaded) as info:
            await engine.embed(wave(SR))
        assert info.value.retry_after_s > 0
        backend.gate.set()
        await asyncio.gather(first, *tasks)
        # A request is admitted whole or not at all: 5 segments never fit a queue of 3.
        with pytest.raises(Overloaded):
            await engine.embed(wave(5 * SR))
        assert engine.queue_depth() == 0
        await engine.stop()

    asyncio.run(scenario())
    assert registry.get_sample_value("voxgate_engine_rejected_overloaded_total") == 2
    assert registry.get_sample_value("voxgate_engine_requests_total", {"outcome": "overloaded"}) == 2
    assert registry.get_sample_value("voxgate_engine_requests_total", {"outcome": "ok"}) == 4


def test_expired_deadline_fails_and_is_never_computed() -> None:
    backend = FakeBackend(hold_first=True)
    engine = make_engine(backend)
    doomed = wave(3 * SR + 11)

    async def scenario() -> None:
        await engine.start()
        with pytest.raises(DeadlineExceeded):
            await engine.embed(wave(SR), deadline=time.monotonic() - 1)
        first = await occupy_worker(engine, backend)
        with pytest.raises(DeadlineExceeded):
            await engine.embed(doomed, deadline=time.monotonic() + 0.1)
        assert engine.queue_depth() == 0
        backend.gate.set()
        await first
        await engine.stop()

    asyncio.run(scenario())
    assert all(doomed.size not in b for b in backend.batches)


def test_disconnected_client_is_dropped_before_compute() -> None:
    backend = FakeBackend(hold_first=True)
    registry = CollectorRegistry()
    engine = make_engine(backend, registry=registry)
    gone = wave(2 * SR + 5)
    state = {"disconnected": False}

    async def is_disconnected() -> bool:
        return state["disconnected"]

    async def scenario() -> None:
        await engine.start()
        first = await occupy_worker(engine, backend)
        task = asyncio.create_task(engine.embed(gone, is_disconnected=is_disconnected))
        await until(lambda: engine.queue_depth() == 1)
        state["disconnected"] = True
        with pytest.raises(RequestCancelled):
            await task
        assert engine.queue_depth() == 0
        backend.gate.set()
        await first
        # Already gone before submission: refused without queueing.
        with pytest.raises(RequestCancelled):
            await engine.embed(gone, is_disconnected=is_disconnected)
        await engine.stop()

    asyncio.run(scenario())
    assert all(gone.size not in b for b in backend.batches)
    assert registry.get_sample_value("voxgate_engine_requests_total", {"outcome": "cancelled"}) == 2


def test_cancelled_task_is_dropped_before_compute() -> None:
    backend = FakeBackend(hold_first=True)
    engine = make_engine(backend)
    dropped = wave(2 * SR + 9)

    async def scenario() -> None:
        await engine.start()
        first = await occupy_worker(engine, backend)
        task = asyncio.create_task(engine.embed(dropped))
        await until(lambda: engine.queue_depth() == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.queue_depth() == 0
        backend.gate.set()
        await first
        await engine.stop()

    asyncio.run(scenario())
    assert all(dropped.size not in b for b in backend.batches)


def test_failing_batch_fails_only_its_requests() -> None:
    backend = FakeBackend(hold_first=True)
    bad_len = 12345
    backend.fail_when = lambda lengths: RuntimeError("ORT says no") if bad_len in lengths else None
    registry = CollectorRegistry()
    engine = make_engine(backend, registry=registry)

    async def scenario() -> None:
        await engine.start()
        first = await occupy_worker(engine, backend)
        bad = asyncio.create_task(engine.embed(wave(bad_len)))
        good = asyncio.create_task(engine.embed(wave(4 * SR)))
        await until(lambda: engine.queue_depth() == 2)
        backend.gate.set()
        with pytest.raises(InferenceFailed) as info:
            await bad
        assert info.value.status == 500
        np.testing.assert_allclose(await good, expected(wave(4 * SR)), rtol=1e-6)
        await first
        assert engine.ready
        np.testing.assert_allclose(await engine.embed(wave(SR)), expected(wave(SR)), rtol=1e-6)
        await engine.stop()

    asyncio.run(scenario())
    assert registry.get_sample_value("voxgate_engine_batch_failures_total") == 1


class WorkerKilled(BaseException):
    """Escapes the per-batch error handling, like a bug in the worker loop would."""


def test_dead_worker_fails_waiting_and_new_requests_at_once() -> None:
    backend = FakeBackend(hold_first=True)
    backend.fail_when = lambda lengths: WorkerKilled("boom")
    engine = make_engine(backend)

    async def scenario() -> None:
        await engine.start()
        first = await occupy_worker(engine, backend)
        waiting = [asyncio.create_task(engine.embed(wave(2 * SR + i))) for i in range(3)]
        await until(lambda: engine.queue_depth() == 3)
        backend.gate.set()
        for task in [first, *waiting]:
            with pytest.raises(EngineUnavailable):
                await task
        assert not engine.ready
        with pytest.raises(EngineUnavailable):
            await engine.embed(wave(SR))
        await engine.stop()

    asyncio.run(scenario())
    assert len(backend.batches) == 1  # nothing ran after the fatal error


def test_repeated_batch_failures_take_the_engine_out_of_service() -> None:
    backend = FakeBackend()
    backend.fail_when = lambda lengths: RuntimeError("CUDA failure 999")
    engine = make_engine(backend)

    async def scenario() -> None:
        await engine.start()
        for i in range(MAX_CONSECUTIVE_FAILURES):
            with pytest.raises((InferenceFailed, EngineUnavailable)):
                await engine.embed(wave(SR + i))
        await until(lambda: not engine.ready)
        with pytest.raises(EngineUnavailable):
            await engine.embed(wave(SR))
        await engine.stop()

    asyncio.run(scenario())


def test_stop_finishes_accepted_work_then_refuses() -> None:
    backend = FakeBackend()
    # max_wait far beyond the test's patience: stop() must close pending batches at once.
    engine = make_engine(backend, max_wait_s=60.0, max_batch_size=64, request_timeout_s=120.0)

    async def scenario() -> None:
        await engine.start()
        waves = [wave(SR + i) for i in range(5)]
        tasks = [asyncio.create_task(engine.embed(w)) for w in waves]
        await until(lambda: engine.queue_depth() == 5)
        stopping = asyncio.create_task(engine.stop())
        await until(lambda: not engine.ready)
        with pytest.raises(EngineUnavailable):
            await engine.embed(wave(SR))
        results = await asyncio.gather(*tasks)
        await stopping
        for w, r in zip(waves, results, strict=True):
            np.testing.assert_allclose(r, expected(w), rtol=1e-6)

    asyncio.run(scenario())
    assert backend.batches == [[SR + i for i in range(5)]]


def test_invalid_waveforms_are_refused() -> None:
    engine = make_engine(FakeBackend())

    async def scenario() -> None:
        await engine.start()
        for bad in (np.zeros((2, SR), np.float32), np.zeros(10, np.float32), np.full(SR, np.nan, np.float32)):
            with pytest.raises(InvalidAudio):
                await engine.embed(bad)
        await engine.stop()

    asyncio.run(scenario())


def test_metrics_describe_batches() -> None:
    backend = FakeBackend(hold_first=True)
    registry = CollectorRegistry()
    engine = make_engine(backend, registry=registry, max_batch_size=4)

    async def scenario() -> None:
        await engine.start()
        first = await occupy_worker(engine, backend)
        tasks = [asyncio.create_task(engine.embed(wave(n))) for n in (SR, SR, SR, SR // 2)]
        await until(lambda: engine.queue_depth() == 4)
        backend.gate.set()
        await asyncio.gather(first, *tasks)
        await engine.stop()

    asyncio.run(scenario())
    n_batches = len(backend.batches)
    assert registry.get_sample_value("voxgate_engine_batch_size_count") == n_batches
    assert registry.get_sample_value("voxgate_engine_batch_size_sum") == 5
    assert registry.get_sample_value("voxgate_engine_inference_seconds_count") == n_batches
    assert registry.get_sample_value("voxgate_engine_queue_wait_seconds_count") == 5
    real = registry.get_sample_value("voxgate_engine_real_samples_total")
    padded = registry.get_sample_value("voxgate_engine_padded_samples_total")
    assert real == (SR // 2 + 7) + 3 * SR + SR // 2
    assert padded is not None
    assert padded >= real
    assert registry.get_sample_value("voxgate_engine_queue_depth") == 0
    assert registry.get_sample_value("voxgate_engine_provider_info", {"provider": backend.provider}) == 1
    body, content_type = engine.metrics.render()
    assert b"voxgate_engine_batch_padding_fraction_bucket" in body
    assert content_type.startswith("text/plain")
