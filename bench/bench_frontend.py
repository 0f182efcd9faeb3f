"""CPU per answered request of ``voxgate serve``, by process, against the one-process design (a benchmark).

For each model and each serving design it starts its own redis-server and ``voxgate serve`` on 127.0.0.1,
enrolls one speaker from ``examples/audio`` and sends ``/verify`` with a 3.0 s FLAC of the same speaker
from ``--clients`` closed-loop clients on keep-alive connections for ``--seconds``. It reads the CPU
time (user + system, every thread) of every server process from /proc before and after, and prints:
answers per second, p50/p99 latency, and CPU-milliseconds per answered request for the front end (the
supervisor and the HTTP workers; the whole process in the one-process designs) and for the inference
process (and, of it, its main thread: the event loop that takes the workers' requests and answers them,
the host work that bounds what one inference process can feed a GPU), and in all.

Designs:
* ``baseline``: the one-process service of ``--baseline-ref`` (a ``git archive`` of that commit, served
  from its own tree: the design before the front end moved into processes of its own);
* ``w0``: this tree with ``VOXGATE_WORKERS=0`` (one process, speech detection in its engine);
* ``w1``, ``w2``, ...: this tree with that many front-end workers and one inference process;
* ``baseline-w1``, ...: the tree of ``--baseline-ref`` with that many workers (to measure a change to the
  multi-process design against its parent in the same run: ``--baseline-ref HEAD``).

Models: ``default`` (models/default, Resemblyzer GE2E) and ``titanet-reduced`` (the reduced TitaNet-L of
tests/data/nemo, exported once into ``--cache``; a cheap graph, so the front end's share shows).

Usage:  python -m bench.bench_frontend                          # everything, about 4 minutes here
        python -m bench.bench_frontend --designs w0,w2 --models titanet-reduced --seconds 10
        python -m bench.bench_frontend --models titanet-reduced --baseline-ref HEAD --designs baseline-w1,w1
Loopback only; every process it starts is stopped at the end (and dies with it).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf

from bench.bench_load import Conn as _Conn
from bench.bench_load import (
    Redis,
    Request,
    Server,
    closed_loop,
    cpu_seconds,
    exchange,
    multipart_request,
    pct,
    process_tree,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "audio"
ENROLL = ("1688-142285-0002.flac", "1688-142285-0003.flac", "1688-142285-0004.flac")
PROBE = "1688-142285-0005.flac"
PROBE_SECONDS = 3.0
# The last commit of the one-process design (speech detection in the decode threads, the engine in the
# HTTP process): what the multi-process front end is measured against.
DEFAULT_BASELINE = "e7e2c6b"
NEMO_FIXTURE = REPO / "tests" / "data" / "nemo" / "titanet-large-reduced" / "titanet-large-reduced.nemo"


@dataclass
class Row:
    model: str
    design: str
    answered: int
    other: int
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float
    frontend_cpu_ms: float
    inference_cpu_ms: float | None
    inference_loop_cpu_ms: float | None  # the inference process's main thread: IPC and request handling
    total_cpu_ms: float
    processes: int


def role(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    return "inference" if "app.engine.inference" in cmdline else "frontend"


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds of the front-end processes, of the inference process, and of the inference process's
    main thread (its event loop: the IPC and each request's handling, not the graph or the batchers)."""
    totals: dict[str, float] = {"frontend": 0.0, "inference": 0.0, "inference_loop": 0.0}
    for pid in process_tree(root):
        kind = role(pid)
        if kind in totals:
            totals[kind] += cpu_seconds(pid)
        if kind == "inference":
            totals["inference_loop"] += cpu_seconds(pid, pid)
    return totals


def probe_flac() -> bytes:
    wave, rate = sf.read(EXAMPLES / PROBE, dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, wave[: round(PROBE_SECONDS * rate)], rate, format="FLAC")
    return buf.getvalue()


def export_fixture(cache: Path, tree: Path = REPO, tag: str = "current") -> Path:
    """The reduced TitaNet-L exported by ``tree``'s own exporter (a baseline reads only the manifest
    format of its day)."""
    out = cache / f"titanet-reduced-{tag}"
    if not (out / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "app.cli", "export", "--nemo", str(NEMO_FIXTURE), "--out", str(out)],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            check=True,
            capture_output=True,
        )
    return out


def baseline_tree(ref: str, work: Path) -> Path:
    tree = work / f"baseline-{ref}"
    if not tree.is_dir():
        tree.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", ref, "app", "models"], cwd=REPO, capture_output=True, check=True
        )
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
    return tree


async def post(port: int, path: str, fields: list[tuple[str, str]], files: list[tuple[str, bytes]]) -> str:
    request = multipart_request(path, fields, [("audio", name, "audio/flac", data) for name, data in files])
    conn = await _Conn.open(port, 30.0)
    try:
        outcome = await exchange(
            conn, port, request, 30.0, close=True, start=asyncio.get_running_loop().time()
        )
    finally:
        conn.close()
    return outcome.kind


