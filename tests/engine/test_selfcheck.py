"""The start-up self-check (app/engine/selfcheck.py): every bundle's probe, checked on the provider that
serves.

Real bundles (the committed default model, NeMo fixture exports in fp32 and fp16, TitaNet-S in fp32 and
int8), real ONNX
Runtime sessions, real speech. A graph with one weight changed and its manifest re-hashed, so that every
hash and shape still matches, must be refused by the probe alone: by ``voxgate selfcheck`` (exit 1), by
the engine's start-up and by ``voxgate serve`` (non-zero exit, one line naming what failed).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper

from app.api.factory import create_app
from app.audio.conditions import AS_RECORDED, TELEPHONE
from app.core.paths import sha256_file
from app.core.settings import Settings
from app.engine.backend import CPU, CUDA, OnnxBackend, cuda_device_present
from app.engine.engine import EmbeddingEngine
from app.engine.manifest import GRAPH_FILE, PROBE_FILE, ManifestError, load_manifest, write_manifest
from app.engine.selfcheck import (
    FP16_MIN_COSINE,
    FP32_MIN_COSINE,
    INT8_MARGIN,
    SelfCheckFailed,
    SelfCheckResult,
    run_selfcheck,
    threshold_for,
)
from app.export.nemo_export import export_nemo_checkpoint
from app.export.probe import PROBE_CLIPS, probe_asset
from tests.support.data import DEFAULT_MODEL_DIR, REPO_ROOT, nemo_path, speech_paths
from tests.support.models import build_tiny_model
from tests.support.redis_server import RedisProcess, free_port, settings_for

TITANET = "titanet-large-reduced"
SPEAKERNET = "SpeakerNet_verification_3x2x256-reduced"
# The model key README.md and stored voiceprints use: the probe must not change it.
DEFAULT_MODEL_KEY = "resemblyzer-ge2e@e32dac0af8a4"


# --- helpers ----------------------------------------------------------------------------------------------
def check(model_dir: Path, providers: list[str] | None = None) -> SelfCheckResult:
    manifest = load_manifest(model_dir)
    backend = OnnxBackend(model_dir, manifest, providers=providers or ["cpu"], intra_op_threads=1)
    return run_selfcheck(backend, manifest, model_dir)


def change_one_weight(src: Path, dst: Path) -> Path:
    """A copy of the bundle whose graph has one weight changed: the largest-magnitude weight of its first
    learned layer (GE2E: the first LSTM; NeMo: the encoder's first convolution) changes sign. The manifest
    gets the new graph's sha256, so every hash and shape matches and only the probe can tell."""
    shutil.copytree(src, dst)
    model = onnx.load(str(src / GRAPH_FILE))
    initializers = {init.name: init for init in model.graph.initializer}
    node = next(
        n
        for n in model.graph.node
        if n.op_type in ("Conv", "LSTM", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in initializers
    )
    init = initializers[node.input[1]]
    weight = numpy_helper.to_array(init).copy()
    flat = weight.reshape(-1)
    flat[int(np.argmax(np.abs(flat)))] *= -1
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    onnx.save(model, str(dst / GRAPH_FILE))
    manifest = load_manifest(src)
    write_manifest(dst, manifest.model_copy(update={"graph_sha256": sha256_file(dst / GRAPH_FILE)}))
    load_manifest(dst)  # the graph hash check passes: nothing but the probe is left to notice
    return dst


def selfcheck_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "selfcheck", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VOXGATE_INTRA_OP_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def bundles(
    tmp_path_factory: pytest.TempPathFactory, titanet_small_int8: Path, titanet_small_fp32: Path
) -> dict[str, Path]:
    """NeMo fixture exports: TitaNet fp32 and fp16, SpeakerNet fp32; and the int8 bundle the tests share
    (TitaNet-S, calibrated and gated on speakers that are not the probe's readers 1688 and 1998)."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for model, precision in ((TITANET, "fp32"), (TITANET, "fp16"), (SPEAKERNET, "fp32")):
        out[f"{model}-{precision}"] = root / f"{model}-{precision}"
        export_nemo_checkpoint(nemo_path(model), out[f"{model}-{precision}"], precision=precision, name=None)
    out["int8"], out["int8-fp32"] = titanet_small_int8, titanet_small_fp32
    return out


@pytest.fixture(scope="module")
def tampered_default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return change_one_weight(DEFAULT_MODEL_DIR, tmp_path_factory.mktemp("tampered") / "default")


# --- unchanged bundles pass on CPU ------------------------------------------------------------------------
def test_default_model_passes_and_its_probe_keeps_the_model_key() -> None:
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    assert manifest.model_key() == DEFAULT_MODEL_KEY
    probe = manifest.probe
    assert probe is not None
    assert probe.sha256 == sha256_file(DEFAULT_MODEL_DIR / PROBE_FILE) == sha256_file(probe_asset())
    assert [(c.start, c.end) for c in probe.clips] == [(s, e) for s, e, _ in PROBE_CLIPS]
    assert all(len(c.reference) == manifest.embedding_dim for c in probe.clips)
    assert probe.reference_model.startswith("resemblyzer 0.1.4 VoiceEncoder")
    result = check(DEFAULT_MODEL_DIR)
    assert result.passed is True
    assert result.provider == CPU
    assert result.threshold == FP32_MIN_COSINE
    assert result.cosine is not None
    assert result.cosine >= FP32_MIN_COSINE
    assert result.clips == len(PROBE_CLIPS)


@pytest.mark.parametrize(
    ("bundle", "threshold"),
    [
        (f"{TITANET}-fp32", FP32_MIN_COSINE),
        (f"{TITANET}-fp16", FP16_MIN_COSINE),
        (f"{SPEAKERNET}-fp32", None),
    ],
)
def test_nemo_exports_pass_on_cpu(bundles: dict[str, Path], bundle: str, threshold: float | None) -> None:
    manifest = load_manifest(bundles[bundle])
    assert manifest.probe is not None
    assert "PyTorch float32" in manifest.probe.reference_model
    result = check(bundles[bundle])
    assert result.passed is True, result.line()
    assert result.threshold == (threshold or FP32_MIN_COSINE)


def test_int8_bundle_carries_the_float32_probe_and_its_telephone_band_and_passes(
    bundles: dict[str, Path],
) -> None:
    fp32, int8 = load_manifest(bundles["int8-fp32"]), load_manifest(bundles["int8"])
    assert int8.precision == "int8"
    info = int8.quantization
    assert info is not None
    assert fp32.probe is not None
    assert int8.probe is not None
    assert sha256_file(bundles["int8"] / PROBE_FILE) == int8.probe.sha256 == fp32.probe.sha256
    # The float32 model's references for the clips as stored, not the int8 graph's own output; then each
    # clip again in the telephone band, referenced by the float32 graph.
    stored, derived = int8.probe.clips[: len(PROBE_CLIPS)], int8.probe.clips[len(PROBE_CLIPS) :]
    assert stored == fp32.probe.clips
    assert [(c.condition, c.start, c.end) for c in derived] == [(TELEPHONE, c.start, c.end) for c in stored]
    assert all(c.reference != s.reference for c, s in zip(derived, stored, strict=True))
    assert all(f"float32 graph {fp32.graph_sha256[:12]}" in c.source for c in derived)
    # Each clip is held to its own condition's minimum from the export's gate.
    assert threshold_for(int8) == pytest.approx(info.min_cosine_by_condition[AS_RECORDED] - INT8_MARGIN)
    assert threshold_for(int8, TELEPHONE) == pytest.approx(
        info.min_cosine_by_condition[TELEPHONE] - INT8_MARGIN
    )
    result = check(bundles["int8"])
    assert result.passed is True, result.line()
    assert result.clips == 2 * len(PROBE_CLIPS)
    assert result.condition in (AS_RECORDED, TELEPHONE)
    assert result.line().endswith(f"(worst of 4 probe clips: {result.condition})")


def test_int8_telephone_clip_below_its_threshold_fails_and_is_named(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """An export that claims the telephone band is as exact as float32 (min cosine 1.0): the probe's
    telephone clips cannot reach 1.0 - margin, the stored clips still pass theirs, and the one line says
    which clip failed."""
    bundle = tmp_path / "int8"
    shutil.copytree(bundles["int8"], bundle)
    manifest = load_manifest(bundle)
    assert manifest.quantization is not None
    claims = {**manifest.quantization.min_cosine_by_condition, TELEPHONE: 1.0 + INT8_MARGIN}
    quantization = manifest.quantization.model_copy(update={"min_cosine_by_condition": claims})
    write_manifest(bundle, manifest.model_copy(update={"quantization": quantization}))
    with pytest.raises(SelfCheckFailed) as failed:
        check(bundle)
    result = failed.value.result
    assert (result.condition, result.threshold) == (TELEPHONE, pytest.approx(1.0))
    assert "(worst of 4 probe clips: telephone band)" in result.line()


def test_probe_clip_in_an_unknown_condition_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "int8"
    shutil.copytree(bundles["int8"], bundle)
    manifest = load_manifest(bundle)
    assert manifest.probe is not None
    clips = (
        *manifest.probe.clips[:-1],
        manifest.probe.clips[-1].model_copy(update={"condition": "underwater"}),
    )
    write_manifest(
        bundle, manifest.model_copy(update={"probe": manifest.probe.model_copy(update={"clips": clips})})
    )
    with pytest.raises(
        ManifestError, match="cannot derive a probe clip: unknown recording condition 'underwater'"
    ):
        check(bundle)


# --- a changed weight is refused --------------------------------------------------------------------------
def test_changed_weight_is_refused_by_the_check_and_the_cli(
    tampered_default: Path, bundles: dict[str, Path]
) -> None:
    with pytest.raises(SelfCheckFailed) as failed:
        check(tampered_default)
    result = failed.value.result
    assert result.passed is False
    assert result.cosine is not None
    assert result.cosine < FP32_MIN_COSINE
    nemo = change_one_weight(bundles[f"{TITANET}-fp32"], tampered_default.parent / "titanet")
    with pytest.raises(SelfCheckFailed):
        check(nemo)

    ok = selfcheck_cli("--model", str(DEFAULT_MODEL_DIR), "--providers", "cpu")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"self-check passed: model {DEFAULT_MODEL_KEY} on {CPU} (fp32): cosine ")
    bad = selfcheck_cli("--model", str(tampered_default), "--providers", "cpu", "--json")
    assert bad.returncode == 1, bad.stderr
    body = json.loads(bad.stdout)
    assert body["passed"] is False
    assert body["model"] == load_manifest(tampered_default).model_key()
    assert body["provider"] == CPU
    assert body["precision"] == "fp32"
    assert body["cosine"] < body["threshold"] == FP32_MIN_COSINE


def test_changed_weight_stops_the_engine_from_starting(tampered_default: Path) -> None:
    settings = Settings(model_dir=tampered_default, providers=["cpu"], warmup=False, intra_op_threads=1)

    async def start() -> None:
        engine = EmbeddingEngine.from_settings(settings)
        await engine.start()

    with pytest.raises(SelfCheckFailed, match=r"self-check FAILED: model resemblyzer-ge2e@"):
        asyncio.run(start())


def test_voxgate_serve_exits_nonzero_with_one_line_naming_the_failure(
    tmp_path: Path, tampered_default: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "VOXGATE_REDIS_URL")}
    env.update(
        VOXGATE_DATA_DIR=str(tmp_path / "data"),
        VOXGATE_PROVIDERS="cpu",
        VOXGATE_LOG_JSON="false",
        VOXGATE_INTRA_OP_THREADS="1",
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--port",
            str(free_port()),
            "--model",
            str(tampered_default),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    key = load_manifest(tampered_default).model_key()
    pattern = rf"self-check FAILED: model {key} on {CPU} \(fp32\): cosine 0\.\d+ < 0\.9999"
    assert len([line for line in proc.stderr.splitlines() if re.search(pattern, line)]) >= 1, proc.stderr
    assert "Traceback" not in proc.stderr  # one line says it all


# --- a swapped or damaged probe is refused ----------------------------------------------------------------
def test_swapped_damaged_or_missing_probe_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "default"
    shutil.copytree(DEFAULT_MODEL_DIR, bundle)
    probe = bundle / PROBE_FILE
    other = next(p for p in speech_paths() if p.parent.name == "vctk_p225")

    shutil.copyfile(other, probe)  # another speech file in the probe's place
    with pytest.raises(ManifestError, match="swapped or damaged probe"):
        check(bundle)
    swapped = selfcheck_cli("--model", str(bundle), "--providers", "cpu")
    assert swapped.returncode == 1
    assert "swapped or damaged probe" in swapped.stderr

    # Swapped and the manifest's probe hash updated to match: the references give it away.
    manifest = load_manifest(bundle)
    assert manifest.probe is not None
    write_manifest(
        bundle,
        manifest.model_copy(
            update={"probe": manifest.probe.model_copy(update={"sha256": sha256_file(probe)})}
        ),
    )
    with pytest.raises(SelfCheckFailed):
        check(bundle)

    data = bytearray((DEFAULT_MODEL_DIR / PROBE_FILE).read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # second half zeroed
    probe.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="swapped or damaged probe"):
        check(bundle)

    probe.unlink()
    with pytest.raises(ManifestError, match=f"no {PROBE_FILE} in"):
        check(bundle)


# --- bundles without a probe (exported before probes existed) ---------------------------------------------
def test_bundle_without_probe_is_served_unchecked_but_selfcheck_cli_says_so(tmp_path: Path) -> None:
    tiny = build_tiny_model(tmp_path / "tiny")
    result = check(tiny)
    assert result.passed is None
    assert result.cosine is None
    assert result.threshold is None
    assert "no probe" in result.line()
    cli = selfcheck_cli("--model", str(tiny), "--providers", "cpu")
    assert cli.returncode == 1
    assert cli.stdout.startswith("self-check skipped: model tiny-test@")


# --- /readyz reports the result ---------------------------------------------------------------------------
@pytest.fixture
def default_client(redis_server: RedisProcess) -> Iterator[TestClient]:
    settings = settings_for(redis_server.url, DEFAULT_MODEL_DIR, providers=["cpu"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_readyz_reports_the_selfcheck(
    default_client: TestClient, redis_server: RedisProcess, tmp_path: Path
) -> None:
    body = default_client.get("/readyz").json()
    assert body["ready"] is True
    report = body["selfcheck"]
    assert report["passed"] is True
    assert report["cosine"] >= report["threshold"] == FP32_MIN_COSINE
    assert report["provider"] == CPU
    assert report["precision"] == "fp32"
    assert "selfcheck" not in body["checks"]  # a failing check stops start-up: never a false here

    settings = settings_for(redis_server.url, build_tiny_model(tmp_path / "tiny"), providers=["cpu"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = client.get("/readyz").json()
    assert body["ready"] is True
    assert body["selfcheck"]["passed"] is None
    assert "no probe" in body["selfcheck"]["detail"]


# --- thresholds -------------------------------------------------------------------------------------------
def test_thresholds_per_precision(bundles: dict[str, Path]) -> None:
    assert threshold_for(load_manifest(bundles[f"{TITANET}-fp32"])) == 0.9999
    assert threshold_for(load_manifest(bundles[f"{TITANET}-fp16"])) == 0.999
    int8 = load_manifest(bundles["int8"])
    with pytest.raises(ManifestError, match="int8 manifest without"):
        threshold_for(int8.model_copy(update={"quantization": None}))
    # Bundles exported before the telephone band was measured: their one minimum stands for every clip.
    assert int8.quantization is not None
    before = int8.quantization.model_copy(update={"min_cosine_by_condition": {}})
    old = int8.model_copy(update={"quantization": before})
    assert threshold_for(old, TELEPHONE) == threshold_for(old) == before.min_cosine_to_fp32 - INT8_MARGIN


# --- on a GPU ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("bundle", ["default", f"{TITANET}-fp32", f"{TITANET}-fp16"])
def test_selfcheck_passes_on_cuda(bundle: str, request: pytest.FixtureRequest) -> None:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers() or not cuda_device_present():
        pytest.skip("no CUDAExecutionProvider with a visible CUDA device (needs onnxruntime-gpu and a GPU)")
    model_dir = DEFAULT_MODEL_DIR if bundle == "default" else request.getfixturevalue("bundles")[bundle]
    result = check(model_dir, providers=["cuda"])
    assert result.provider == CUDA
    assert result.passed is True, result.line()
