"""Identification search latency of the replica-local index (``app.store.index.VoiceprintIndex``).

For 1k, 100k and 1M enrolled speakers (dim 256, random unit vectors), measures the p50/p99 latency of
one top-5 exact cosine search, against two baselines measured in the same run:

* ``argsort``: the same matrix-vector product followed by a full sort (instead of argpartition);
* ``loop``: a per-speaker Python loop over stored vectors (what a naive implementation does; run
  on fewer queries and only up to 100k — at 1M it takes seconds per query).

Usage: python bench/bench_search.py [--sizes 1000,100000,1000000] [--queries 200] [--threads N]
Prints one table; ratios are baseline / index (higher = the index is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store.index import VoiceprintIndex

DIM = 256
TOP_K = 5


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def timed(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> list[float]:
    fn(queries[0])  # warm caches / BLAS threads
    out = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def build(n: int, rng: np.random.Generator) -> tuple[VoiceprintIndex, np.ndarray]:
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VoiceprintIndex(DIM)
    index.replace_all([f"spk{i}" for i in range(n)], vectors)
    return index, vectors


def bench_size(n: int, rng: np.random.Generator, n_queries: int, loop_queries: int) -> None:
    index, vectors = build(n, rng)
    queries = rng.standard_normal((n_queries, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [f"spk{i}" for i in range(n)]

    def argsort_search(q: np.ndarray) -> list[tuple[str, float]]:
        scores = vectors @ q
        best = np.argsort(-scores)[:TOP_K]
        return [(ids[i], float(scores[i])) for i in best]

    rows = list(vectors)  # one array per speaker, as a dict-of-vectors store would hold them

    def loop_search(q: np.ndarray) -> list[tuple[str, float]]:
        scored = [(float(np.dot(v, q)), i) for i, v in enumerate(rows)]
        scored.sort(reverse=True)
        return [(ids[i], s) for s, i in scored[:TOP_K]]

    # Same answers first: the benchmark compares equal work.
    for q in queries[:3]:
        got = [h.speaker_id for h in index.search(q, TOP_K)]
        assert got == [i for i, _ in argsort_search(q)], "index disagrees with the baseline"

    ours = timed(lambda q: index.search(q, TOP_K), queries)
    base = timed(argsort_search, queries[: max(10, n_queries // 4)])
    results = [("index", ours), ("argsort", base)]
    if n <= 100_000:
        results.append(("loop", timed(loop_search, queries[:loop_queries])))
    ours_p50 = statistics.median(ours)
    for name, lat in results:
        ratio = statistics.median(lat) / ours_p50
        print(f"{n:>9} {name:>8} {percentile(lat, 50):>9.3f} {percentile(lat, 99):>9.3f} {ratio:>9.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--loop-queries", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"cpu cores available: {len(os.sched_getaffinity(0))}, numpy {np.__version__}, dim {DIM}, top {TOP_K}"
    )
    header = f"{'speakers':>9} {'method':>8} {'p50 ms':>9} {'p99 ms':>9} {'p50 ratio':>10}"
    print(header)
    print("-" * len(header))
    for n in (int(s) for s in args.sizes.split(",")):
        bench_size(n, rng, args.queries, args.loop_queries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
