"""The shapes a GPU session runs: length buckets, batch sizes, and the warm-up that visits them.

On CUDA every new input shape costs something the first time it runs (cuDNN's algorithm choice for
each convolution, with ``cudnn_conv_algo_search=EXHAUSTIVE`` a timed trial of every algorithm; arena
growth), so a GPU session runs a small, fixed set of shapes and warm-up visits all of them before the
service reports ready. Padding is cheap on a GPU (a batch of one leaves most of it idle), so:

* **lengths** are padded up to the next value of a series of about 25 % steps in seconds
  (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, ...; 13 buckets up to a 30 s segment), the last
  bucket being the longest segment itself: at most 25 % padding from 3 s up;
* **rows**: a batch of ``b`` segments is run with the next planned batch size, the powers of two up to
  the most that fit the padded-audio budget at that length, plus that most itself; the extra rows are
  copies of the first and their outputs are dropped.

Every batch the batcher can cut (at most ``max_batch_size`` segments and ``max_batch_samples`` of
padded audio, or a single segment up to the longest) maps onto a planned shape (``ShapePlan.run_shape``),
which ``tests/engine/test_gpu_shapes.py`` checks exhaustively. CPU sessions do not use this: shape
changes cost nothing there and each padded sample costs compute (``app.engine.backend``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

# One decade of the series (seconds x 10^k); below 10 s whole seconds: 1, 2, 3, 4, 5, 6, 8.
_DECADE = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
_FIRST_DECADE = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)


def length_series_seconds() -> Iterator[float]:
    """1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, ... (no end)."""
    yield from _FIRST_DECADE
    scale = 10.0
    while True:
        for mantissa in _DECADE:
            yield mantissa * scale
        scale *= 10.0


def _series_samples(sample_rate: int) -> Iterator[int]:
    for seconds in length_series_seconds():
        yield round(seconds * sample_rate)


@dataclass(frozen=True)
class ShapePlan:
    """The (rows, samples) shapes a GPU session runs, for one batching configuration."""

    sample_rate: int
    max_samples: int  # the longest segment; the last length bucket
    max_batch_size: int
    max_batch_samples: int  # padded-audio budget of one batch

    def __post_init__(self) -> None:
        if min(self.sample_rate, self.max_samples, self.max_batch_size, self.max_batch_samples) < 1:
            raise ValueError(f"every limit of a shape plan must be positive: {self}")

    @cached_property
    def lengths(self) -> tuple[int, ...]:
        """Length buckets (samples), ascending; the last one is ``max_samples``."""
        out: list[int] = []
        for n in _series_samples(self.sample_rate):
            if n >= self.max_samples:
                break
            out.append(n)
        out.append(self.max_samples)
        return tuple(out)

    def bucket(self, n_samples: int) -> int:
        """The length a batch whose longest item has ``n_samples`` runs with."""
        if n_samples <= self.max_samples:
            return next(b for b in self.lengths if b >= n_samples)
        # Longer than any planned segment (only without a segment length): the series goes on.
        return next(b for b in _series_samples(self.sample_rate) if b >= n_samples)

    def max_rows(self, length: int) -> int:
        """The most segments of padded length ``length`` one batch may hold (at least one)."""
        return max(1, min(self.max_batch_size, self.max_batch_samples // length))

    def batch_sizes(self, length: int) -> tuple[int, ...]:
        """Planned batch sizes at padded length ``length``: powers of two up to ``max_rows``, and it."""
        top = self.max_rows(length)
        sizes = {1 << k for k in range(top.bit_length()) if 1 << k <= top}
        return tuple(sorted(sizes | {top}))

    def run_shape(self, rows: int, n_samples: int) -> tuple[int, int]:
        """The planned (rows, samples) a batch of ``rows`` items, the longest ``n_samples``, runs as.

        A batch beyond the plan (more rows than fit the budget at that length: the batcher never cuts
        one) keeps its own row count.
        """
        length = self.bucket(n_samples)
        planned = next((b for b in self.batch_sizes(length) if b >= rows), rows)
        return planned, length

    @cached_property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """Every planned shape, largest padded audio first (the memory arena grows once)."""
        every = [(b, n) for n in self.lengths for b in self.batch_sizes(n)]
        return tuple(sorted(every, key=lambda s: (-s[0] * s[1], -s[1])))

    def audio_seconds(self) -> float:
        """Padded audio that one pass over ``shapes`` (the warm-up) computes."""
        return sum(b * n for b, n in self.shapes) / self.sample_rate
