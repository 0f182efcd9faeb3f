"""Admission control: refuse early what the service cannot hold or finish in time.

Two questions are asked of every request that carries audio, before its body is read:

* **Memory.** One budget (``MemoryBudget``; ``SharedMemoryBudget`` across the front-end workers of a
  multi-process service) counts the bytes held for requests: the
  upload as it is read (its ``Content-Length`` reserved up front with what decoding it will likely need,
  a body without one counted as it streams), and each recording's decoded waveform (from its header,
  before decoding, for all recordings of the request at once). A request
  that does not fit now is refused with 429; one that could never fit (larger than the whole budget)
  with 413. Nothing is buffered first.
* **Time.** The engine knows the audio it has queued and its recent throughput (its ``Load``, read
  from the board in a front-end worker), so the expected wait of a new request is known before its
  audio is decoded. Admitted requests whose audio is being
  decoded count too, at the engine's average request size: a burst is refused at once instead of
  paying seconds of decoding before a refusal (a client still sending its body is not counted: it
  costs the engine nothing, and a crowd of slow clients must not lock out everyone else). A request
  whose expected wait exceeds ``max_queue_wait_s``, or whose deadline would pass first, gets 429 with a
  ``Retry-After`` computed from that estimate.

All bookkeeping is thread-safe (decoding threads reserve memory too) and O(workers) per call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass, field

from app.core.errors import AudioTooLarge, Overloaded, RequestCancelled
from app.core.memory import trim_heap
from app.core.periodic import Periodic
from app.engine.board import Board
from app.engine.engine import Engine

log = logging.getLogger(__name__)

# The heap is trimmed when requests held at least this much since the last trim and hold nothing now.
TRIM_AFTER_BYTES = 32 * 1024 * 1024
TRIM_INTERVAL_S = 2.0
# What a recording's decoding and speech measurement need besides the waveform itself (blocks, the
# resampler, the VAD's chunked work arrays; see app.audio.decode and app.audio.vad), held while it is decoded.
DECODE_WORK_BYTES = 8 * 1024 * 1024


class MemoryBudget:
    """The bytes this process holds for requests (a single-process service)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._used = 0
        self._peak = 0  # since the last ``take_peak``
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return self._used

    def take_peak(self) -> int:
        """The most that was in use since the last call (which starts a new period)."""
        with self._lock:
            peak, self._peak = self._peak, self._used
            return peak

    def try_take(self, n: int) -> bool:
        with self._lock:
            if self._used + n > self.limit_bytes:
                return False
            self._used += n
            self._peak = max(self._peak, self._used)
            return True

    def give_back(self, n: int) -> None:
        with self._lock:
            self._used = max(0, self._used - n)


class SharedMemoryBudget(MemoryBudget):
    """One budget for all front-end workers of a service, on the board: this worker takes by adding to its
    slot and checking the sum of all slots (taking it back when over). Two workers taking at once may
    both be refused; neither can overcommit. ``used_bytes`` and the peak stay this process's own (they
    tell the heap trimmer when this process is idle)."""

    def __init__(self, limit_bytes: int, board: Board, worker: int) -> None:
        super().__init__(limit_bytes)
        self._board = board
        self._worker = worker

    def try_take(self, n: int) -> bool:
        if not super().try_take(n):
            return False
        self._board.add_held_bytes(self._worker, n)
        if self._board.held_bytes() > self.limit_bytes:
            self._board.add_held_bytes(self._worker, -n)
            super().give_back(n)
            return False
        return True

    def give_back(self, n: int) -> None:
        super().give_back(n)
        self._board.add_held_bytes(self._worker, -n)


