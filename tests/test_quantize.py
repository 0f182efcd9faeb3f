"""int8 export (``voxgate export --precision int8``): accuracy gate, fusion, batch invariance, CLI errors.

Real NeMo fixtures, real shared speech, real ONNX Runtime sessions.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.cli import main
from app.engine.backend import OnnxBackend
from app.export.quantize import (
    QuantizationError,
    audio_files,
    fold_batchnorm_into_pointwise_convs,
    inline_initializer_identities,
    load_calibration_audio,
    quantize_bundle,
    split_calibration,
)
from app.manifest import load_manifest
from tests.support import nemo_path

TITANET = "titanet-large-reduced"


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _optimized_op_counts(graph: Path, tmp_path: Path) -> collections.Counter[str]:
    """Operator counts of the graph as ONNX Runtime's CPU provider runs it (after fusions)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


@pytest.fixture(scope="module")
def shared_waves(speech_dir: Path) -> list[np.ndarray]:
    return load_calibration_audio(audio_files(speech_dir))


@pytest.fixture(scope="module")
def titanet_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp32") / "bundle"
    assert main(["export", "--nemo", str(nemo_path(TITANET)), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def titanet_int8(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("int8") / "bundle"
    args = ["export", "--nemo", str(nemo_path(TITANET)), "--out", str(out), "--precision", "int8"]
    assert main([*args, "--calibration-audio", str(speech_dir)]) == 0
    return out


def test_int8_bundle_records_what_it_measured_and_holds_it(
    titanet_int8: Path, titanet_fp32: Path, shared_waves: list[np.ndarray]
) -> None:
    manifest = load_manifest(titanet_int8)  # graph hash checked
    fp32 = load_manifest(titanet_fp32)
    info = manifest.quantization
    assert manifest.precision == "int8"
    assert info is not None
    assert manifest.model_key() != fp32.model_key()  # int8 enrollments live in their own namespace
    assert (manifest.name, manifest.embedding_dim, manifest.source_sha256) == (
        fp32.name,
        fp32.embedding_dim,
        fp32.source_sha256,
    )
    assert info.heldout_recordings == len(shared_waves) // 4
    assert info.calibration_recordings == len(shared_waves) - info.heldout_recordings
    assert info.min_cosine_to_fp32 >= 0.995
    # Recompute on the held-out recordings with fresh sessions: the manifest's figure is the real one.
    held = split_calibration(shared_waves).heldout
    sessions = [
        ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
        for d in (titanet_fp32, titanet_int8)
    ]
    cosines = []
    for wave in held:
        feed = {"audio": wave[None], "lengths": np.array([wave.size], dtype=np.int64)}
        a, b = (np.asarray(s.run(None, feed)[0][0], dtype=np.float64) for s in sessions)
        cosines.append(_cos(a, b))
    assert min(cosines) == pytest.approx(info.min_cosine_to_fp32, abs=1e-6)
    assert float(np.mean(cosines)) == pytest.approx(info.mean_cosine_to_fp32, abs=1e-6)
    assert min(cosines) < 0.999999  # it really is a different (quantised) graph


def test_every_quantised_convolution_runs_as_an_int8_kernel(titanet_int8: Path, tmp_path: Path) -> None:
    """A QDQ group ORT cannot fuse runs as dequantise -> float Conv -> quantise: slower than float32."""
    info = load_manifest(titanet_int8).quantization
    assert info is not None
    counts = _optimized_op_counts(titanet_int8 / "model.onnx", tmp_path)
    assert counts["QLinearConv"] == info.quantized_nodes


def test_int8_embeddings_do_not_depend_on_the_batch(
    titanet_int8: Path, shared_waves: list[np.ndarray]
) -> None:
    """Static activation scales: an utterance gets the same int8 embedding in any batch."""
    backend = OnnxBackend(titanet_int8, load_manifest(titanet_int8), providers=["cpu"])
    waves = [shared_waves[0][:24000], shared_waves[5][:56000], shared_waves[9][:40000]]
    alone = [backend.embed(w[None], np.array([w.size], dtype=np.int64))[0] for w in waves]
    width = backend.bucket(max(w.size for w in waves))
    batch = np.zeros((len(waves), width), dtype=np.float32)
    for i, w in enumerate(waves):
        batch[i, : w.size] = w
    together = backend.embed(batch, np.array([w.size for w in waves], dtype=np.int64))
    for single, batched in zip(alone, together, strict=True):
        scale = float(np.abs(single).max())
        assert float(np.abs(single - batched).max()) <= 1e-4 * max(1.0, scale)


def test_sensitive_convolutions_stay_float_until_the_gate_is_met(
    titanet_fp32: Path, shared_waves: list[np.ndarray], tmp_path: Path
) -> None:
    # All-int8 gives about 0.997 on this fixture: a 0.999 gate needs some layers kept in float32.
    manifest = quantize_bundle(titanet_fp32, tmp_path / "strict", shared_waves, min_cosine=0.999)
    info = manifest.quantization
    assert info is not None
    assert info.min_cosine_to_fp32 >= 0.999
    assert info.float32_nodes, "expected the fallback to keep some convolutions in float32"
    assert info.quantized_nodes + len(info.float32_nodes) == 25  # every encoder conv of TitaNet
    counts = _optimized_op_counts(tmp_path / "strict" / "model.onnx", tmp_path)
    assert counts["QLinearConv"] == info.quantized_nodes


def test_a_graph_that_cannot_meet_the_gate_is_not_written(
    titanet_fp32: Path, shared_waves: list[np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "never"
    with pytest.raises(QuantizationError, match="not accurate enough"):
        quantize_bundle(titanet_fp32, out, shared_waves, min_cosine=1.0)
    assert not out.exists()


def test_int8_needs_enough_calibration_audio(titanet_fp32: Path, shared_waves: list[np.ndarray]) -> None:
    with pytest.raises(QuantizationError, match="at least 4"):
        quantize_bundle(titanet_fp32, titanet_fp32.parent / "few", shared_waves[:3])


def test_cli_refuses_int8_without_calibration_or_for_the_lstm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], speech_dir: Path
) -> None:
    nemo = ["--nemo", str(nemo_path(TITANET))]
    out = ["--out", str(tmp_path / "x")]
    assert main(["export", *nemo, *out, "--precision", "int8"]) == 2
    assert "--calibration-audio" in capsys.readouterr().err
    assert main(["export", *nemo, *out, "--calibration-audio", str(speech_dir)]) == 2
    assert "only used with --precision int8" in capsys.readouterr().err
    pt = tmp_path / "pretrained.pt"
    pt.write_bytes(b"")
    args = ["export", "--resemblyzer", str(pt), *out, "--precision", "int8"]
    assert main([*args, "--calibration-audio", str(speech_dir)]) == 2
    assert "fp32 only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_reports_unusable_calibration_audio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "a.wav").write_bytes(b"RIFF not really a wav")
    (calib / "b.flac").write_bytes(b"")
    args = ["export", "--nemo", str(nemo_path(TITANET)), "--out", str(tmp_path / "x"), "--precision", "int8"]
    assert main([*args, "--calibration-audio", str(calib)]) == 1
    assert "at least 4 usable calibration recordings" in capsys.readouterr().err
    assert main([*args, "--calibration-audio", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_identity_initializers_are_inlined() -> None:
    """Pure graph rewrite: Identity(initializer) -> an initializer under the Identity's output name."""
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["w"], ["w_shared"], name="id"),
            helper.make_node("MatMul", ["x", "w_shared"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    before = _run(model, x)
    assert inline_initializer_identities(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_run(model, x), before)


def test_manifest_of_an_int8_bundle_is_plain_json(titanet_int8: Path) -> None:
    data = json.loads((titanet_int8 / "manifest.json").read_text())
    assert data["precision"] == "int8"
    assert set(data["quantization"]) >= {"method", "min_cosine_to_fp32", "max_score_change", "float32_nodes"}


def _bn_conv_model(kernel: int, pads: list[int]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    c_in, c_out = 4, 3
    inits = [
        numpy_helper.from_array(rng.uniform(0.5, 2.0, c_in).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=c_in).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=c_in).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.1, 3.0, c_in).astype(np.float32), "var"),
        numpy_helper.from_array(rng.normal(size=(c_out, c_in, 1, kernel)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=c_out).astype(np.float32), "b"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["n"], name="bn"),
            helper.make_node(
                "Conv", ["n", "w", "b"], ["y"], name="conv", kernel_shape=[1, kernel], pads=pads
            ),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c_in, 1, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_batchnorm_feeding_a_pointwise_conv_is_folded_exactly() -> None:
    model = _bn_conv_model(kernel=1, pads=[0, 0, 0, 0])
    x = np.random.default_rng(1).normal(size=(2, 4, 1, 7)).astype(np.float32)
    before = _run(model, x)
    assert fold_batchnorm_into_pointwise_convs(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Relu", "Conv"]
    assert {i.name for i in model.graph.initializer} == {"conv/bn_folded_weight", "conv/bn_folded_bias"}
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_batchnorm_before_a_padded_conv_is_left_alone() -> None:
    """Zero padding after BatchNorm is not BatchNorm of zero padding: folding would change the edges."""
    model = _bn_conv_model(kernel=3, pads=[0, 1, 0, 1])
    assert fold_batchnorm_into_pointwise_convs(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Relu", "BatchNormalization", "Conv"]
