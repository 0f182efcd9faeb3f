"""int8 graphs for CPU serving: static post-training quantisation of a NeMo bundle's encoder.

* **What is quantised.** The encoder's convolutions (about 85 % of the compute of TitaNet and ECAPA),
  with per-output-channel int8 weights and uint8 activations, in QDQ form: ONNX Runtime fuses each
  DequantizeLinear -> Conv -> QuantizeLinear into a QLinearConv that runs on the CPU's int8 dot-product
  instructions (VNNI). The log-mel front end (power spectra span about 20 orders of magnitude) and the
  decoder (pooling statistics, the embedding layer) stay float32, as do the graph's inputs and output.
* **Why static and not dynamic.** Dynamic quantisation derives activation scales from each batch, so an
  utterance's embedding would depend on what it was batched with. Static scales are fixed at export
  (from calibration audio), so every item of a batch gets the embedding it gets alone: the engine's
  contract holds for int8 graphs too.
* **Accuracy is measured, not assumed.** Every fourth calibration recording is held out; the export
  embeds those with the float32 and the int8 graph and fails when their cosine similarity drops below
  ``min_cosine``. The figures go into the manifest (``quantization``). The int8 graph has its own graph
  hash, hence its own storage namespace (``ModelManifest.model_key``): enrollments made with the float32
  graph are not mixed with int8 embeddings.

Needs ``onnx`` and ``onnxruntime`` (the ``export`` extra); no torch.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from app.audio import TARGET_SAMPLE_RATE, decode_audio
from app.errors import VoxGateError
from app.export.probe import copy_probe
from app.manifest import (
    AUDIO_INPUT,
    GRAPH_FILE,
    LENGTHS_INPUT,
    ModelManifest,
    QuantizationInfo,
    load_manifest,
    sha256_file,
    write_manifest,
)

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
# The scope the NeMo exporter gives the encoder's operators (torch module name ``encoder``).
ENCODER_SCOPE = "/encoder/"
# cos 0.995 = 5.7 degrees between an int8 embedding and its float32 one; the verification scores of the
# held-out pairs are reported too (``max_score_change``). Raise it to trade speed for fidelity.
DEFAULT_MIN_COSINE = 0.995
MIN_CALIBRATION_FILES = 4
# Calibration only needs activation ranges: 10 s per recording is plenty and bounds memory.
CALIBRATION_SECONDS = 10.0
# Accuracy is measured on up to 30 s per recording (the segment length of the NeMo bundles: one pass).
RECORDING_SECONDS = 30.0
# Longer files are skipped rather than decoded whole.
MAX_FILE_SECONDS = 600.0
METHOD = (
    "static post-training int8 (QDQ): encoder convolutions with per-channel int8 weights and uint8 "
    "activations, MinMax calibration; front end and decoder float32"
)


class QuantizationError(ValueError):
    """The int8 graph could not be made, or it is not accurate enough."""


@dataclass(frozen=True)
class CalibrationSet:
    calibration: list[Float32Array]
    heldout: list[Float32Array]


def audio_files(directory: Path) -> list[Path]:
    """Audio files under ``directory`` (recursively), sorted so that the held-out split is reproducible."""
    if not directory.is_dir():
        raise QuantizationError(f"calibration audio directory {directory} does not exist")
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def load_calibration_audio(files: Sequence[Path]) -> list[Float32Array]:
    """Decode files as the service decodes uploads (16 kHz mono), at most ``RECORDING_SECONDS`` of each.

    Unreadable files and files longer than ``MAX_FILE_SECONDS`` are skipped (logged).
    """
    waves: list[Float32Array] = []
    for path in files:
        try:
            audio = decode_audio(path.read_bytes(), max_seconds=MAX_FILE_SECONDS)
        except (OSError, VoxGateError) as exc:
            log.warning("calibration file %s skipped: %s", path, exc)
            continue
        waves.append(audio.waveform[: int(RECORDING_SECONDS * TARGET_SAMPLE_RATE)])
    return waves


def split_calibration(waves: Sequence[Float32Array]) -> CalibrationSet:
    """Every fourth recording is held out to measure accuracy; the rest calibrate."""
    if len(waves) < MIN_CALIBRATION_FILES:
        raise QuantizationError(
            f"int8 export needs at least {MIN_CALIBRATION_FILES} usable calibration recordings of speech, "
            f"got {len(waves)}"
        )
    heldout = [w for i, w in enumerate(waves) if i % 4 == 3]
    calibration = [w for i, w in enumerate(waves) if i % 4 != 3]
    return CalibrationSet(calibration=calibration, heldout=heldout)


def inline_initializer_identities(model: onnx.ModelProto) -> int:
    """Replace ``Identity(initializer)`` nodes with initializers of their own.

    The TorchScript exporter shares equal-valued parameters (e.g. zero biases) through Identity nodes. An
    Identity between a DequantizeLinear and its Conv stops ONNX Runtime from fusing the QDQ group into a
    QLinearConv, and that Conv then runs in float32 between a dequantise and a quantise: slower than no
    quantisation at all.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    kept = []
    inlined = 0
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            value = numpy_helper.to_array(initializers[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            inlined += 1
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return inlined


def fold_batchnorm_into_pointwise_convs(model: onnx.ModelProto) -> int:
    """Fold each BatchNormalization whose only consumer is a 1x1, unpadded, ungrouped Conv into that Conv.

    Exact for every frame (no padding, no time mixing): Conv(W, s*y + t) = Conv(W*s, y) + W@t. It matters
    for int8 because activations are quantised per tensor: a BatchNorm output has a different offset and
    scale in every channel, which wastes most of the 256 levels on the channels with small ranges, while
    the Conv's weights are quantised per output channel and absorb the scales for free. (ECAPA's blocks
    end in Conv -> ReLU -> BatchNorm, feeding the next 1x1 Conv.)
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {out.name for out in graph.output}
    folded: list[onnx.NodeProto] = []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or bn.output[0] in graph_outputs or len(bn.output) != 1:
            continue
        users = consumers.get(bn.output[0], [])
        if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != bn.output[0]:
            continue
        conv = users[0]
        attrs = _attributes(conv)
        if not all(name in initializers for name in [*bn.input[1:5], conv.input[1]]):
            continue
        weight = numpy_helper.to_array(initializers[conv.input[1]]).astype(np.float64)
        if any(k != 1 for k in weight.shape[2:]) or attrs.get("group", 1) != 1 or any(attrs.get("pads", [])):
            continue
        epsilon = float(_attributes(bn).get("epsilon", 1e-5))
        gamma, beta, mean, var = (
            numpy_helper.to_array(initializers[n]).astype(np.float64) for n in bn.input[1:5]
        )
        scale = gamma / np.sqrt(var + epsilon)
        shift = beta - mean * scale
        has_bias = len(conv.input) > 2 and conv.input[2] != ""
        bias = (
            numpy_helper.to_array(initializers[conv.input[2]]).astype(np.float64)
            if has_bias
            else np.zeros(weight.shape[0])
        )
        new_weight = weight * scale.reshape(1, -1, *([1] * (weight.ndim - 2)))
        new_bias = bias + weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2) @ shift
        weight_name, bias_name = f"{conv.name}/bn_folded_weight", f"{conv.name}/bn_folded_bias"
        graph.initializer.extend(
            [
                numpy_helper.from_array(new_weight.astype(np.float32), weight_name),
                numpy_helper.from_array(new_bias.astype(np.float32), bias_name),
            ]
        )
        conv.input[0], conv.input[1] = bn.input[0], weight_name
        if has_bias:
            conv.input[2] = bias_name
        else:
            conv.input.append(bias_name)
        folded.append(bn)
    for bn in folded:
        graph.node.remove(bn)
    _drop_unused_initializers(model)
    return len(folded)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def encoder_convolutions(model: onnx.ModelProto) -> list[str]:
    """The encoder's Conv nodes worth int8 weights: constant weights, and work that grows with time.

    A convolution over a pooled vector (the squeeze-excitation convs of ECAPA: input [B, C, 1, 1], known
    from shape inference) costs next to nothing, so quantising it would add error and save no time.
    """
    initializers = {init.name for init in model.graph.initializer}
    shapes = {
        info.name: [
            dim.dim_value if dim.HasField("dim_value") else None for dim in info.type.tensor_type.shape.dim
        ]
        for info in model.graph.value_info
    }
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv"
        and node.name.startswith(ENCODER_SCOPE)
        and node.input[1] in initializers
        and shapes.get(node.input[0], [None])[-1] != 1
    ]


def _feed(wave: Float32Array) -> dict[str, np.ndarray]:
    """One recording as a batch of one."""
    return {AUDIO_INPUT: wave[None, :], LENGTHS_INPUT: np.array([wave.size], dtype=np.int64)}


class _Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
    """Feeds calibration recordings one at a time (batch 1: no padding enters the activation ranges)."""

    def __init__(self, waves: Sequence[Float32Array], sample_rate: int) -> None:
        limit = int(CALIBRATION_SECONDS * sample_rate)
        self._items: Iterator[Float32Array] = iter([w[:limit] for w in waves])

    def get_next(self) -> dict[str, np.ndarray] | None:
        wave = next(self._items, None)
        return None if wave is None else _feed(wave)


class _HeldOut:
    """Held-out recordings and their float32 embeddings, to score candidate graphs against."""

    def __init__(self, fp32_graph: Path, waves: Sequence[Float32Array]) -> None:
        self._feeds = [_feed(w) for w in waves]
        self._reference = self._embed(fp32_graph)

    def _embed(self, graph: Path) -> npt.NDArray[np.float64]:
        session = _cpu_session(graph)
        emb = np.stack([np.asarray(session.run(None, f)[0][0], dtype=np.float64) for f in self._feeds])
        normalised: npt.NDArray[np.float64] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        return normalised

    def compare(self, graph: Path) -> tuple[list[float], float]:
        """Cosine of each recording's embedding to its float32 one, and the largest change of a
        verification score (cosine between two held-out recordings) from float32 to ``graph``."""
        emb = self._embed(graph)
        cosines = [float(c) for c in np.sum(emb * self._reference, axis=1)]
        score_change = float(np.abs(emb @ emb.T - self._reference @ self._reference.T).max())
        return cosines, score_change


@dataclass(frozen=True)
class QuantizedGraph:
    quantized: list[str]
    kept_float: list[str]
    cosines: list[float]
    max_score_change: float


class _Quantizer:
    """Writes int8 variants of one prepared graph; activation ranges are calibrated once, then cached."""

    def __init__(
        self, prepared: Path, workdir: Path, waves: Sequence[Float32Array], sample_rate: int
    ) -> None:
        self.prepared = prepared
        self.candidates = encoder_convolutions(onnx.load(str(prepared)))
        if not self.candidates:
            raise QuantizationError(f"{prepared}: no encoder convolutions to quantise")
        self._waves, self._sample_rate = waves, sample_rate
        self._workdir = workdir
        self._written = 0
        # onnxruntime >= 1.32 can cache the calibrated ranges; older versions calibrate on every write.
        self._cache: dict[str, str] = {}
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            self._cache["calibration_cache_path"] = str(workdir / "calibration.json")

    def write(self, nodes: Sequence[str]) -> Path:
        self._written += 1
        out = self._workdir / f"candidate-{self._written}.onnx"
        reuse = self._written > 1 and bool(self._cache)
        quantize_static(
            str(self.prepared),
            str(out),
            None if reuse else _Reader(self._waves, self._sample_rate),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_quantize=list(nodes),
            per_channel=True,
            activation_type=QuantType.QUInt8,  # u8 x s8 is the VNNI fast path on x86
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            **self._cache,
        )
        return out


def quantize_graph(
    fp32_graph: Path,
    int8_graph: Path,
    calibration: Sequence[Float32Array],
    heldout: Sequence[Float32Array],
    *,
    sample_rate: int,
    min_cosine: float,
) -> QuantizedGraph:
    """Write the int8 graph of ``fp32_graph`` that reaches ``min_cosine`` on ``heldout``.

    All encoder convolutions first. When that is not accurate enough, the convolutions whose
    quantisation alone costs the most (typically one or two layers fed by outlier activations) are kept
    in float32, one at a time, until it is; when half of them would have to stay float32, it fails.
    """
    with tempfile.TemporaryDirectory(prefix="voxgate-int8-") as tmp:
        workdir = Path(tmp)
        inlined, prepared = workdir / "inlined.onnx", workdir / "prepared.onnx"
        model = onnx.load(str(fp32_graph))
        inline_initializer_identities(model)
        folded = fold_batchnorm_into_pointwise_convs(model)
        log.info("%d BatchNorms folded into the 1x1 convolutions they feed", folded)
        onnx.save(model, str(inlined))
        # ORT's graph optimisations first (folds each BatchNorm that follows a conv into it, so the folded
        # weights are what gets quantised). No symbolic shape inference: only lengths are dynamic here.
        quant_pre_process(str(inlined), str(prepared), skip_symbolic_shape=True)
        quantizer = _Quantizer(prepared, workdir, calibration, sample_rate)
        held = _HeldOut(fp32_graph, heldout)
        nodes = list(quantizer.candidates)
        graph = quantizer.write(nodes)
        cosines, score_change = held.compare(graph)
        log.info("all %d encoder convolutions int8: min cosine to fp32 %.6f", len(nodes), min(cosines))
        if min(cosines) < min_cosine:
            ranked = _rank_by_sensitivity(quantizer, held)
            for name in ranked[: len(ranked) // 2]:
                nodes.remove(name)
                graph = quantizer.write(nodes)
                cosines, score_change = held.compare(graph)
                log.info("kept %s in float32: min cosine to fp32 %.6f", name, min(cosines))
                if min(cosines) >= min_cosine:
                    break
        if min(cosines) < min_cosine:
            raise QuantizationError(
                f"int8 graph is not accurate enough: min cosine to the float32 graph on {len(cosines)} "
                f"held-out recordings is {min(cosines):.6f} < {min_cosine:g} even with "
                f"{len(quantizer.candidates) - len(nodes)} of {len(quantizer.candidates)} convolutions kept "
                "in float32; serve the float32 graph, or calibrate with more representative audio"
            )
        shutil.move(str(graph), int8_graph)
        kept = [n for n in quantizer.candidates if n not in nodes]
        return QuantizedGraph(nodes, kept, cosines, score_change)


def _rank_by_sensitivity(quantizer: _Quantizer, held: _HeldOut) -> list[str]:
    """Candidates ordered by how much quantising each one alone lowers the worst held-out cosine."""
    loss: dict[str, float] = {}
    for i, name in enumerate(quantizer.candidates, 1):
        graph = quantizer.write([name])
        loss[name] = 1.0 - min(held.compare(graph)[0])
        graph.unlink()
        log.info("sensitivity %d/%d %s: %.2e", i, len(quantizer.candidates), name, loss[name])
    return sorted(loss, key=loss.__getitem__, reverse=True)


def _cpu_session(graph: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])


def quantize_bundle(
    fp32_dir: Path, out: Path, waves: Sequence[Float32Array], *, min_cosine: float = DEFAULT_MIN_COSINE
) -> ModelManifest:
    """Quantise the float32 bundle in ``fp32_dir`` into ``out`` (graph + manifest).

    Nothing is written to ``out`` unless the held-out cosine to the float32 graph reaches ``min_cosine``.
    """
    fp32 = load_manifest(fp32_dir)
    if fp32.precision != "fp32":
        raise QuantizationError(f"{fp32_dir}: int8 starts from a float32 graph, not {fp32.precision}")
    split = split_calibration(waves)
    log.info(
        "quantising %s: %d calibration recordings, %d held out",
        fp32.name,
        len(split.calibration),
        len(split.heldout),
    )
    with tempfile.TemporaryDirectory(prefix="voxgate-int8-out-") as tmp:
        staged = Path(tmp) / GRAPH_FILE
        result = quantize_graph(
            fp32_dir / GRAPH_FILE,
            staged,
            split.calibration,
            split.heldout,
            sample_rate=fp32.sample_rate,
            min_cosine=min_cosine,
        )
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), out / GRAPH_FILE)
        copy_probe(fp32_dir, out, fp32)  # the self-check probe and its float32 references
    worst, mean = min(result.cosines), float(np.mean(result.cosines))
    log.info("int8 vs fp32 on held-out audio: min cosine %.6f, mean %.6f", worst, mean)
    manifest = fp32.model_copy(
        update={
            "precision": "int8",
            "graph_sha256": sha256_file(out / GRAPH_FILE),
            "quantization": QuantizationInfo(
                method=METHOD,
                quantized_nodes=len(result.quantized),
                float32_nodes=result.kept_float,
                calibration_recordings=len(split.calibration),
                heldout_recordings=len(split.heldout),
                min_cosine_to_fp32=worst,
                mean_cosine_to_fp32=mean,
                max_score_change=result.max_score_change,
            ),
        }
    )
    write_manifest(out, manifest)
    return manifest
