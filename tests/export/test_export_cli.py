"""``voxgate export`` for NeMo checkpoints and random-init architectures: bundle, manifest, graph contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.cli.export import RANDOM_ARCHS
from app.cli.main import main
from app.engine.manifest import check_graph_io, load_manifest
from app.export.nemo_export import RANDOM_INIT_CONFIGS, random_init_config
from app.modeling.speaker_model import build_speaker_model
from tests.support.data import (
    MODELS,
    NEMO_FIXTURES,
    REPO_ROOT,
    UTTERANCES,
    audio,
    nemo_manifest,
    nemo_path,
    reference,
)

TITANET = "titanet-large-reduced"
FP16_MIN_COSINE = 0.999
# Operators ONNX Runtime's CUDA provider implements (shape arithmetic runs on the CPU by design).
CUDA_FRIENDLY_OPS = {
    "Add", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "Div",
    "Equal", "Expand", "Gather", "Gemm", "Less", "Log", "MatMul", "Mod", "Mul", "Not", "Pad", "Pow",
    "Range", "Reciprocal", "ReduceSum", "Relu", "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Sqrt",
    "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze", "Where",
}  # fmt: skip


def export(tmp_path: Path, model: str = TITANET, *extra: str) -> Path:
    out = tmp_path / f"{model}-bundle"
    assert main(["export", "--nemo", str(nemo_path(model)), "--out", str(out), *extra]) == 0
    return out


def session_for(bundle: Path, providers: list[str] | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / "model.onnx"), providers=providers or ["CPUExecutionProvider"])


def embed(session: ort.InferenceSession, utt: str) -> np.ndarray:
    x = audio(utt)
    (emb,) = session.run(None, {"audio": x[None], "lengths": np.array([len(x)], dtype=np.int64)})
    return np.asarray(emb[0])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cli_export_writes_a_bundle_that_keeps_its_contract(tmp_path: Path) -> None:
    bundle = export(tmp_path, TITANET, "--name", "tn-test")
    manifest = load_manifest(bundle)  # also checks the graph's sha256
    fixture = nemo_manifest()["models"][TITANET]
    assert manifest.name == "tn-test"
    assert manifest.architecture == "titanet"
    assert manifest.source_sha256 == fixture["nemo"]["sha256"]
    assert manifest.embedding_dim == 192
    assert manifest.precision == "fp32"
    assert manifest.opset == 17
    assert manifest.default_threshold == pytest.approx(0.4)
    assert "0.7" in manifest.threshold_source
    assert "verify_speakers" in manifest.threshold_source
    assert manifest.min_speech_seconds > 0
    assert manifest.segment_seconds is None or manifest.segment_seconds >= 10

    session = session_for(bundle)
    check_graph_io(
        manifest,
        [(i.name, i.shape) for i in session.get_inputs()],
        [(o.name, o.shape) for o in session.get_outputs()],
    )
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(int64)"]
    assert session.get_outputs()[0].type == "tensor(float)"
    assert np.abs(embed(session, "utt1") - reference(TITANET, "utt1.emb")[0]).max() < 1e-4


def test_default_name_is_the_checkpoint_stem(tmp_path: Path) -> None:
    manifest = load_manifest(export(tmp_path, "SpeakerNet_verification_3x2x256-reduced"))
    assert manifest.name == "SpeakerNet_verification_3x2x256-reduced"
    assert manifest.architecture == "speakernet"
    assert manifest.embedding_dim == 256


@pytest.mark.parametrize("model", MODELS)
def test_graph_uses_only_cuda_provider_operators(tmp_path: Path, model: str) -> None:
    graph = onnx.load(str(export(tmp_path, model) / "model.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert ops <= CUDA_FRIENDLY_OPS, ops - CUDA_FRIENDLY_OPS  # no STFT/DFT, no If/Loop


def test_fp16_graph_keeps_fp32_io_and_close_embeddings(tmp_path: Path) -> None:
    bundle = export(tmp_path, TITANET, "--precision", "fp16")
    manifest = load_manifest(bundle)
    assert manifest.precision == "fp16"
    graph = onnx.load(str(bundle / "model.onnx"))
    weight_types = {init.data_type for init in graph.graph.initializer if init.name.endswith("weight")}
    assert onnx.TensorProto.FLOAT16 in weight_types
    try:
        session = session_for(bundle)
        session.run(None, {"audio": np.zeros((1, 16000), np.float32), "lengths": np.array([16000])})
    except Exception as exc:  # ORT builds without fp16 CPU kernels refuse the graph
        pytest.skip(f"this ONNX Runtime cannot run fp16 graphs on the CPU: {exc}")
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(int64)"]
    assert session.get_outputs()[0].type == "tensor(float)"
    for utt in UTTERANCES:
        assert cosine(embed(session, utt), reference(TITANET, f"{utt}.emb")[0]) >= FP16_MIN_COSINE


@pytest.mark.gpu
@pytest.mark.parametrize("model", MODELS)
def test_cuda_provider_runs_fp32_and_fp16_graphs(tmp_path: Path, model: str) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider (needs onnxruntime-gpu and a CUDA GPU)")
    cuda = ["CUDAExecutionProvider"]
    fp32 = session_for(export(tmp_path / "fp32", model), cuda)
    fp16 = session_for(export(tmp_path / "fp16", model, "--precision", "fp16"), cuda)
    assert fp32.get_providers()[0] == "CUDAExecutionProvider"
    for utt in UTTERANCES:
        ref = reference(model, f"{utt}.emb")[0]
        assert np.abs(embed(fp32, utt) - ref).max() < 1e-3  # GPU convolution algorithms differ slightly
        assert cosine(embed(fp16, utt), ref) >= FP16_MIN_COSINE


def test_arch_needs_random_init(tmp_path: Path) -> None:
    assert main(["export", "--arch", "titanet-small", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_random_init_export_smoke(tmp_path: Path) -> None:
    out = tmp_path / "ts"
    assert main(["export", "--arch", "titanet-small", "--random-init", "--out", str(out)]) == 0
    manifest = load_manifest(out)
    assert manifest.architecture == "titanet-small"
    assert manifest.name == "titanet-small-random"
    assert "random" in manifest.source
    assert manifest.source_sha256 is None
    session = session_for(out)
    batch = np.zeros((2, 24000), np.float32)
    batch[0] = 0.1 * np.random.default_rng(0).standard_normal(24000)
    batch[1, :16000] = batch[0, :16000]
    (emb,) = session.run(None, {"audio": batch, "lengths": np.array([24000, 16000])})
    assert emb.shape == (2, 192)
    assert np.isfinite(emb).all()


@pytest.mark.parametrize("arch", RANDOM_ARCHS)
def test_every_cli_architecture_has_a_config(arch: str) -> None:
    model = build_speaker_model(random_init_config(arch))
    assert model.architecture == arch
    widths = {"titanet-large": 1024, "titanet-medium": 512, "titanet-small": 256}
    if arch in widths:
        assert model.encoder.encoder[1].mconv[1].conv.out_channels == widths[arch]


def test_bundled_configs_are_nemos_own() -> None:
    configs = REPO_ROOT / "app" / "modeling" / "configs"
    for file in RANDOM_INIT_CONFIGS.values():
        official = NEMO_FIXTURES / "configs" / file
        if official.is_file():
            assert (configs / file).read_bytes() == official.read_bytes(), file
