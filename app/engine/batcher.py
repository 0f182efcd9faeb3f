"""Supervised dynamic batcher: a bounded queue of waveforms in front of ONE backend worker thread.

The batcher knows items, not requests: ``submit`` queues a list of waveforms (admitted whole or refused
at once with ``Overloaded``) and returns a ``Ticket`` with one future per waveform. Cutting a recording
into segments and combining their embeddings happens above it (``app.engine.engine``). The worker cuts
batches from items of similar length, anchored on the oldest waiting item so nothing starves. A batch
closes at ``max_batch_size`` items, ``max_batch_samples`` of padded audio, or ``max_wait_s`` after its
oldest item arrived, whichever comes first. Padding to the backend's length bucket is the backend
module's business (``run_padded``). Results go back to the caller's asyncio loop through
``loop.call_soon_threadsafe``.

Failure isolation: an exception from one batch fails that batch's items only. An exception escaping
the worker loop (a bug, or ``MAX_CONSECUTIVE_FAILURES`` failed batches in a row: a wedged device) kills
the worker; from then on every waiting and new item fails at once with ``EngineUnavailable``.
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

from app.core.errors import DeadlineExceeded, EngineUnavailable, Overloaded, VoxGateError
from app.engine.backend import EmbeddingBackend, run_padded
from app.engine.config import BatcherConfig
from app.engine.metrics import EngineMetrics

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

# Throughput assumed until the first batch has been timed (padded samples per second of inference):
# 20x real time at 16 kHz, slower than any CPU this runs on, so the first estimates err towards refusing.
INITIAL_SAMPLES_PER_S = 20.0 * 16000
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


class Ticket:
    """One ``submit`` call: its items were admitted together and are cancelled together."""

    __slots__ = ("cancelled", "deadline", "futures", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, n_items: int) -> None:
        self.loop = loop
        self.deadline = deadline
        self.futures: list[asyncio.Future[Float32Array]] = [loop.create_future() for _ in range(n_items)]
        self.cancelled = False  # written by the loop thread only (bool store is atomic)


def _settle(future: asyncio.Future[Float32Array], value: Float32Array | BaseException) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


@dataclass(slots=True, eq=False)  # identity equality: two items are never "the same"
class Item:
    """One waveform waiting for inference; its embedding settles ``future`` on the caller's loop."""

    ticket: Ticket
    future: asyncio.Future[Float32Array]
    samples: Float32Array
    enqueued: float
    n: int = field(init=False)
    done: bool = field(init=False, default=False)  # written by the worker thread only

    def __post_init__(self) -> None:
        self.n = int(self.samples.shape[0])

    def resolve(self, value: Float32Array | BaseException) -> None:
        """Settle the future from any thread (first call wins)."""
        if self.done:
            return
        self.done = True
        # RuntimeError: the caller's loop is closed, nobody is waiting.
        with contextlib.suppress(RuntimeError):
            self.ticket.loop.call_soon_threadsafe(_settle, self.future, value)


def _settle_all(pairs: list[tuple[asyncio.Future[Float32Array], Float32Array | BaseException]]) -> None:
    for future, value in pairs:
        _settle(future, value)


