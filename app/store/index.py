"""Replica-local identification index: a numpy matrix of unit-length voiceprints, exact cosine search.

Each replica keeps every voiceprint of its model in one contiguous float32 matrix (rows = speakers)
and answers identify queries with one matrix-vector product (BLAS sgemv) plus a partial sort
(``argpartition``) for the top k. Exact — no approximate index — because at the sizes a speaker
registry reaches (10^5-10^6) the scan costs milliseconds. ``app.store.sync`` keeps it in step with
Redis; this module is pure numpy and thread-safe (searches run in a worker thread).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.core.vectors import normalize_rows

_MIN_CAPACITY = 1024
_ARGMAX_MAX_K = 16


@dataclass(frozen=True)
class Hit:
    speaker_id: str
    score: float


class VoiceprintIndex:
    def __init__(self, dim: int, capacity: int = _MIN_CAPACITY) -> None:
        self.dim = dim
        self._lock = threading.Lock()
        self._matrix = np.zeros((max(capacity, _MIN_CAPACITY), dim), dtype=np.float32)
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, speaker_id: object) -> bool:
        return speaker_id in self._rows

    def _grow_to(self, rows: int) -> None:
        if rows <= self._matrix.shape[0]:
            return
        capacity = max(rows, 2 * self._matrix.shape[0])  # doubling: amortised O(1) appends
        grown = np.zeros((capacity, self.dim), dtype=np.float32)
        grown[: len(self._ids)] = self._matrix[: len(self._ids)]
        self._matrix = grown

    def replace_all(self, ids: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
        normalized = normalize_rows(vectors) if len(ids) else np.zeros((0, self.dim), dtype=np.float32)
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate speaker ids")
        matrix = np.zeros((max(len(ids), _MIN_CAPACITY), self.dim), dtype=np.float32)
        matrix[: len(ids)] = normalized
        with self._lock:
            self._matrix = matrix
            self._ids = list(ids)
            self._rows = {sid: i for i, sid in enumerate(self._ids)}

    def upsert_many(self, ids: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
        if not ids:
            return
        normalized = normalize_rows(vectors)
        with self._lock:
            for sid, vec in zip(ids, normalized, strict=True):
                row = self._rows.get(sid)
                if row is None:
                    row = len(self._ids)
                    self._grow_to(row + 1)
                    self._ids.append(sid)
                    self._rows[sid] = row
                self._matrix[row] = vec

    def upsert(self, speaker_id: str, vector: npt.NDArray[np.float32]) -> None:
        self.upsert_many([speaker_id], vector.reshape(1, -1))

    def remove(self, speaker_id: str) -> bool:
        with self._lock:
            row = self._rows.pop(speaker_id, None)
            if row is None:
                return False
            last = len(self._ids) - 1
            if row != last:  # swap the last row into the hole: removal stays O(dim)
                moved = self._ids[last]
                self._matrix[row] = self._matrix[last]
                self._ids[row] = moved
                self._rows[moved] = row
            self._ids.pop()
            self._matrix[last] = 0.0
            return True

    def search(
        self,
        query: npt.NDArray[np.float32],
        top_k: int,
        candidates: Collection[str] | None = None,
    ) -> list[Hit]:
        """The ``top_k`` most similar speakers (cosine, best first), optionally among ``candidates``."""
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        q = normalize_rows(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
        with self._lock:
            if candidates is not None:
                rows = np.fromiter((self._rows[c] for c in set(candidates) if c in self._rows), dtype=np.intp)
                scores = self._matrix[rows] @ q
            else:
                rows = None
                scores = self._matrix[: len(self._ids)] @ q
            best, best_scores = _top_k(scores, top_k)
            picked = rows[best] if rows is not None else best
            return [Hit(self._ids[int(r)], float(v)) for r, v in zip(picked, best_scores, strict=True)]


def _top_k(scores: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Positions and values of the k largest scores, best first (ties: lower position first).

    Overwrites ``scores``. For the usual small k, k passes of ``argmax`` (one SIMD scan each) beat
    ``argpartition`` by about 10x at 10^5 rows; larger k uses the partition.
    """
    k = min(k, scores.size)
    if k == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32)
    if k <= _ARGMAX_MAX_K:
        positions = np.empty(k, dtype=np.intp)
        values = np.empty(k, dtype=np.float32)
        for i in range(k):
            pos = int(np.argmax(scores))
            positions[i], values[i] = pos, scores[pos]
            scores[pos] = -np.inf
        return positions, values
    best = np.argpartition(scores, scores.size - k)[scores.size - k :]
    best = best[np.lexsort((best, -scores[best]))]
    return best, scores[best]
