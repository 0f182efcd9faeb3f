"""GPU validation in one short run: tests, self-checks, start-up time and throughput on CUDA / TensorRT.

    python -m bench.gpu_check [--out FILE.json] [--budget-s 360]

On a host with a CUDA GPU and onnxruntime-gpu (docs/performance.md says how to get it onto an offline
GPU host), within ``--budget-s`` seconds in all (default 360, later steps are skipped and say so when the
time runs out):

1. the ``gpu``-marked tests (``pytest -m gpu``), while, in parallel, the full-size TitaNet-L and ECAPA
   graphs are exported with random weights in fp32 and fp16 (``voxgate export --arch A --random-init``,
   into ``--cache``; reused when already there);
2. the model self-check on CUDA for each graph (``voxgate selfcheck --providers cuda --json``);
3. per graph, on CUDA with ``cudnn_conv_algo_search=HEURISTIC`` (the default): the time from start to
   ready (session load, warm-up over the shape plan, self-check) and the engine benchmark of
   ``bench.bench_engine`` (3 s and 10 s clips, concurrency 1/16/64, and baseline B);
4. the same start-to-ready with ``EXHAUSTIVE`` (plus concurrency 64), to settle the default;
5. TensorRT for the fp16 graphs, when its provider loads (libnvinfer present).

Each graph runs in a child process (``--worker``), so start-to-ready is measured from a cold process
and a hung warm-up only costs its own time limit. Prints Markdown tables and writes everything as JSON
(``--out``). Exit status: 0 all ran and passed; 1 something failed or was skipped for time; 2 no GPU
here (one line on stderr says why; nothing else runs). ``--cpu-dry-run`` runs every step on the CPU
(tiny sizes in CI; no GPU figures) so the GPU session finds a script that already works.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_NO_GPU = 2
RESULT_PREFIX = "GPU_CHECK_RESULT "
# Set in the environment of a re-executed gpu_check, so it re-executes at most once.
REEXEC_MARK = "VOXGATE_GPU_CHECK_LIBRARY_PATH_SET"
MODELS = ("titanet-large", "ecapa_tdnn")
PRECISIONS = ("fp32", "fp16")
SEARCHES = ("HEURISTIC", "EXHAUSTIVE")
# Time limits of single steps (seconds); every step also stops at the overall budget.
TESTS_LIMIT_S = 180.0
EXPORT_LIMIT_S = 240.0
SELFCHECK_LIMIT_S = 90.0
WORKER_LIMIT_S = 120.0
TENSORRT_LIMIT_S = 180.0
MIN_STEP_S = 15.0  # a step with less than this left is skipped, not started
# The published anchor: WeSpeaker on Triton, T4, TensorRT fp16, 3,389 ECAPA utterances/s of 2 s. The
# ECAPA fp16 runs add that cell (2 s clips at the highest concurrency) for comparison.
ANCHOR_SECONDS = 2.0


# --- the host -------------------------------------------------------------------------------------
def cuda_library_dirs() -> list[str]:
    """Library folders of CUDA / cuDNN / TensorRT pip wheels (nvidia-*-cu12/13, tensorrt) on sys.path."""
    found: list[str] = []
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        patterns = ("nvidia/*/lib", "nvidia/*/*/lib", "nvidia/cu*/lib/*", "tensorrt_libs")
        for pattern in patterns:
            for path in sorted(glob.glob(os.path.join(entry, pattern))):
                if os.path.isdir(path) and glob.glob(os.path.join(path, "lib*.so*")) and path not in found:
                    found.append(path)
    return found


def ensure_library_path(argv: Sequence[str]) -> None:
    """onnxruntime-gpu's CUDA provider dlopens libcudart / libcublas / libcudnn by name: put the pip
    wheels' library folders on LD_LIBRARY_PATH and re-execute once, so this process and every child
    (pytest, exports, workers) find them."""
    if os.environ.get(REEXEC_MARK):
        return
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    missing = [d for d in cuda_library_dirs() if d not in current]
    if not missing:
        return
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join([*current, *missing]), REEXEC_MARK: "1"}
    print(f"# gpu_check: CUDA libraries from pip wheels on LD_LIBRARY_PATH: {missing}", file=sys.stderr)
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "bench.gpu_check", *argv], env)


def gpu_unavailable() -> str | None:
    """Why the CUDA provider cannot run here, or None when it does (a real session on CUDA)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime is not importable ({exc})"
    with contextlib.suppress(Exception):  # onnxruntime >= 1.21: CUDA/cuDNN from nvidia-* wheels
        ort.preload_dlls()
    from app.engine.backend import CUDA, OnnxBackend, cuda_device_present

    if CUDA not in ort.get_available_providers():
        return (
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (a CPU build; install "
            "onnxruntime-gpu, see docs/performance.md)"
        )
    if not cuda_device_present():
        return "no CUDA device is visible (no libcuda.so.1, or the driver sees no GPU)"
    from app.core.paths import DEFAULT_MODEL_DIR
    from app.engine.manifest import load_manifest

    try:
        backend = OnnxBackend(DEFAULT_MODEL_DIR, load_manifest(DEFAULT_MODEL_DIR), providers=["cuda"])
    except Exception as exc:
        return f"a CUDA session cannot be created: {exc}"
    if backend.provider != CUDA:
        return (
            f"the CUDA provider did not initialise (the session fell back to {backend.provider}): "
            "CUDA 13 / cuDNN 9 libraries missing? LD_LIBRARY_PATH="
            f"{os.environ.get('LD_LIBRARY_PATH', '')}"
        )
    return None


def tensorrt_unavailable() -> str | None:
    import ctypes

    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no TensorrtExecutionProvider"
    for name in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return None
        except OSError:
            continue
    return "TensorRT's libnvinfer.so.10 is not installed (pip package tensorrt, or NVIDIA's TensorRT)"


def host_info() -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "cores": os.cpu_count(),
        "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", ""),
    }
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        info["gpu"] = done.stdout.strip() or done.stderr.strip()
    return info


