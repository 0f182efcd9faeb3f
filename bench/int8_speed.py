"""int8 vs float32 graph vs eager PyTorch, interleaved item by item: speed ratios on a shared machine.

``bench.bench_engine`` runs each model and precision as its own block of runs, minutes apart; on a
machine that other work shares, a block that meets a busy minute is slow as a whole and the ratios
between blocks are noise. This measures the same three things in one loop instead, round after round:

* **A**: the float32 PyTorch model (random init, the graph's weights), eager, one utterance at a time;
* **fp32**: the float32 graph fed a full batch (``bench_engine``'s baseline B: the engine's ceiling);
* **int8**: the int8 graph of the same model, the same batch.

Each item keeps its best round (other processes only ever slow a run down), so every ratio compares
measurements taken seconds apart. Graphs come from ``bench_engine.prepare_model`` (the same cache and
int8 export as the engine benchmark). Usage:

    python -m bench.int8_speed [--models titanet-large ecapa_tdnn] [--durations 3 10] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.core.paths import REPO_ROOT
from app.core.process import available_cpus
from app.engine.manifest import GRAPH_FILE
from bench.bench_engine import prepare_model, torch_baseline, utterances


def _session(model_dir: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_dir / GRAPH_FILE), options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["titanet-large", "ecapa_tdnn"])
    p.add_argument("--durations", nargs="+", type=float, default=[3.0, 10.0])
    p.add_argument("--batch", type=int, default=16, help="utterances per graph run (16)")
    p.add_argument("--torch-items", type=int, default=2, help="eager utterances per round (2)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="ORT/torch threads, 0 = cores available")
    p.add_argument("--cache", type=Path, default=REPO_ROOT / "data" / "bench-models")
    p.add_argument("--calibration-audio", type=Path, default=REPO_ROOT / "tests" / "data" / "speech")
    args = p.parse_args(argv)
    threads = args.threads or available_cpus()
    print(
        f"# {os.uname().machine}, {available_cpus()} cores, threads={threads}, batch={args.batch}, "
        f"rounds={args.rounds}, load average at start {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows = []
    for spec in args.models:
        fp32_dir = prepare_model(spec, args.cache, "fp32")
        int8_dir = prepare_model(spec, args.cache, "int8", args.calibration_audio)
        eager = torch_baseline(fp32_dir, None, threads)
        if eager is None:
            raise SystemExit(f"{spec}: no PyTorch model for baseline A")
        sessions = {"fp32": _session(fp32_dir, threads), "int8": _session(int8_dir, threads)}
        for seconds in args.durations:
            waves = utterances(seconds, args.batch)
            batch = np.stack(waves)
            lengths = np.full(args.batch, batch.shape[1], dtype=np.int64)
            feed = {"audio": batch, "lengths": lengths}
            eager(waves[0])
            for session in sessions.values():
                session.run(None, feed)  # warm
            best = {"A": np.inf, "fp32": np.inf, "int8": np.inf}
            for _ in range(args.rounds):
                for i in range(args.torch_items):
                    start = time.perf_counter()
                    eager(waves[i])
                    best["A"] = min(best["A"], time.perf_counter() - start)
                for name, session in sessions.items():
                    start = time.perf_counter()
                    session.run(None, feed)
                    best[name] = min(best[name], (time.perf_counter() - start) / args.batch)
            rate = {k: 1.0 / v for k, v in best.items()}
            rows.append(
                f"| {spec} | {seconds:g} | {rate['A']:.2f} | {rate['fp32']:.2f} | {rate['int8']:.2f} "
                f"| {rate['fp32'] / rate['A']:.2f}× | {rate['int8'] / rate['A']:.2f}× "
                f"| {rate['int8'] / rate['fp32']:.2f}× |"
            )
            print(rows[-1], flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")
    header = ["model", "utt s", "A: torch eager utt/s", "fp32 graph utt/s", "int8 graph utt/s"]
    print("| " + " | ".join([*header, "fp32 vs A", "int8 vs A", "int8 vs fp32"]) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
