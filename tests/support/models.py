"""Small real ONNX graphs with the VoxGate interface (API and engine tests), the default model, and a
deterministic FakeBackend for batching tests (pure logic only).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.core.paths import sha256_file
from app.engine.manifest import GRAPH_FILE, ModelManifest, write_manifest
from tests.support.data import DEFAULT_MODEL_DIR, SAMPLE_RATE

# --- small real ONNX graphs (API tests) --------------------------------------------------------------
TINY_DIM = 8


def build_tiny_model(model_dir: Path, name: str = "tiny-test") -> Path:
    """A small real ONNX graph with the VoxGate interface: audio [B, T], lengths [B] -> embedding [B, 8].

    The embedding is an affine map of a few loudness statistics — useless for speakers, but a real
    graph that ONNX Runtime loads and runs, so the service path is exercised without the big model.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, TINY_DIM)).astype(np.float32)
    bias = rng.standard_normal(TINY_DIM).astype(np.float32)
    nodes = [
        helper.make_node("Abs", ["audio"], ["abs"]),
        helper.make_node("ReduceMean", ["abs"], ["mean_abs"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["audio", "audio"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["mean_sq"], axes=[1], keepdims=1),
        helper.make_node("Cast", ["lengths"], ["len_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["len_f", "one_axis"], ["len_col"]),
        helper.make_node("Mul", ["len_col", "tiny_scale"], ["len_scaled"]),
        helper.make_node("Concat", ["mean_abs", "mean_sq", "len_scaled"], ["feats"], axis=1),
        helper.make_node("MatMul", ["feats", "weight"], ["proj"]),
        helper.make_node("Add", ["proj", "bias"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", TINY_DIM])],
        initializer=[
            helper.make_tensor("weight", TensorProto.FLOAT, [3, TINY_DIM], weight.flatten().tolist()),
            helper.make_tensor("bias", TensorProto.FLOAT, [TINY_DIM], bias.tolist()),
            helper.make_tensor("one_axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("tiny_scale", TensorProto.FLOAT, [], [1e-7]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    graph_path = model_dir / "model.onnx"
    onnx.save(model, graph_path)
    write_manifest(
        model_dir,
        ModelManifest(
            name=name,
            architecture="tiny-test",
            source="tests/support/ (random init)",
            graph_sha256=sha256_file(graph_path),
            embedding_dim=TINY_DIM,
            opset=17,
            default_threshold=0.5,
            threshold_source="arbitrary (test graph)",
            min_speech_seconds=0.5,
            exporter="onnx.helper",
        ),
    )
    return model_dir


def default_model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        raise FileNotFoundError(
            f"default model missing at {DEFAULT_MODEL_DIR} (it is part of the repository: re-clone)"
        )
    return DEFAULT_MODEL_DIR


# --- small real ONNX graphs and a fake backend (engine tests) -----------------------------------------
# The graphs are built with the ``onnx`` helper API and run in real ONNX Runtime sessions. The
# FakeBackend exists only for unit tests of pure batching logic (what got batched with what, when).
TOY_DIM = 16
_KERNEL = 32
_CHANNELS = 8


def _const(name: str, value: npt.ArrayLike, dtype: type = np.float32) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
    )


def stats_graph(
    dim: int = TOY_DIM,
    *,
    input_names: tuple[str, str] = ("audio", "lengths"),
    output_name: str = "embedding",
    lengths_type: int = TensorProto.INT64,
    seed: int = 0,
) -> onnx.ModelProto:
    """Length-masked statistics of the audio projected to ``dim``: a padding-invariant toy speaker model.

    Features per utterance (valid samples only): mean, mean square, mean |x|, and the mean energy of
    8 random FIR filters (a Conv over the waveform, masked to windows that lie inside the utterance).
    """
    rng = np.random.default_rng(seed)
    audio, lengths = input_names
    conv_w = rng.standard_normal((_CHANNELS, 1, _KERNEL)).astype(np.float32) / np.sqrt(_KERNEL)
    proj = rng.standard_normal((3 + _CHANNELS, dim)).astype(np.float32)
    nodes = [
        _const("zero", 0, np.int64),
        _const("one", 1, np.int64),
        _const("ax0", [0], np.int64),
        _const("ax1", [1], np.int64),
        _const("ax2", [2], np.int64),
        _const("kstart", [_KERNEL - 1], np.int64),
        _const("big", [2**62], np.int64),
        _const("kminus1", float(_KERNEL - 1)),
        _const("eps", 1e-6),
        _const("conv_w", conv_w),
        _const("proj", proj),
        helper.make_node("Cast", [lengths], ["len64"], to=TensorProto.INT64),
        helper.make_node("Shape", [audio], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["n"], axis=0),
        helper.make_node("Range", ["zero", "n", "one"], ["t"]),
        helper.make_node("Unsqueeze", ["t", "ax0"], ["t_row"]),
        helper.make_node("Unsqueeze", ["len64", "ax1"], ["len_col"]),
        helper.make_node("Less", ["t_row", "len_col"], ["mask_b"]),
        helper.make_node("Cast", ["mask_b"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["len_col"], ["lenf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [audio, "mask"], ["x"]),
        helper.make_node("ReduceSum", ["x", "ax1"], ["s1"], keepdims=1),
        helper.make_node("Mul", ["x", "x"], ["x2"]),
        helper.make_node("ReduceSum", ["x2", "ax1"], ["s2"], keepdims=1),
        helper.make_node("Abs", ["x"], ["xa"]),
        helper.make_node("ReduceSum", ["xa", "ax1"], ["sa"], keepdims=1),
        helper.make_node("Div", ["s1", "lenf"], ["f_mean"]),
        helper.make_node("Div", ["s2", "lenf"], ["f_sq"]),
        helper.make_node("Div", ["sa", "lenf"], ["f_abs"]),
        # Filter-bank energies over windows fully inside the utterance.
        helper.make_node("Unsqueeze", ["x", "ax1"], ["x3"]),
        helper.make_node("Conv", ["x3", "conv_w"], ["y"]),
        helper.make_node("Mul", ["y", "y"], ["y2"]),
        helper.make_node("Slice", ["mask", "kstart", "big", "ax1"], ["mask_c"]),
        helper.make_node("Unsqueeze", ["mask_c", "ax1"], ["mask_c3"]),
        helper.make_node("Mul", ["y2", "mask_c3"], ["y2m"]),
        helper.make_node("ReduceSum", ["y2m", "ax2"], ["e_sum"], keepdims=0),
        helper.make_node("Sub", ["lenf", "kminus1"], ["n_windows"]),
        helper.make_node("Div", ["e_sum", "n_windows"], ["f_energy"]),
        helper.make_node("Add", ["f_energy", "eps"], ["f_energy_eps"]),
        helper.make_node("Log", ["f_energy_eps"], ["f_log"]),
        helper.make_node("Concat", ["f_mean", "f_sq", "f_abs", "f_log"], ["feats"], axis=1),
        helper.make_node("MatMul", ["feats", "proj"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "voxgate-toy-stats",
        [
            helper.make_tensor_value_info(audio, TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info(lengths, lengths_type, ["batch"]),
        ],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", dim])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model_dir(
    out: Path,
    model: onnx.ModelProto | None = None,
    *,
    dim: int = TOY_DIM,
    segment_seconds: float | None = 3.0,
    overlap_seconds: float = 0.5,
) -> ModelManifest:
    """Write ``model.onnx`` + ``manifest.json`` (manifest dim ``dim``, possibly a lie on purpose)."""
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model if model is not None else stats_graph(dim), str(out / GRAPH_FILE))
    manifest = ModelManifest(
        name="toy-stats",
        architecture="toy",
        source="tests/support/",
        graph_sha256=sha256_file(out / GRAPH_FILE),
        embedding_dim=dim,
        opset=17,
        default_threshold=0.5,
        threshold_source="made up for tests",
        min_speech_seconds=0.5,
        segment_seconds=segment_seconds,
        segment_overlap_seconds=overlap_seconds,
        exporter="tests",
    )
    write_manifest(out, manifest)
    return manifest


def toy_waveform(seconds: float, seed: int) -> npt.NDArray[np.float32]:
    """A 'voice': a few harmonics with a syllable-like envelope plus noise, different per seed."""
    rng = np.random.default_rng(seed)
    n = max(1, int(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(90, 250)
    voice = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 5))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t)) ** 2
    wave = 0.2 * voice * envelope + 0.005 * rng.standard_normal(n)
    return np.asarray(wave, dtype=np.float32)


class FakeBackend:
    """Deterministic stand-in for batching-logic unit tests.

    The embedding of a row depends only on that row's valid samples: [mean, length in s, first sample].
    Every batch is recorded; ``gate`` (when set up) holds the first batch until released, so tests can
    pile work up behind a busy worker; ``fail_when`` makes a batch raise.
    """

    dim = 3
    provider = "FakeExecutionProvider"
    measured_samples_per_s = None  # a fake's speed says nothing: the engine keeps its cautious guess

    def __init__(self, *, hold_first: bool = False, bucket_step: int = 1) -> None:
        self.batches: list[list[int]] = []  # true lengths of each batch
        self.padded: list[int] = []
        self.warmups = 0
        self.bucket_step = bucket_step
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not hold_first:
            self.gate.set()
        self.fail_when: Callable[[npt.NDArray[np.int64]], BaseException | None] | None = None
        self._lock = threading.Lock()

    def bucket(self, n_samples: int) -> int:
        step = self.bucket_step
        return max(step, -(-n_samples // step) * step)

    def embed(
        self, audio: npt.NDArray[np.float32], lengths: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        self.entered.set()
        self.gate.wait(timeout=30)
        with self._lock:
            self.batches.append([int(n) for n in lengths])
            self.padded.append(int(audio.shape[1]))
        if self.fail_when is not None:
            error = self.fail_when(lengths)
            if error is not None:
                raise error
        out = np.empty((audio.shape[0], self.dim), dtype=np.float32)
        for i, n in enumerate(lengths):
            row = audio[i, : int(n)]
            out[i] = (float(row.mean()), int(n) / SAMPLE_RATE, float(row[0]))
        return out

    def warmup(self, *, max_batch_size: int, max_samples: int, max_batch_samples: int) -> int:
        self.warmups += 1
        return 0


def fake_manifest(segment_seconds: float | None = None, overlap_seconds: float = 0.0) -> ModelManifest:
    return ModelManifest(
        name="fake",
        architecture="fake",
        source="tests",
        graph_sha256="0" * 64,
        embedding_dim=FakeBackend.dim,
        opset=17,
        default_threshold=0.5,
        threshold_source="tests",
        min_speech_seconds=0.5,
        segment_seconds=segment_seconds,
        segment_overlap_seconds=overlap_seconds,
        exporter="tests",
    )
