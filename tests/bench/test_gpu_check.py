"""bench/gpu_check.py, the one-shot GPU validation: without a GPU it refuses in one line (exit 2), and
its CPU dry run goes through every step a GPU session will run (export, gpu tests, self-check, start-up
and benchmark workers), so that session finds a script that works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from app.engine.backend import CUDA, cuda_device_present
from bench import gpu_check

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_without_a_gpu_it_exits_2_with_one_line(tmp_path: Path) -> None:
    if CUDA in ort.get_available_providers() and cuda_device_present():
        pytest.skip("a CUDA GPU is here: gpu_check would run for real")
    out = tmp_path / "report.json"
    done = _run("--out", str(out))
    assert done.returncode == gpu_check.EXIT_NO_GPU, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gpu_check: no GPU to check here: ")
    assert "CUDAExecutionProvider" in lines[0] or "CUDA device" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_cpu_dry_run_goes_through_every_step(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = _run(
        "--cpu-dry-run", "--models", "models/default", "titanet-small", "--precisions", "fp32",
        "--durations", "1", "--concurrency", "1", "2", "--requests-per-client", "2", "--min-requests", "4",
        "--pytest-args", "tests/engine/test_engine_gpu.py", "--cache", str(tmp_path / "graphs"),
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert report["markdown"] in done.stdout

    exports = {e["model"]: e for e in report["exports"]}
    assert exports["default fp32"]["reused"] is True
    assert exports["titanet-small fp32"]["rc"] == 0  # voxgate export --arch ... --random-init
    assert (tmp_path / "graphs" / "titanet-small" / "model.onnx").is_file()

    tests = report["tests"]
    assert tests["rc"] == 0
    assert tests["counts"]["skipped"] >= 1  # no GPU here: the gpu tests ran and skipped
    assert tests["ok"] is False  # ... which on a GPU host would count as a failure

    checks = report["selfchecks"]
    assert [c["passed"] for c in checks] == [True, True]
    assert {c["provider"] for c in checks} == {"CPUExecutionProvider"}

    jobs = {(j["model"], j["search"]): j for j in report["jobs"]}
    assert set(jobs) == {(m, s) for m in ("default fp32", "titanet-small fp32") for s in gpu_check.SEARCHES}
    for (_, search), job in jobs.items():
        assert job["ok"] is True, job
        startup = job["startup"]
        assert startup["provider"] == "CPUExecutionProvider"
        assert startup["shapes"] == 4  # the CPU warm-up
        assert startup["selfcheck"].startswith("self-check passed")
        for key in ("load_s", "warmup_s", "ready_s", "process_ready_s"):
            assert startup[key] >= 0
        modes = [(c["mode"], c["concurrency"]) for c in job["bench"]]
        if search == "HEURISTIC":
            assert modes == [("B: ORT full batches of 32", None), ("engine", 1), ("engine", 2)]
        else:  # start-to-ready, and peak concurrency only
            assert modes == [("engine", 2)]
        assert all(c["utt_per_s"] > 0 for c in job["bench"])
    assert any(note.startswith("TensorRT") for note in report["skipped"])


def test_a_spent_budget_skips_steps_and_fails(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = _run("--cpu-dry-run", "--models", "models/default", "--no-tests", "--budget-s", "1",
                "--out", str(out))  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["ok"] is False
    assert report["selfchecks"][0]["skipped"] == "time budget spent"
    assert {j.get("skipped") for j in report["jobs"]} == {"time budget spent"}


def test_cuda_libraries_of_pip_wheels_go_on_the_library_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "site" / "nvidia" / "cudnn" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcudnn.so.9").write_bytes(b"")
    (tmp_path / "site" / "nvidia" / "empty" / "lib").mkdir(parents=True)  # no libraries: not added
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site")])
    assert gpu_check.cuda_library_dirs() == [str(lib)]

    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    monkeypatch.delenv(gpu_check.REEXEC_MARK, raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/x")
    gpu_check.ensure_library_path(["--out", "r.json"])
    ((exe, argv, env),) = calls
    assert exe == sys.executable
    assert argv == [sys.executable, "-m", "bench.gpu_check", "--out", "r.json"]
    assert env["LD_LIBRARY_PATH"] == f"/opt/x:{lib}"
    assert env[gpu_check.REEXEC_MARK] == "1"

    calls.clear()
    monkeypatch.setenv(gpu_check.REEXEC_MARK, "1")  # already re-executed: never again
    gpu_check.ensure_library_path([])
    assert calls == []


def test_a_search_mode_that_runs_out_of_time_is_not_tried_again(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = _run("--cpu-dry-run", "--models", "models/default", "models/default", "--no-tests",
                "--worker-limit-s", "0.2", "--out", str(out))  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    jobs = json.loads(out.read_text())["jobs"]
    assert [(j["search"], j.get("error", j.get("skipped"))) for j in jobs] == [
        ("HEURISTIC", "timed out after 0.2 s"),
        ("HEURISTIC", "not ready within its limit on default fp32"),
        ("EXHAUSTIVE", "timed out after 0.2 s"),
        ("EXHAUSTIVE", "not ready within its limit on default fp32"),
    ]