class HeapTrimmer:
    """After a burst, once no request holds memory, give the freed heap back to the OS (``trim_heap``),
    so the process's RSS falls back instead of staying at its peak."""

    def __init__(self, budget: MemoryBudget, interval_s: float = TRIM_INTERVAL_S) -> None:
        self.budget = budget
        self._pending_peak = 0
        self._trims_left = 0
        self._periodic = Periodic("heap trim", interval_s, self.step)

    async def step(self) -> None:
        self._pending_peak = max(self._pending_peak, self.budget.take_peak())
        if self._pending_peak >= TRIM_AFTER_BYTES:
            # Twice, one interval apart: a request gives its reservation back a moment before its last
            # objects (its response, its frames) are freed, and a trim in that moment finds little
            # (measured once in six bursts: RSS 506 MB after instead of 160-210 MB).
            self._pending_peak, self._trims_left = 0, 2
        if self._trims_left and self.budget.used_bytes == 0:
            log.debug("trimming the heap after a burst", extra={"trims_left": self._trims_left})
            self._trims_left -= 1
            await asyncio.to_thread(trim_heap)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()


@dataclass
class Reservation:
    """The bytes one request holds in the budget; all given back by ``release``.

    ``spare`` is held but not yet assigned: ``prepay`` reserves it up front (so an admitted request does
    not fail half-way for memory that later requests took), ``grow`` uses it before taking more from the
    budget, and ``shrink`` puts bytes back into it.
    """

    budget: MemoryBudget
    held: int = 0
    spare: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Once released (the request ended) nothing more is taken: work of a cancelled request that was
    # already on a decoding thread would otherwise hold budget for good.
    _released: bool = field(default=False, repr=False)

    def prepay(self, n: int, what: str) -> None:
        """Hold ``n`` more bytes for later use (refused like ``grow``)."""
        self._take(n, what)
        with self._lock:
            self.spare += n

    def grow(self, n: int, what: str) -> None:
        """Hold ``n`` more bytes for ``what``, from the spare first, or refuse the request (413 when it
        could never fit, 429 when not now)."""
        if n <= 0:
            return
        with self._lock:
            from_spare = min(n, self.spare)
            self.spare -= from_spare
        self._take(n - from_spare, what)

    def _take(self, n: int, what: str) -> None:
        if n <= 0:
            return
        with self._lock:
            if self._released:
                raise RequestCancelled(f"the request ended before {what} was reserved")
            if self.held + n > self.budget.limit_bytes:
                raise AudioTooLarge(
                    f"{what} needs {self.held + n} bytes in all; this server holds at most "
                    f"{self.budget.limit_bytes} bytes for requests",
                    max_request_bytes=self.budget.limit_bytes,
                )
            if not self.budget.try_take(n):
                raise Overloaded(
                    f"memory for requests is in use: {what} does not fit now",
                    retry_after_s=1.0,
                    reason="memory",
                )
            self.held += n

    def shrink(self, n: int) -> None:
        """No longer needed for what it was taken for; kept as spare until ``release``."""
        with self._lock:
            self.spare += max(0, n)

    def release(self) -> None:
        with self._lock:
            n, self.held, self.spare, self._released = self.held, 0, 0, True
        self.budget.give_back(n)


class OnTheirWay:
    """Requests on their way to the engine, in this process. A request still sending its body is not
    counted (a slow client costs the engine nothing); one whose body is in counts at the engine's average
    request size until its headers tell how much audio it brings, then at exactly that."""

    def __init__(self) -> None:
        self._undeclared = 0.0
        self._declared_samples = 0.0
        self._lock = threading.Lock()

    def move(self, undeclared: float, samples: float) -> None:
        with self._lock:
            self._undeclared = max(0.0, self._undeclared + undeclared)
            self._declared_samples = max(0.0, self._declared_samples + samples)

    def totals(self) -> tuple[float, float]:
        """(requests not declared yet, declared samples)."""
        with self._lock:
            return self._undeclared, self._declared_samples