# --- time budget ----------------------------------------------------------------------------------
@dataclass
class Budget:
    seconds: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def limit(self, cap: float) -> float | None:
        """Time limit of the next step, or None when too little is left to start it."""
        left = self.left()
        return None if left < MIN_STEP_S else min(cap, left)


# --- steps ----------------------------------------------------------------------------------------
def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def gpu_test_modules() -> list[str]:
    """The test modules with ``gpu``-marked tests (collecting only them is quicker, and a module that
    needs a package the GPU host lacks cannot stop them)."""
    tests = REPO_ROOT / "tests"
    found = [p for p in sorted(tests.glob("test_*.py")) if "mark.gpu" in p.read_text(encoding="utf-8")]
    return [str(p.relative_to(REPO_ROOT)) for p in found] or ["tests"]


def start_tests(pytest_args: Sequence[str] | None) -> tuple[subprocess.Popen[str], list[str], float]:
    chosen = gpu_test_modules() if pytest_args is None else list(pytest_args)
    command = _python("-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *chosen)
    proc = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, command, time.monotonic()


def finish_tests(
    proc: subprocess.Popen[str], command: list[str], started: float, budget: Budget
) -> dict[str, Any]:
    limit = max(1.0, min(TESTS_LIMIT_S - (time.monotonic() - started), budget.left()))
    try:
        out, _ = proc.communicate(timeout=limit)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        rc = None
    counts = {
        kind: int(n)
        for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", out)
    }
    summary = next(
        (ln for ln in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|skipped)", ln)), ""
    )
    return {
        "command": " ".join(command[1:]),
        "rc": rc,
        "timed_out": rc is None,
        "counts": counts,
        "summary": summary.strip("= "),
        "seconds": round(time.monotonic() - started, 1),
        "tail": out[-3000:],
        # On a GPU host every gpu test should run: a skip there means it did not find the GPU.
        "ok": rc == 0 and counts.get("skipped", 0) == 0 and counts.get("passed", 0) > 0,
    }


@dataclass
class Graph:
    spec: str  # an architecture name or a model directory
    precision: str
    directory: Path

    @property
    def name(self) -> str:
        return f"{Path(self.spec).name} {self.precision}"


def plan_graphs(models: Sequence[str], precisions: Sequence[str], cache: Path) -> list[Graph]:
    from app.engine.manifest import load_manifest

    graphs = []
    for spec in models:
        path = Path(spec)
        if (path / "model.onnx").is_file():  # a directory: its own precision
            graphs.append(Graph(spec, load_manifest(path, verify_graph_hash=False).precision, path))
            continue
        for precision in precisions:
            suffix = "" if precision == "fp32" else f"-{precision}"  # fp32: bench_engine's cache name
            graphs.append(Graph(spec, precision, cache / f"{spec}{suffix}"))
    return graphs


def start_exports(graphs: Sequence[Graph]) -> list[tuple[Graph, subprocess.Popen[str] | None, float]]:
    """``voxgate export --arch A --random-init`` for every graph not already exported, in parallel."""
    started: list[tuple[Graph, subprocess.Popen[str] | None, float]] = []
    threads = str(max(1, (os.cpu_count() or 4) // max(1, len(graphs))))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    for graph in graphs:
        if (graph.directory / "model.onnx").is_file():
            started.append((graph, None, time.monotonic()))
            continue
        graph.directory.parent.mkdir(parents=True, exist_ok=True)
        command = _python("-m", "app.cli", "export", "--arch", graph.spec, "--random-init",
                          "--precision", graph.precision, "--out", str(graph.directory))  # fmt: skip
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        started.append((graph, proc, time.monotonic()))
    return started


def finish_exports(
    started: list[tuple[Graph, subprocess.Popen[str] | None, float]], budget: Budget
) -> list[dict[str, Any]]:
    results = []
    for graph, proc, t0 in started:
        entry: dict[str, Any] = {"model": graph.name, "dir": str(graph.directory)}
        if proc is None:
            entry.update(ok=True, reused=True, seconds=0.0)
        else:
            try:
                limit = max(1.0, min(EXPORT_LIMIT_S - (time.monotonic() - t0), budget.left()))
                out, _ = proc.communicate(timeout=limit)
                entry.update(ok=proc.returncode == 0, rc=proc.returncode)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                entry.update(ok=False, rc=None, error="export timed out")
            entry["seconds"] = round(time.monotonic() - t0, 1)
            if not entry["ok"]:
                entry["tail"] = out[-2000:]
        results.append(entry)
    return results


def run_selfcheck(graph: Graph, providers: str, budget: Budget) -> dict[str, Any]:
    """The self-check engineer's entry point: ``voxgate selfcheck --model DIR --providers P --json``."""
    entry: dict[str, Any] = {"model": graph.name, "providers": providers}
    limit = budget.limit(SELFCHECK_LIMIT_S)
    if limit is None:
        return {**entry, "ok": False, "skipped": "time budget spent"}
    command = _python("-m", "app.cli", "selfcheck", "--model", str(graph.directory),
                      "--providers", providers, "--json")  # fmt: skip
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        return {**entry, "ok": False, "error": f"timed out after {round(limit, 1):g} s"}
    entry.update(rc=done.returncode, seconds=round(time.monotonic() - t0, 1))
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {**entry, "ok": False, "error": (done.stderr or done.stdout)[-2000:]}
    want = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}.get(providers.split(",")[0])
    on_provider = want is None or result.get("provider") == want
    return {**entry, **result, "ok": done.returncode == 0 and bool(result.get("passed")) and on_provider}


@dataclass
class Job:
    graph: Graph
    providers: list[str]
    search: str
    durations: list[float]
    concurrency: list[int]
    baseline_b: bool = True
    limit_s: float = WORKER_LIMIT_S
    extra: list[tuple[float, int]] = field(default_factory=list)  # (clip seconds, concurrency) cells

    @property
    def label(self) -> str:
        return f"{self.graph.name} on {'+'.join(self.providers)} ({self.search})"


def run_job(job: Job, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    head: dict[str, Any] = {
        "model": job.graph.name,
        "providers": job.providers,
        "search": job.search,
    }
    limit = budget.limit(job.limit_s)
    if limit is None:
        return {**head, "ok": False, "skipped": "time budget spent"}
    spec = {
        "model_dir": str(job.graph.directory),
        "name": job.graph.name,
        "providers": job.providers,
        "search": job.search,
        "durations": job.durations,
        "concurrency": job.concurrency,
        "baseline_b": job.baseline_b,
        "extra": job.extra,
        "requests_per_client": args.requests_per_client,
        "min_requests": args.min_requests,
        "tensorrt_cache_dir": str(args.cache / "trt-cache"),
        "spawned": time.time(),
    }
    print(f"# {job.label} ...", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            _python("-m", "bench.gpu_check", "--worker", json.dumps(spec)),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode(errors="replace")
        return {**head, "ok": False, "error": f"timed out after {round(limit, 1):g} s", "tail": tail[-2000:]}
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)), None)
    if done.returncode != 0 or line is None:
        return {**head, "ok": False, "rc": done.returncode, "error": done.stderr[-3000:]}
    return {**head, **json.loads(line[len(RESULT_PREFIX) :])}


# --- the worker (one graph, one provider, one search mode, in its own process) ---------------------
def worker_main(spec: dict[str, Any]) -> int:
    from prometheus_client import CollectorRegistry

    from app.core.settings import Settings
    from app.engine.config import EngineConfig
    from app.engine.engine import EmbeddingEngine
    from bench.bench_engine import run_baseline_b, run_engine, utterances

    settings = Settings.model_validate(
        {
            "providers": spec["providers"],
            "cudnn_conv_algo_search": spec["search"],
            "tensorrt_cache_dir": spec["tensorrt_cache_dir"],
        }
    )
    config = EngineConfig.from_settings(settings, Path(spec["model_dir"]))
    t0 = time.perf_counter()
    engine = EmbeddingEngine.from_config(config, registry=CollectorRegistry())
    loaded = time.perf_counter()
    asyncio.run(engine.start())  # warm-up over the shape plan, then the self-check, as `serve` does
    ready = time.perf_counter()
    ready_wall = time.time()
    asyncio.run(engine.stop())
    backend: Any = engine.backend
    batcher = engine.config
    sr = engine.manifest.sample_rate
    top = engine.policy.segment_samples or round(config.max_audio_seconds * sr)
    shapes = backend.warmup_shapes(
        max_batch_size=batcher.max_batch_size, max_samples=top, max_batch_samples=batcher.max_batch_samples
    )
    check = engine.selfcheck
    startup = {
        "provider": engine.provider,
        "shapes": len(shapes),
        "warmup_audio_s": round(sum(b * n for b, n in shapes) / sr, 1),
        "load_s": round(loaded - t0, 2),
        "warmup_s": round(ready - loaded, 2),  # warm-up and self-check
        "ready_s": round(ready - t0, 2),
        "process_ready_s": round(ready_wall - float(spec["spawned"]), 2),
        "selfcheck": None if check is None else check.line(),
    }
    cells: list[dict[str, Any]] = []
    name = spec["name"]
    wanted = spec["providers"][0]
    if not engine.provider.lower().startswith(wanted):  # e.g. TensorRT failed and ORT fell back
        fell_back = f"asked for {wanted}, the session runs on {engine.provider}"
        print(RESULT_PREFIX + json.dumps({"ok": False, "startup": startup, "bench": [], "error": fell_back}))
        return 0
    for seconds in spec["durations"]:
        waves = utterances(seconds, 16)
        if spec["baseline_b"]:
            rows = min(batcher.max_batch_size, max(1, int(batcher.max_batch_samples // round(seconds * sr))))
            n = max(spec["min_requests"], 4 * rows)
            cells.append(_cell(run_baseline_b(backend, waves, n, rows, name, seconds)))
        for c in spec["concurrency"]:
            n = max(spec["min_requests"], spec["requests_per_client"] * c)
            result, _ = run_engine(backend, batcher, waves, n, c, name, seconds)
            cells.append(_cell(result))
    for seconds, c in spec["extra"]:
        n = max(spec["min_requests"], spec["requests_per_client"] * c)
        result, _ = run_engine(backend, batcher, utterances(seconds, 16), n, c, name, seconds)
        cells.append(_cell(result))
    print(RESULT_PREFIX + json.dumps({"ok": True, "startup": startup, "bench": cells}), flush=True)
    return 0


def _cell(result: Any) -> dict[str, Any]:
    fields = asdict(result)
    fields.pop("latencies_s")
    per_batch = result.mode.startswith("B")  # baseline B's latencies are per batch, not per request
    return {
        **fields,
        "utt_per_s": round(result.utt_per_s, 2),
        "audio_s_per_s": round(result.audio_per_s, 1),
        "p50_ms": None if per_batch else round(result.pct(50), 1),
        "p95_ms": None if per_batch else round(result.pct(95), 1),
        "p99_ms": None if per_batch else round(result.pct(99), 1),
    }


# --- report ---------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    from bench.bench_engine import fmt

    lines = [f"# gpu_check {report['started']}: {report['host'].get('gpu', 'no GPU')}", ""]
    lines += [
        "| model | providers | cuDNN search | shapes | warm-up audio s | load s | warm-up + self-check s "
        "| ready s | process start to ready s | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for job in report["jobs"]:
        s = job.get("startup") or {}
        status = (
            "ok" if job.get("ok") else job.get("skipped") or job.get("error", "failed").splitlines()[-1][:80]
        )
        lines.append(
            f"| {job['model']} | {'+'.join(job['providers'])} | {job['search']} | {s.get('shapes', '-')} "
            f"| {s.get('warmup_audio_s', '-')} | {s.get('load_s', '-')} | {s.get('warmup_s', '-')} "
            f"| {s.get('ready_s', '-')} | {s.get('process_ready_s', '-')} | {status} |"
        )
    lines += [
        "",
        "| model | providers | search | clip s | run | conc | utt/s | audio s/s | p50 ms | p95 ms "
        "| p99 ms | mean batch | pad % | vs B |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for job in report["jobs"]:
        cells = job.get("bench", [])
        for cell in cells:
            base = next(
                (x for x in cells if x["seconds"] == cell["seconds"] and x["mode"].startswith("B")), None
            )
            vs_b = cell["utt_per_s"] / base["utt_per_s"] if base and cell["mode"] == "engine" else None
            pad = None if cell.get("padding") is None else 100 * cell["padding"]
            lines.append(
                f"| {job['model']} | {'+'.join(job['providers'])} | {job['search']} | {cell['seconds']:g} "
                f"| {cell['mode']} | {cell['concurrency'] or '-'} | {cell['utt_per_s']:.1f} "
                f"| {cell['audio_s_per_s']:.0f} | {fmt(cell['p50_ms'], '.0f')} "
                f"| {fmt(cell['p95_ms'], '.0f')} | {fmt(cell['p99_ms'], '.0f')} "
                f"| {fmt(cell.get('mean_batch'))} | {fmt(pad)} "
                f"| {fmt(vs_b, '.2f')} |"
            )
    tests = report.get("tests") or {}
    lines += ["", f"- tests (`{tests.get('command', 'not run')}`): {tests.get('summary') or tests.get('rc')}"]
    for check in report.get("selfchecks", []):
        what = (
            check.get("skipped")
            or check.get("error")
            or (f"passed={check.get('passed')} cosine={check.get('cosine')} on {check.get('provider')}")
        )
        lines.append(f"- self-check {check['model']} ({check['providers']}): {what}")
    for export in report.get("exports", []):
        if not export.get("ok"):
            lines.append(f"- export {export['model']} FAILED: {export.get('error') or export.get('rc')}")
    for note in report.get("skipped", []):
        lines.append(f"- skipped: {note}")
    lines.append(f"- total {report['elapsed_s']} s of a {report['budget_s']:g} s budget; ok={report['ok']}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    p.add_argument("--budget-s", type=float, default=360.0, help="the whole run's time (default 360)")
    p.add_argument("--models", nargs="+", default=list(MODELS), help="architectures or model directories")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--durations", nargs="+", type=float, default=[3.0, 10.0], help="clip seconds")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--requests-per-client", type=int, default=8, help="requests per run = this x conc")
    p.add_argument("--min-requests", type=int, default=64, help="at least this many requests per run")
    p.add_argument("--cache", type=Path, default=REPO_ROOT / "data" / "bench-models", help="exported graphs")
    p.add_argument(
        "--pytest-args",
        nargs="*",
        help="what pytest -m gpu runs (default: the test modules that mark tests gpu, so a module that "
        "cannot be imported on the GPU host does not stop the others)",
    )
    p.add_argument("--no-tests", action="store_true", help="skip the gpu-marked tests")
    p.add_argument(
        "--worker-limit-s",
        type=float,
        default=WORKER_LIMIT_S,
        help=f"time limit of one graph's start-up + benchmark on CUDA (default {WORKER_LIMIT_S:g}); a "
        "search mode that runs out of it is not tried on the other graphs",
    )
    p.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run every step on the CPU (for CI: shows the script works; its figures mean nothing)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one job, as JSON
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    budget = Budget(args.budget_s)
    if not args.cpu_dry_run:
        ensure_library_path(argv)
        reason = gpu_unavailable()
        if reason is not None:
            print(f"gpu_check: no GPU to check here: {reason}", file=sys.stderr)
            return EXIT_NO_GPU
    device = "cpu" if args.cpu_dry_run else "cuda"
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "budget_s": args.budget_s,
        "cpu_dry_run": args.cpu_dry_run,
        "host": host_info(),
        "skipped": [],
    }
    print(f"# gpu_check on {report['host'].get('gpu', 'CPU')} ({report['host']['onnxruntime']})", flush=True)

    # 1. the gpu tests while the graphs export (CPU work: they do not disturb each other much)
    graphs = plan_graphs(args.models, args.precisions, args.cache)
    tests = None if args.no_tests else start_tests(args.pytest_args)
    exports = start_exports(graphs)
    report["exports"] = finish_exports(exports, budget)
    report["tests"] = None if tests is None else finish_tests(*tests, budget)
    if tests is not None:
        print(f"# tests: {report['tests']['summary'] or report['tests']['rc']}", flush=True)
    ready = [g for g, e in zip(graphs, report["exports"], strict=True) if e["ok"]]

    # 2. self-checks on the provider the service would serve with
    report["selfchecks"] = [run_selfcheck(g, device, budget) for g in ready]

    # 3-5. start-to-ready and throughput, one child process per graph x provider x search mode
    peak = [max(args.concurrency)]

    def anchor(g: Graph) -> list[tuple[float, int]]:
        return [(ANCHOR_SECONDS, peak[0])] if "ecapa" in g.name and g.precision == "fp16" else []

    limit = args.worker_limit_s
    jobs = [
        Job(g, [device], "HEURISTIC", args.durations, args.concurrency, limit_s=limit, extra=anchor(g))
        for g in ready
    ]
    # EXHAUSTIVE: start-to-ready and peak throughput only; fp16 (the GPU serving graphs) first.
    by_precision = sorted(ready, key=lambda g: g.precision != "fp16")
    jobs += [
        Job(g, [device], "EXHAUSTIVE", args.durations, peak, baseline_b=False, limit_s=limit)
        for g in by_precision
    ]
    trt_reason = "CPU dry run" if args.cpu_dry_run else tensorrt_unavailable()
    if trt_reason is None:
        jobs += [
            Job(
                g,
                ["tensorrt", "cuda"],
                "HEURISTIC",
                args.durations,
                args.concurrency,
                limit_s=TENSORRT_LIMIT_S,
                extra=anchor(g),
            )
            for g in ready
            if g.precision == "fp16"
        ]
    else:
        report["skipped"].append(f"TensorRT: {trt_reason}")
    report["jobs"] = []
    too_slow: dict[tuple[str, ...], str] = {}  # providers + search -> the job that ran out of time
    for job in jobs:
        key = (*job.providers, job.search)
        result: dict[str, Any]
        if key in too_slow:  # the same start-up on another graph would only spend the budget again
            result = {"model": job.graph.name, "providers": job.providers, "search": job.search,
                      "ok": False, "skipped": f"not ready within its limit on {too_slow[key]}"}  # fmt: skip
        else:
            result = run_job(job, args, budget)
            if str(result.get("error", "")).startswith("timed out"):
                too_slow[key] = job.graph.name
        report["jobs"].append(result)
        s = result.get("startup") or {}
        print(f"# {job.label}: ready in {s.get('ready_s', '-')} s, ok={result.get('ok')}", flush=True)

    report["elapsed_s"] = round(time.monotonic() - budget.started, 1)
    failures = [
        *(e for e in report["exports"] if not e["ok"]),
        *(c for c in report["selfchecks"] if not c["ok"]),
        *(j for j in report["jobs"] if not j.get("ok")),
    ]
    tests = report["tests"]
    # A CPU dry run skips every gpu test; it only shows that pytest ran them without an error.
    tests_ok = tests is None or tests["ok"] or (args.cpu_dry_run and tests["rc"] == 0)
    report["ok"] = not failures and tests_ok
    report["markdown"] = markdown(report)
    print(report["markdown"], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