def resolve_all(items: list[Item], values: list[Float32Array]) -> None:
    """Settle a batch's items, one wake-up of each caller's loop for all of them (``resolve`` costs a
    wake-up, a system call, per item)."""
    Pairs = list[tuple[asyncio.Future[Float32Array], Float32Array | BaseException]]
    by_loop: dict[asyncio.AbstractEventLoop, Pairs] = {}
    for item, value in zip(items, values, strict=True):
        if not item.done:
            item.done = True
            by_loop.setdefault(item.ticket.loop, []).append((item.future, value))
    for loop, pairs in by_loop.items():
        # RuntimeError: the caller's loop is closed, nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_all, pairs)


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
        initial_samples_per_s: float = INITIAL_SAMPLES_PER_S,
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
        self._seconds_per_item = 0.05  # running estimate, for Retry-After
        self._samples_per_s = initial_samples_per_s  # running estimate of the backend's throughput
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

    @property
    def samples_per_second(self) -> float:
        """Recent throughput: padded samples the backend embeds per second of inference."""
        return self._samples_per_s

    def assume_throughput(self, samples_per_s: float | None) -> None:
        """Start the throughput estimate from a measured value instead of the cautious initial guess."""
        if samples_per_s is not None and samples_per_s > 0:
            self._samples_per_s = samples_per_s

    def backlog_samples(self) -> int:
        """Padded samples of every queued and running item: the work ahead of a new item."""
        bucket = self._backend.bucket
        with self._cond:
            return sum(bucket(it.n) for it in self._pending) + sum(bucket(it.n) for it in self._inflight)

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
        self, waveforms: list[Float32Array], deadline: float, loop: asyncio.AbstractEventLoop
    ) -> Ticket:
        """Queue all ``waveforms`` of one caller, or refuse them all."""
        ticket = Ticket(loop, deadline, len(waveforms))
        now = time.monotonic()
        with self._cond:
            if self._dead is not None:
                raise EngineUnavailable(f"inference worker died: {self._dead!r}")
            if self._stopping or self._thread is None:
                raise EngineUnavailable("inference engine is not running")
            if len(self._pending) + len(waveforms) > self._config.queue_size:
                self._metrics.rejected_overloaded.inc()
                raise Overloaded(
                    f"inference queue full ({len(self._pending)} items waiting)",
                    retry_after_s=self._retry_after(),
                )
            self._pending.extend(
                Item(ticket, future, samples, now)
                for future, samples in zip(ticket.futures, waveforms, strict=True)
            )
            self._metrics.queue_depth.set(len(self._pending))
            self._cond.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The caller gave up (deadline, disconnect, task cancelled): drop its queued items."""
        ticket.cancelled = True
        with self._cond:
            self._pending = [it for it in self._pending if it.ticket is not ticket]
            self._metrics.queue_depth.set(len(self._pending))

    def _retry_after(self) -> float:
        # Time for the worker to get through what is queued now, within sane bounds.
        estimate = len(self._pending) * self._seconds_per_item
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
            item.resolve(error)

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
        """Remove items nobody waits for: cancelled, failed, or past their deadline (lock held)."""
        if not self._pending:
            return
        now = time.monotonic()
        keep: list[Item] = []
        for it in self._pending:
            if it.ticket.cancelled or it.done:
                continue
            if now >= it.ticket.deadline:
                it.resolve(DeadlineExceeded("deadline passed while queued for inference"))
                continue
            keep.append(it)
        if len(keep) != len(self._pending):
            self._pending = keep
            self._metrics.queue_depth.set(len(keep))

    def _run_batch(self, batch: list[Item]) -> None:
        now = time.monotonic()
        live: list[Item] = []
        for it in batch:
            if it.ticket.cancelled or it.done:
                continue
            if now >= it.ticket.deadline:
                it.resolve(DeadlineExceeded("deadline passed while queued for inference"))
                continue
            self._metrics.queue_wait.observe(now - it.enqueued)
            live.append(it)
        if not live:
            self._inflight = []
            return
        t0 = time.perf_counter()
        try:
            out, padded = run_padded(self._backend, [it.samples for it in live])
        except Exception as exc:
            self._consecutive_failures += 1
            self._metrics.batch_failures.inc()
            log.warning("inference batch of %d failed: %r", len(live), exc)
            error = InferenceFailed(f"inference failed: {exc}")
            for it in live:
                it.resolve(error)
            self._inflight = []
            if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise WorkerDied(f"{self._consecutive_failures} inference batches failed in a row") from exc
            return
        elapsed = time.perf_counter() - t0
        self._consecutive_failures = 0
        self.batches_run += 1
        self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * elapsed / len(live)
        if elapsed > 0:
            self._samples_per_s = 0.8 * self._samples_per_s + 0.2 * padded * len(live) / elapsed
        real = sum(it.n for it in live)
        m = self._metrics
        m.inference_time.observe(elapsed)
        m.batch_size.observe(len(live))
        m.padding_fraction.observe(1.0 - real / (padded * len(live)))
        m.padded_samples.inc(padded * len(live))
        m.real_samples.inc(real)
        resolve_all(live, [out[row] for row in range(len(live))])
        self._inflight = []
