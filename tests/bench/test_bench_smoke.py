"""The benchmarks the README quotes still run (tiny sizes; figures are not asserted, only produced)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.data import DEFAULT_MODEL_DIR, INT8_EXPORT_SPEAKERS, REPO_ROOT, speaker_folders


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_engine_runs_on_the_default_model() -> None:
    out = _run(
        "-m", "bench.bench_engine", "--models", "--model", str(DEFAULT_MODEL_DIR), "--no-torch",
        "--durations", "2", "--concurrency", "1", "4", "--requests", "8",
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| ") and "engine" in line]
    assert len(rows) >= 2, out
    assert "B: ORT full batches" in out


def test_bench_search_runs_and_reports_each_method() -> None:
    out = _run("bench/bench_search.py", "--sizes", "1000", "--queries", "20", "--loop-queries", "2")
    for method in ("index", "argsort", "loop"):
        assert any(method in line.split() for line in out.splitlines()), out


def test_bench_engine_quantises_and_runs_an_int8_graph(tmp_path: Path) -> None:
    calibration = speaker_folders(INT8_EXPORT_SPEAKERS, tmp_path / "calibration", per_speaker=2)
    out = _run(
        "-m", "bench.bench_engine", "--models", "titanet-small", "--precisions", "int8", "--no-torch",
        "--durations", "2", "--concurrency", "2", "--requests", "4", "--cache", str(tmp_path),
        "--calibration-audio", str(calibration),
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| titanet-small int8 |")]
    assert any("engine" in row for row in rows), out
    assert json.loads((tmp_path / "titanet-small-int8" / "manifest.json").read_text())["precision"] == "int8"


def test_bench_load_quick_runs_every_scenario(tmp_path: Path) -> None:
    """Its own redis-server and `voxgate serve`, every scenario at a tiny size (about 40 s)."""
    report = tmp_path / "load.json"
    out = _run("-m", "bench.bench_load", "--quick", "--json", str(report), "--cache", str(tmp_path / "cache"))
    doc = json.loads(report.read_text())
    scenarios = {row["scenario"] for row in doc["rows"]}
    expected = {"big_uploads", "too_long_uploads", "decode_bombs", "overload", "slow_clients", "idle_flood"}
    assert scenarios >= expected | {"sigterm"}, out
    assert doc["sustainable_rate"] > 0, out
    for row in doc["rows"]:
        assert sum(row["statuses"].values()) == row["requests"], row
        assert f"| {row['label']} |" in out, row["label"]
        skipped = any(note.startswith("skipped") for note in row["notes"])  # decode bombs without Opus
        assert row["requests"] > 0 or skipped, row
    assert "Targets (issue 10):" in out


def test_bench_vad_compares_one_recording_a_call_with_batches() -> None:
    out = _run("-m", "bench.bench_vad", "--seconds", "1", "--rounds", "1", "--batches", "4")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "x |" in line]
    assert len(rows) == 2, out
    assert rows[0].startswith("| one recording a call (before) |"), out


def test_bench_frontend_measures_cpu_per_request_by_process(tmp_path: Path) -> None:
    """One model, the one-process design and two workers, briefly (about 40 s)."""
    report = tmp_path / "frontend.json"
    _run(
        "-m", "bench.bench_frontend", "--models", "default", "--designs", "w0,w2", "--seconds", "2",
        "--clients", "2", "--json", str(report), "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    rows = {row["design"]: row for row in json.loads(report.read_text())}
    assert set(rows) == {"w0", "w2"}
    for row in rows.values():
        assert row["answered"] > 0, row
        assert row["other"] == 0, row
        assert row["frontend_cpu_ms"] > 0, row
    assert rows["w0"]["inference_cpu_ms"] is None
    assert rows["w2"]["inference_cpu_ms"] > 0  # the inference process, told apart by its command line
    assert rows["w0"]["inference_loop_cpu_ms"] is None
    # Its main thread (the event loop) is part of it, not all of it: the batchers and the graph run beside.
    assert 0 < rows["w2"]["inference_loop_cpu_ms"] < rows["w2"]["inference_cpu_ms"]
    assert rows["w2"]["processes"] == 4  # the supervisor, two workers and the inference process
