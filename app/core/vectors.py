"""Unit-length vectors: the one definition of the normalisation cosine scoring relies on."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

# Below this norm a vector has no direction worth comparing (a degenerate or silent input).
MIN_NORM = 1e-12


def normalize_rows(vectors: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """Each row of ``vectors`` ([N, D], or one [D] vector as [1, D]) scaled to unit length.

    Raises ``ValueError`` for a zero or non-finite row: such a vector cannot be scored.
    """
    v = np.asarray(vectors, dtype=np.float32)
    v = v.reshape(-1, v.shape[-1])
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms <= MIN_NORM):
        raise ValueError("cannot normalise a zero or non-finite vector")
    normalized: npt.NDArray[np.float32] = (v / norms).astype(np.float32)
    return normalized


def l2_normalize(vector: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """One vector scaled to unit length (``ValueError`` when it has none)."""
    unit: npt.NDArray[np.float32] = normalize_rows(vector)[0]
    return unit