class SharedOnTheirWay(OnTheirWay):
    """Every front-end worker's requests on their way, on the board (this worker writes its own slot)."""

    def __init__(self, board: Board, worker: int) -> None:
        super().__init__()
        self._board = board
        self._worker = worker

    def move(self, undeclared: float, samples: float) -> None:
        self._board.move_on_their_way(self._worker, undeclared, samples)

    def totals(self) -> tuple[float, float]:
        return self._board.on_their_way()


class Admission:
    def __init__(
        self,
        engine: Engine,
        budget: MemoryBudget,
        max_queue_wait_s: float,
        on_their_way: OnTheirWay | None = None,
        request_timeout_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.budget = budget
        self.max_queue_wait_s = max_queue_wait_s
        self.request_timeout_s = request_timeout_s  # what a request may ever take (413 beyond)
        self._on_their_way = on_their_way or OnTheirWay()

    def expected_wait_s(self, own_samples: int = 0) -> float:
        """Seconds a request admitted now (bringing ``own_samples``) would wait for inference to finish."""
        undeclared, declared = self._on_their_way.totals()
        return self.engine.load().expected_wait_s(
            extra_samples=declared + own_samples, extra_requests=undeclared
        )

    def admit(self, content_length: int | None, deadline: float) -> Admitted:
        """Admit a request (before its body is read) or refuse it with 429/413 at once."""
        wait = self.expected_wait_s()
        remaining = deadline - time.monotonic()
        if wait > self.max_queue_wait_s or wait > remaining:
            retry = max(1.0, math.ceil(wait - min(self.max_queue_wait_s, remaining)))
            raise Overloaded(
                f"expected wait for inference is {wait:.1f} s (at most {self.max_queue_wait_s:g} s are "
                "accepted)",
                retry_after_s=retry,
            )
        reservation = Reservation(self.budget)
        if content_length is not None:
            reservation.grow(content_length, "the request body")
        return Admitted(self, reservation)

    def refuse_unless_in_time(
        self, samples: int, decode_s: float, queued_decode_s: float, deadline: float
    ) -> None:
        """Before decoding, from the declared durations: refuse audio whose decoding (``decode_s``, after
        ``queued_decode_s`` of others') and inference cannot be done by the deadline, counting the audio
        of the other requests on their way (see ``Load.refuse_unless_in_time``), instead of
        decoding it only to refuse it later."""
        undeclared, declared = self._on_their_way.totals()
        self.engine.load().refuse_unless_in_time(
            samples,
            deadline,
            before_s=decode_s,
            queued_before_s=queued_decode_s,
            extra_samples=declared,
            extra_requests=undeclared,
            budget_s=self.request_timeout_s,
        )

    def _move(self, undeclared: int, samples: int) -> None:
        self._on_their_way.move(undeclared, samples)


class Admitted:
    """An admitted request: its memory reservation, and the audio it is bringing to the engine."""

    def __init__(self, admission: Admission, reservation: Reservation) -> None:
        self.reservation = reservation
        self._admission = admission
        self._counted = False
        self._declared = 0

    def body_read(self) -> None:
        """Its body is in: it is about to bring audio to the engine (counted until ``decoded``)."""
        if not self._counted:
            self._counted = True
            self._admission._move(+1, 0)

    def refuse_unless_in_time(
        self, samples: int, decode_s: float, queued_decode_s: float, deadline: float
    ) -> None:
        """See ``Admission.refuse_unless_in_time`` (before this request declares its audio)."""
        self._admission.refuse_unless_in_time(samples, decode_s, queued_decode_s, deadline)

    def declare(self, samples: int) -> None:
        """Its headers say how much audio it brings: counted at that from now on."""
        if self._counted and not self._declared:
            self._declared = samples
            self._admission._move(-1, samples)

    def decoded(self) -> None:
        """Its audio reached the engine (or never will): the engine's own queue counts it from here."""
        if self._counted:
            self._counted = False
            self._admission._move(0 if self._declared else -1, -self._declared)
            self._declared = 0

    def release(self) -> None:
        self.decoded()
        self.reservation.release()
