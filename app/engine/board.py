"""The board: a few numbers in shared memory that the processes of a multi-process service read without
asking each other (no message, no lock on the request path).

* The inference process writes its state: whether it is ready (and which start of it, its
  generation), and its ``Load`` (both stages' backlog and throughput), refreshed every few
  milliseconds. Every front-end worker's admission reads it to refuse overload early.
* Each front-end worker writes its own slot: the requests whose audio is on its way to the engine
  (admission counts everyone's), and the bytes it holds for requests (the memory budget is one budget
  for the whole service: a worker takes from it by adding to its slot, then checking the sum).

Every value is written by one process only, as a float64 (whole-word stores: a reader sees the old or the
new value). The supervisor makes the board (an anonymous ``memfd``: it disappears with the last process
that maps it, even after ``kill -9``) and hands its file descriptor to every child; it zeroes a dead
worker's slot before replacing the worker.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.engine.load import Load

# Inference process fields.
_GENERATION, _READY, _PID, _HEARTBEAT = 0, 1, 2, 3
_SPEECH_BACKLOG, _SPEECH_RATE, _EMBED_BACKLOG, _EMBED_RATE, _REQUEST_SAMPLES = 4, 5, 6, 7, 8
_HEADER = 16
# Worker slot fields.
_UNDECLARED, _DECLARED_SAMPLES, _HELD_BYTES = 0, 1, 2
_SLOT = 4


def board_bytes(max_workers: int) -> int:
    return 8 * (_HEADER + _SLOT * max_workers)


@dataclass
class Board:
    fd: int
    max_workers: int
    _map: mmap.mmap
    _values: npt.NDArray[np.float64]

    @classmethod
    def create(cls, max_workers: int) -> Board:
        fd = os.memfd_create("voxgate-board", os.MFD_CLOEXEC)
        os.ftruncate(fd, board_bytes(max_workers))
        return cls.attach(fd, max_workers)

    @classmethod
    def attach(cls, fd: int, max_workers: int) -> Board:
        mapped = mmap.mmap(fd, board_bytes(max_workers))
        return cls(fd, max_workers, mapped, np.frombuffer(mapped, dtype=np.float64))

    # --- the inference process -------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return int(self._values[_GENERATION])

    @property
    def ready(self) -> bool:
        return bool(self._values[_READY])

    @property
    def inference_pid(self) -> int:
        return int(self._values[_PID])

    @property
    def heartbeat(self) -> float:
        """time.monotonic() of the inference process's last publication."""
        return float(self._values[_HEARTBEAT])

    def inference_started(self, pid: int) -> int:
        """A new inference process is up (ready from ``publish``): its generation."""
        self._values[_PID] = pid
        self._values[_GENERATION] += 1
        return self.generation

    def set_ready(self, ready: bool) -> None:
        self._values[_READY] = 1.0 if ready else 0.0

    def publish(self, load: Load, now: float) -> None:
        v = self._values
        v[_SPEECH_BACKLOG], v[_SPEECH_RATE] = load.speech_backlog, load.speech_rate
        v[_EMBED_BACKLOG], v[_EMBED_RATE] = load.embed_backlog, load.embed_rate
        v[_REQUEST_SAMPLES] = load.request_samples
        v[_HEARTBEAT] = now

    def load(self) -> Load:
        v = self._values
        return Load(
            speech_backlog=float(v[_SPEECH_BACKLOG]),
            speech_rate=max(1.0, float(v[_SPEECH_RATE])),
            embed_backlog=float(v[_EMBED_BACKLOG]),
            embed_rate=max(1.0, float(v[_EMBED_RATE])),
            request_samples=float(v[_REQUEST_SAMPLES]),
        )

    # --- front-end workers -----------------------------------------------------------------------
    def _slot(self, worker: int) -> npt.NDArray[np.float64]:
        if not 0 <= worker < self.max_workers:
            raise IndexError(f"worker slot {worker} of {self.max_workers}")
        start = _HEADER + _SLOT * worker
        return self._values[start : start + _SLOT]

    def on_their_way(self) -> tuple[float, float]:
        """Every worker's (requests whose audio is not declared yet, declared samples) on their way."""
        slots = self._values[_HEADER:].reshape(self.max_workers, _SLOT)
        return float(slots[:, _UNDECLARED].sum()), float(slots[:, _DECLARED_SAMPLES].sum())

    def move_on_their_way(self, worker: int, undeclared: float, samples: float) -> None:
        slot = self._slot(worker)
        slot[_UNDECLARED] = max(0.0, slot[_UNDECLARED] + undeclared)
        slot[_DECLARED_SAMPLES] = max(0.0, slot[_DECLARED_SAMPLES] + samples)

    def held_bytes(self, worker: int | None = None) -> float:
        """Bytes held for requests by one worker, or by all of them."""
        if worker is not None:
            return float(self._slot(worker)[_HELD_BYTES])
        slots = self._values[_HEADER:].reshape(self.max_workers, _SLOT)
        return float(slots[:, _HELD_BYTES].sum())

    def add_held_bytes(self, worker: int, n: float) -> None:
        slot = self._slot(worker)
        slot[_HELD_BYTES] = max(0.0, slot[_HELD_BYTES] + n)

    def clear_slot(self, worker: int) -> None:
        """A worker died: what it held and had on its way is gone with it."""
        self._slot(worker)[:] = 0.0

    def close(self) -> None:
        self._values = np.zeros(0)
        self._map.close()


@dataclass(frozen=True)
class WorkerSlot:
    """A front-end worker's place on the board (its admission and memory budget are the service's)."""

    board: Board
    worker: int
