"""Time exported VoxGate graphs under ONNX Runtime alone (no engine, no torch at run time).

For comparing graph variants and session options: every (graph, options, duration, batch) case runs in
``--rounds`` interleaved rounds and keeps its best round, because other processes on a shared machine
only ever slow a run down. Also writes ORT's optimised graph and an operator profile on request.

    python -m bench.bench_graph DIR [DIR ...] [--durations 3 10] [--batches 1 8] [--rounds 5]
    python -m bench.bench_graph --export titanet-large ecapa_tdnn --out data/graph-bench/after
    python -m bench.bench_graph DIR --profile      # per-operator share of the run time
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

SAMPLE_RATE = 16000


def session(
    graph: Path, options: dict[str, str], *, optimized: Path | None, profile: bool
) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = len(os.sched_getaffinity(0))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    for key, value in options.items():
        if key == "mem_pattern":
            so.enable_mem_pattern = value == "1"
        elif key == "cpu_arena":
            so.enable_cpu_mem_arena = value == "1"
        else:
            so.add_session_config_entry(key, value)
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    if profile:
        so.enable_profiling = True
    return ort.InferenceSession(
        str(graph / "model.onnx"), sess_options=so, providers=["CPUExecutionProvider"]
    )


def inputs(seconds: float, batch: int) -> dict[str, np.ndarray]:
    n = int(seconds * SAMPLE_RATE)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((batch, n))).astype(np.float32)
    return {"audio": audio, "lengths": np.full(batch, n, dtype=np.int64)}


def time_case(sess: ort.InferenceSession, feed: dict[str, np.ndarray], repeats: int) -> float:
    sess.run(None, feed)  # warm-up (first run allocates)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return best


def op_profile(graph: Path, seconds: float, batch: int) -> None:
    sess = session(graph, {}, optimized=None, profile=True)
    feed = inputs(seconds, batch)
    for _ in range(4):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())
    per_op: collections.Counter[str] = collections.Counter()
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    trace.unlink()
    total = sum(per_op.values())
    print(f"# {graph.name} {seconds:g}s batch {batch}: operator share of kernel time")
    for op, us in per_op.most_common(12):
        print(f"  {op:24s} {100 * us / total:5.1f} %")


def parse_options(items: list[str]) -> list[dict[str, str]]:
    """``--options "a=1,b=2" "c=0"`` -> one dict per variant; the empty string is the default."""
    out = []
    for item in items:
        pairs = [p.split("=", 1) for p in item.split(",") if p]
        out.append({k: v for k, v in pairs})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("graphs", nargs="*", type=Path, help="model directories (model.onnx inside)")
    p.add_argument("--durations", nargs="+", type=float, default=[3.0, 10.0])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="runs per case per round (best kept)")
    p.add_argument(
        "--options",
        nargs="+",
        default=[""],
        help='session config variants, e.g. "" "session.intra_op.allow_spinning=0"',
    )
    p.add_argument("--profile", action="store_true")
    p.add_argument("--save-optimized", type=Path, help="write ORT's optimised graph of the first graph here")
    p.add_argument("--export", nargs="+", help="export random-init architectures (fp32) to --out first")
    p.add_argument("--out", type=Path, default=Path("data/graph-bench"))
    args = p.parse_args(argv)

    if args.export:
        from app.export.nemo_export import export_random_init

        for arch in args.export:
            export_random_init(arch, args.out / arch, precision="fp32", name=None)
            print(f"# exported {arch} to {args.out / arch}", file=sys.stderr)
    if args.save_optimized and args.graphs:
        session(args.graphs[0], {}, optimized=args.save_optimized, profile=False)
    if args.profile:
        for graph in args.graphs:
            for seconds in args.durations:
                op_profile(graph, seconds, args.batches[0])
        return 0
    variants = parse_options(args.options)
    sessions = {
        (g, i): session(g, o, optimized=None, profile=False)
        for g in args.graphs
        for i, o in enumerate(variants)
    }
    best: dict[tuple[Path, int, float, int], float] = {}
    for _ in range(args.rounds):
        for seconds in args.durations:
            for batch in args.batches:
                feed = inputs(seconds, batch)
                for key, sess in sessions.items():
                    t = time_case(sess, feed, args.repeats) / batch
                    case = (*key, seconds, batch)
                    best[case] = min(best.get(case, float("inf")), t)
    print(f"{'graph':40s} {'options':45s} {'sec':>4s} {'batch':>5s} {'ms/utt':>8s}")
    for (graph, i, seconds, batch), t in sorted(
        best.items(), key=lambda kv: (kv[0][2], kv[0][3], str(kv[0][0]), kv[0][1])
    ):
        opts = ",".join(f"{k}={v}" for k, v in variants[i].items()) or "(default)"
        print(f"{graph!s:40s} {opts:45s} {seconds:4g} {batch:5d} {1000 * t:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