def measure(
    model: str, model_dir: Path, design: str, args: argparse.Namespace, work: Path, redis: Redis
) -> Row:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.update(
        {
            "REDIS_URL": redis.url,
            "VOXGATE_REDIS_NAMESPACE": f"bench-{model}-{design}-{time.monotonic_ns()}",
            "VOXGATE_MODEL_DIR": str(model_dir),
            "VOXGATE_LOG_LEVEL": "WARNING",
            "VOXGATE_RATE_LIMIT_RPS": "0",
            "VOXGATE_AUTH": "off",
        }
    )
    env.update(args.env)
    if design.startswith("baseline"):
        cwd = baseline_tree(args.baseline_ref, work)
        env["PYTHONPATH"] = str(cwd)
        if model == "titanet-reduced":
            commit = subprocess.run(
                ["git", "rev-parse", "--short", args.baseline_ref], cwd=REPO, capture_output=True, text=True
            ).stdout.strip()
            env["VOXGATE_MODEL_DIR"] = str(export_fixture(args.cache, cwd, commit or args.baseline_ref))
        if design.startswith("baseline-w"):
            env["VOXGATE_WORKERS"] = design.removeprefix("baseline-w")
    else:
        cwd = REPO
        env["VOXGATE_WORKERS"] = design.removeprefix("w")
    server = Server([sys.executable, "-m", "app.cli", "serve"], cwd, env, work, None)
    server.start()
    try:
        # One speaker per client (the same voice under each name): the lockout lets only so many
        # verifications of one speaker be under way at once.
        enroll = [(name, (EXAMPLES / name).read_bytes()) for name in ENROLL]
        for n in range(args.clients):
            status = asyncio.run(post(server.port, "/enroll", [("speaker_id", f"spk{n}")], enroll))
            if status != "200":
                raise SystemExit(f"bench_frontend: enroll answered {status}:\n{server.log_tail()}")
        probe = probe_flac()
        verify = [
            multipart_request(
                "/verify", [("speaker_id", f"spk{n}")], [("audio", "probe.flac", "audio/flac", probe)]
            )
            for n in range(args.clients)
        ]

        turn = itertools.count()

        def request(_: int) -> Request:  # round robin over the speakers, whichever client asks
            return verify[next(turn) % len(verify)]

        # Warm-up: the first requests of each process pay one-time costs.
        asyncio.run(closed_loop(server.port, request, args.clients, 2.0, 30.0))
        before = cpu_by_role(server.pid)
        outcomes, elapsed = asyncio.run(closed_loop(server.port, request, args.clients, args.seconds, 30.0))
        after = cpu_by_role(server.pid)
        processes = len([p for p in process_tree(server.pid) if role(p) != "gone"])
    finally:
        server.stop(grace_s=30.0)
    ok = [o for o in outcomes if o.kind == "200"]
    answered = max(1, len(ok))
    front = (after["frontend"] - before["frontend"]) * 1000.0 / answered
    infer = (after["inference"] - before["inference"]) * 1000.0 / answered
    loop = (after["inference_loop"] - before["inference_loop"]) * 1000.0 / answered
    one_process = design in ("baseline", "w0", "baseline-w0")
    latencies = [o.latency_s * 1000.0 for o in ok] or [float("nan")]
    return Row(
        model=model,
        design=design,
        answered=len(ok),
        other=len(outcomes) - len(ok),
        seconds=round(elapsed, 2),
        per_s=round(len(ok) / elapsed, 1),
        p50_ms=round(pct(latencies, 50), 1),
        p99_ms=round(pct(latencies, 99), 1),
        frontend_cpu_ms=round(front, 2),
        inference_cpu_ms=None if one_process else round(infer, 2),
        inference_loop_cpu_ms=None if one_process else round(loop, 2),
        total_cpu_ms=round(front + infer, 2),
        processes=processes,
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| model | design | answers/s | p50 ms | p99 ms | front end CPU-ms/req | inference CPU-ms/req "
        "| of it the inference event loop | all CPU-ms/req | vs baseline (all) | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = {r.model: r.total_cpu_ms for r in rows if r.design == "baseline"}
    for r in rows:
        ratio = f"{r.total_cpu_ms / base[r.model]:.2f}x" if r.model in base else "-"
        infer = "-" if r.inference_cpu_ms is None else f"{r.inference_cpu_ms:.2f}"
        loop = "-" if r.inference_loop_cpu_ms is None else f"{r.inference_loop_cpu_ms:.2f}"
        lines.append(
            f"| {r.model} | {r.design} | {r.per_s:.1f} | {r.p50_ms:.0f} | {r.p99_ms:.0f} | "
            f"{r.frontend_cpu_ms:.2f} | {infer} | {loop} | {r.total_cpu_ms:.2f} | {ratio} | {r.other} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="titanet-reduced,default")
    parser.add_argument("--designs", default="baseline,w0,w1,w2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--baseline-ref", default=DEFAULT_BASELINE)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "voxgate-bench-frontend")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        type=lambda kv: tuple(kv.split("=", 1)),
        metavar="KEY=VALUE",
        help="a setting for every served design (repeatable), e.g. VOXGATE_INTRA_OP_THREADS=1",
    )
    args = parser.parse_args(argv)
    args.env = dict(args.env)
    args.cache.mkdir(parents=True, exist_ok=True)
    models = {"default": REPO / "models" / "default"}
    if "titanet-reduced" in args.models.split(","):
        models["titanet-reduced"] = export_fixture(args.cache)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-frontend-") as tmp:
        work = Path(tmp)
        redis = Redis(work)
        try:
            for model in args.models.split(","):
                for design in args.designs.split(","):
                    row = measure(model, models[model], design, args, work, redis)
                    print(
                        f"# {model} {design}: {row.per_s} answers/s, {row.total_cpu_ms} CPU-ms per answer",
                        file=sys.stderr,
                        flush=True,
                    )
                    rows.append(row)
        finally:
            redis.stop()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    print(f"{os.cpu_count()} cores ({cpu}); {args.clients} clients, {args.seconds:g} s per row; /verify of a "
          f"{PROBE_SECONDS:g} s FLAC; baseline = {args.baseline_ref}\n")  # fmt: skip
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
