"""Supervised dynamic batcher: a bounded queue of audio segments in front of ONE backend worker thread.

Requests (one or more segments each) are admitted whole or refused at once (``Overloaded``). The worker
cuts batches from segments of similar length, anchored on the oldest waiting segment so nothing
starves. A batch closes at ``max_batch_size`` segments, ``max_batch_samples`` of padded audio, or
``max_wait_s`` after its oldest segment arrived, whichever comes first. Results go back to the asyncio
loop of the caller through ``loop.call_soon_threadsafe``.

Failure isolation: an exception from one batch fails that batch's requests only. An exception escaping
the worker loop (a bug, or ``MAX_CONSECUTIVE_FAILURES`` failed batches in a row: a wedged device) kills
the worker; from then on every waiting and new request fails at once with ``EngineUnavailable``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from app.engine.backend import EmbeddingBackend
from app.engine.metrics import EngineMetrics
from app.engine.segments import combine_segments, pad_batch
from app.errors import DeadlineExceeded, EngineUnavailable, Overloaded, VoxGateError

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

# Several batches failing back to back means the device/session is broken, not the inputs: die, so
# readiness goes false and the orchestrator replaces the replica instead of it failing forever.
MAX_CONSECUTIVE_FAILURES = 5
# Similar lengths are grouped; a candidate is not added when the padding it causes (beyond length
# bucketing, which is paid anyway) would exceed this share of the batch.
MAX_MISMATCH_PADDING = 0.25


class InferenceFailed(VoxGateError):
    """One batch's inference raised (HTTP 500)."""


class WorkerDied(Exception):
    """Raised inside the worker to end it (too many failed batches)."""


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    max_batch_size: int = 32
    max_batch_samples: int = 240 * 16000
    max_wait_s: float = 0.005
    queue_size: int = 512


class Request:
    """One embed() call: its segments' results, the asyncio future waiting for their average."""

    __slots__ = (
        "cancelled",
        "deadline",
        "done",
        "future",
        "loop",
        "n_segments",
        "remaining",
        "results",
        "weights",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Float32Array],
        n_segments: int,
        weights: tuple[float, ...],
        deadline: float,
    ) -> None:
        self.loop = loop
        self.future = future
        self.n_segments = n_segments
        self.remaining = n_segments
        self.weights = weights
        self.deadline = deadline
        self.results: Float32Array | None = None
        self.done = False  # written by the worker thread only
        self.cancelled = False  # written by the loop thread only (bool store is atomic)

    def resolve(self, value: Float32Array | BaseException) -> None:
        """Settle the future from any thread (first call wins)."""
        if self.done:
            return
        self.done = True
        # RuntimeError: the caller's loop is closed, nobody is waiting.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_settle, self.future, value)


def _settle(future: asyncio.Future[Float32Array], value: Float32Array | BaseException) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


@dataclass(slots=True, eq=False)  # identity equality: two segments are never "the same"
class Item:
    """One segment waiting for inference."""

    request: Request
    index: int
    samples: Float32Array
    enqueued: float
    n: int = field(init=False)

    def __post_init__(self) -> None:
        self.n = int(self.samples.shape[0])


def cut_batch(
    pending: list[Item],
    *,
    max_batch_size: int,
    max_batch_samples: int,
    bucket: Callable[[int], int],
) -> list[Item]:
    """Pick the next batch from ``pending`` (arrival order): the oldest item plus similar lengths.

    Greedy: sort by length, start at the oldest item, and grow the window one neighbour at a time,
    taking the side that adds the least padding, while the batch stays within the size and padded
    audio limits and its length-mismatch padding within ``MAX_MISMATCH_PADDING``.
    """
    if not pending:
        return []
    anchor = pending[0]
    ordered = sorted(pending, key=lambda it: it.n)
    pos = next(i for i, it in enumerate(ordered) if it is anchor)
    lo = hi = pos
    longest = anchor.n
    count = 1
    bucketed_sum = bucket(anchor.n)  # what these items cost alone (bucketing included)
    while count < max_batch_size:
        best: tuple[int, int, int] | None = None  # (extra padding, side, new longest)
        for side, idx in ((-1, lo - 1), (1, hi + 1)):
            if not 0 <= idx < len(ordered):
                continue
            cand = ordered[idx]
            new_longest = max(longest, cand.n)
            padded = (count + 1) * bucket(new_longest)
            if padded > max_batch_samples:
                continue
            mismatch = padded - (bucketed_sum + bucket(cand.n))
            if mismatch > MAX_MISMATCH_PADDING * padded:
                continue
            extra = padded - count * bucket(longest) - cand.n
            if best is None or extra < best[0]:
                best = (extra, side, new_longest)
        if best is None:
            break
        _, side, longest = best
        if side < 0:
            lo -= 1
            bucketed_sum += bucket(ordered[lo].n)
        else:
            hi += 1
            bucketed_sum += bucket(ordered[hi].n)
        count += 1
    return ordered[lo : hi + 1]


class DynamicBatcher:
    def __init__(
        self,
        backend: EmbeddingBackend,
        config: BatcherConfig,
        metrics: EngineMetrics,
        *,
        warmup: Callable[[], object] | None = None,
    ) -> None:
        self._backend = backend
        self._config = config
        self._metrics = metrics
        self._warmup = warmup
        self._cond = threading.Condition()
        self._pending: list[Item] = []  # arrival order
        self._inflight: list[Item] = []
        self._stopping = False
        self._dead: BaseException | None = None
        self._ready = False
        self._thread: threading.Thread | None = None
        self._consecutive_failures = 0
        self._seconds_per_segment = 0.05  # running estimate, for Retry-After
        self.batches_run = 0

    # --- state -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        thread = self._thread
        return (
            self._ready
            and self._dead is None
            and not self._stopping
            and thread is not None
            and thread.is_alive()
        )

    @property
    def dead(self) -> BaseException | None:
        return self._dead

    def depth(self) -> int:
        return len(self._pending)

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> concurrent.futures.Future[None]:
        """Start the worker thread; the returned future resolves once warm-up is done."""
        if self._thread is not None:
            raise RuntimeError("batcher already started")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._worker, args=(started,), name="voxgate-inference", daemon=True
        )
        self._thread.start()
        return started

    def stop(self) -> None:
        """Stop intake; the worker finishes every accepted segment, then exits (see ``join``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # --- intake (event loop thread) --------------------------------------------------------------
    def submit(
        self,
        segments: list[Float32Array],
        weights: tuple[float, ...],
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> Request:
        """Queue all segments of one request, or refuse it whole."""
        future: asyncio.Future[Float32Array] = loop.create_future()
        request = Request(loop, future, len(segments), weights, deadline)
        now = time.monotonic()
        with self._cond:
            if self._dead is not None:
                raise EngineUnavailable(f"inference worker died: {self._dead!r}")
            if self._stopping or self._thread is None:
                raise EngineUnavailable("inference engine is not running")
            if len(self._pending) + len(segments) > self._config.queue_size:
                self._metrics.rejected_overloaded.inc()
                raise Overloaded(
                    f"inference queue full ({len(self._pending)} segments waiting)",
                    retry_after_s=self._retry_after(),
                )
            self._pending.extend(Item(request, i, seg, now) for i, seg in enumerate(segments))
            self._metrics.queue_depth.set(len(self._pending))
            self._cond.notify()
        return request

    def cancel(self, request: Request) -> None:
        """The caller gave up (deadline, disconnect, task cancelled): drop its queued segments."""
        request.cancelled = True
        with self._cond:
            self._pending = [it for it in self._pending if it.request is not request]
            self._metrics.queue_depth.set(len(self._pending))

    def _retry_after(self) -> float:
        # Time for the worker to get through what is queued now, within sane bounds.
        estimate = len(self._pending) * self._seconds_per_segment
        return float(min(30.0, max(0.1, math.ceil(estimate * 10) / 10)))

    # --- worker thread ---------------------------------------------------------------------------
    def _worker(self, started: concurrent.futures.Future[None]) -> None:
        try:
            if self._warmup is not None:
                self._warmup()
        except BaseException as exc:
            self._die(exc)
            started.set_exception(exc)
            return
        self._ready = True
        self._metrics.ready.set(1)
        started.set_result(None)
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                self._run_batch(batch)
        except BaseException as exc:
            log.exception("inference worker died")
            self._die(exc)
        finally:
            self._ready = False
            self._metrics.ready.set(0)

    def _die(self, exc: BaseException) -> None:
        with self._cond:
            self._dead = exc
            self._ready = False
            doomed = self._inflight + self._pending
            self._pending = []
            self._inflight = []
            self._metrics.queue_depth.set(0)
        self._metrics.ready.set(0)
        error = EngineUnavailable(f"inference worker died: {exc!r}")
        for item in doomed:
            item.request.resolve(error)

    def _next_batch(self) -> list[Item] | None:
        """Block until a batch should close; None when stopping and everything is done."""
        cfg = self._config
        with self._cond:
            while True:
                self._drop_dead_items()
                if not self._pending:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                close_at = self._pending[0].enqueued + cfg.max_wait_s
                if self._stopping or now >= close_at or self._pending_full():
                    break
                self._cond.wait(close_at - now)
            batch = cut_batch(
                self._pending,
                max_batch_size=cfg.max_batch_size,
                max_batch_samples=cfg.max_batch_samples,
                bucket=self._backend.bucket,
            )
            chosen = {id(it) for it in batch}
            self._pending = [it for it in self._pending if id(it) not in chosen]
            self._inflight = batch
            self._metrics.queue_depth.set(len(self._pending))
            return batch

    def _pending_full(self) -> bool:
        cfg = self._config
        if len(self._pending) >= cfg.max_batch_size:
            return True
        bucket = self._backend.bucket
        return sum(bucket(it.n) for it in self._pending) >= cfg.max_batch_samples

    def _drop_dead_items(self) -> None:
        """Remove segments nobody waits for: cancelled, failed, or past their deadline (lock held)."""
        if not self._pending:
            return
        now = time.monotonic()
        keep: list[Item] = []
        for it in self._pending:
            req = it.request
            if req.cancelled or req.done:
                continue
            if now >= req.deadline:
                req.resolve(DeadlineExceeded("deadline passed while queued for inference"))
                continue
            keep.append(it)
        if len(keep) != len(self._pending):
            self._pending = keep
            self._metrics.queue_depth.set(len(keep))

    def _run_batch(self, batch: list[Item]) -> None:
        now = time.monotonic()
        live: list[Item] = []
        for it in batch:
            if it.request.cancelled or it.request.done:
                continue
            if now >= it.request.deadline:
                it.request.resolve(DeadlineExceeded("deadline passed while queued for inference"))
                continue
            self._metrics.queue_wait.observe(now - it.enqueued)
            live.append(it)
        if not live:
            self._inflight = []
            return
        padded_len = self._backend.bucket(max(it.n for it in live))
        audio, lengths = pad_batch([it.samples for it in live], padded_len)
        real = int(lengths.sum())
        t0 = time.perf_counter()
        try:
            out = self._backend.embed(audio, lengths)
        except Exception as exc:
            self._consecutive_failures += 1
            self._metrics.batch_failures.inc()
            log.warning("inference batch of %d failed: %r", len(live), exc)
            error = InferenceFailed(f"inference failed: {exc}")
            for it in live:
                it.request.resolve(error)
            self._inflight = []
            if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise WorkerDied(f"{self._consecutive_failures} inference batches failed in a row") from exc
            return
        elapsed = time.perf_counter() - t0
        self._consecutive_failures = 0
        self.batches_run += 1
        self._seconds_per_segment = 0.8 * self._seconds_per_segment + 0.2 * elapsed / len(live)
        m = self._metrics
        m.inference_time.observe(elapsed)
        m.batch_size.observe(len(live))
        m.padding_fraction.observe(1.0 - real / audio.size)
        m.padded_samples.inc(audio.size)
        m.real_samples.inc(real)
        for row, it in enumerate(live):
            req = it.request
            if req.done:
                continue
            if req.results is None:
                req.results = np.empty((req.n_segments, out.shape[1]), dtype=np.float32)
            req.results[it.index] = out[row]
            req.remaining -= 1
            if req.remaining == 0:
                req.resolve(combine_segments(req.results, req.weights))
        self._inflight = []
