"""int8 graphs for CPU serving: static post-training quantisation of a NeMo bundle's encoder.

* **What is quantised.** The encoder's convolutions (about 85 % of the compute of TitaNet and ECAPA),
  with per-output-channel weights and uint8 activations, in QDQ form: ONNX Runtime fuses each
  DequantizeLinear -> Conv -> QuantizeLinear into a QLinearConv that runs on the CPU's int8 instructions.
  The log-mel front end (power spectra span about 20 orders of magnitude) and the decoder (pooling
  statistics, the embedding layer) stay float32, as do the graph's inputs and output.
* **7-bit weights, so that every x86-64 CPU computes the same embeddings** (``U8S8_7BIT``). ONNX
  Runtime's u8 x s8 kernels use VNNI (``vpdpbusd``: exact int32 sums) where the CPU has AVX-512 VNNI or
  AVX-VNNI, and otherwise AVX2 / AVX-512BW ``vpmaddubsw``, which adds two u8 x s8 products into an
  *int16 with saturation*: 255 x 127 x 2 = 64770 > 32767. With full 8-bit weights, a graph that is
  accurate on a VNNI machine gives different, wrong embeddings on an AVX2-only one (measured with the
  AVX2 kernels under QEMU: min cosine to float32 0.48 for the TitaNet fixture, 0.99 with VNNI). Weights
  in [-64, 64] (``reduce_range``) keep every pair within 255 x 64 x 2 = 32640, so both kernels compute
  exact sums, the same ones (measured: cosine between the two >= 0.999999 for four of the five models,
  0.9999 for the ECAPA fixture, where float rounding elsewhere moves an activation across a step).
  Measured against the alternatives on the Zen 4 development machine: u8 x u8 (widening kernels, never
  saturate) runs TitaNet-L at 1.2x float32 instead of 2.1x; s8 x s8 saturates like u8 x s8 without
  VNNI; 7-bit weights run the same VNNI kernel as 8-bit ones, as fast, and cost a little accuracy
  (mean cosine to float32 0.99994 vs 0.99997 for TitaNet-L), which the accuracy gate measures like any
  other. Details: docs/performance.md (int8 section).
* **Why static and not dynamic.** Dynamic quantisation derives activation scales from each batch, so an
  utterance's embedding would depend on what it was batched with. Static scales are fixed at export
  (from calibration audio), so every item of a batch gets the embedding it gets alone: the engine's
  contract holds for int8 graphs too.
* **Accuracy is measured on speakers the calibration never heard.** Whole speakers (the subdirectories
  of the calibration directory) are held out: every fourth speaker in name order, counting from the
  last; or a separate set given as ``--heldout-audio`` (another corpus or recording condition), and then
  every calibration speaker calibrates. Without speaker folders it falls back, with a warning, to every
  fourth recording. The export embeds the held-out recordings with the float32 and the int8 graph and
  fails when a cosine similarity drops below ``min_cosine``.
* **Every condition users send, in calibration and in the gate.** Calibration feeds every recording in
  each condition of ``app.audio.conditions`` (as recorded, telephone band, 20 dB quieter, clipped,
  noise at 10 dB SNR), and the gate checks the held-out speakers in each, separately: an activation
  range only covers inputs like the ones it was measured on. The telephone band is the one that
  decides: bands above 4 kHz that hold nothing make NeMo's per-band normalisation put values of about
  sqrt(frames) at an utterance's edges, and every layer after it sees activations 3-5x wider than
  wideband speech gives. Calibrated on wideband speech only, those are clipped: min cosine to float32
  0.07-0.15 for the TitaNet fixture, 0.9945-0.9957 for the full-size graphs. Calibrated on all conditions,
  the ranges hold them and the wider steps cost a little elsewhere (TitaNet-L all-int8, unseen
  speakers: worst condition 0.9968 instead of 0.9957 on the telephone band; docs/performance.md has
  the table per model). Recordings are fed whole (up to ``RECORDING_SECONDS``, the longest input one
  pass of the graph sees) because the edge values grow with the length. A margin on the MinMax ranges
  was measured too (5-30 %, cross-validated over speaker folds) and did not help consistently, so
  ranges are the plain MinMax of the calibration inputs.
* **What the manifest records** (``quantization``): the scheme, the split, the calibration and held-out
  speakers, min and mean cosine (as recorded) and the worst per condition, the largest change of
  a verification score, and the host the figures were measured on (instruction-set flags from
  ``/proc/cpuinfo``, ONNX Runtime version). The int8 graph has its own graph hash, hence its own storage
  namespace (``ModelManifest.model_key``): float32 enrollments are not mixed with int8 embeddings.

Needs ``onnx`` and ``onnxruntime`` (the ``export`` extra); no torch.
"""

from __future__ import annotations

import inspect
import logging
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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

from app.audio.conditions import AS_RECORDED, CONDITION_NAMES, derive
from app.audio.decode import TARGET_SAMPLE_RATE, decode_audio
from app.core.errors import VoxGateError
from app.core.paths import sha256_file
from app.engine.manifest import (
    AUDIO_INPUT,
    GRAPH_FILE,
    LENGTHS_INPUT,
    ModelManifest,
    QuantizationInfo,
    ValidationHost,
    load_manifest,
    write_manifest,
)
from app.export.probe import add_condition_clips, copy_probe

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
# The scope the NeMo exporter gives the encoder's operators (torch module name ``encoder``).
ENCODER_SCOPE = "/encoder/"
# cos 0.995 = 5.7 degrees between an int8 embedding and its float32 one; the verification scores of the
# held-out pairs are reported too (``max_score_change``). Raise it to trade speed for fidelity.
DEFAULT_MIN_COSINE = 0.995
MIN_CALIBRATION_FILES = 4
# Every HELDOUT_EVERY-th speaker (name order, counting from the last) is held out: at least one.
HELDOUT_EVERY = 4
# Calibration and the gate use up to 30 s of each recording (the segment length of the NeMo bundles: the
# longest input one pass of the graph sees).
RECORDING_SECONDS = 30.0
# Longer files are skipped rather than decoded whole.
MAX_FILE_SECONDS = 600.0
SplitKind = Literal["speaker", "heldout-audio", "file"]


@dataclass(frozen=True)
class Int8Scheme:
    """Integer formats of a QLinearConv's activations and weights, as ``quantize_static`` takes them."""

    name: Literal["u8s8-7bit", "u8s8", "u8u8", "s8s8"]
    activation_type: QuantType
    weight_type: QuantType
    reduce_range: bool  # weights in [-64, 64] (int8) instead of [-127, 127]


# The scheme int8 exports use: exact on VNNI and non-VNNI kernels alike (see the module docstring).
U8S8_7BIT = Int8Scheme("u8s8-7bit", QuantType.QUInt8, QuantType.QInt8, reduce_range=True)
# The alternatives that were measured: 8-bit u8 x s8 and s8 x s8 saturate without VNNI, u8 x u8 is slow.
U8S8 = Int8Scheme("u8s8", QuantType.QUInt8, QuantType.QInt8, reduce_range=False)
U8U8 = Int8Scheme("u8u8", QuantType.QUInt8, QuantType.QUInt8, reduce_range=False)
S8S8 = Int8Scheme("s8s8", QuantType.QInt8, QuantType.QInt8, reduce_range=False)
DEFAULT_SCHEME = U8S8_7BIT


def method_text(scheme: Int8Scheme) -> str:
    weights = "7-bit int8" if scheme.reduce_range else scheme.weight_type.name.lower()
    return (
        f"static post-training int8 (QDQ, {scheme.name}): encoder convolutions with per-channel "
        f"{weights} weights and {scheme.activation_type.name.lower()} activations, MinMax calibration at "
        f"every recording in {len(CONDITION_NAMES)} conditions; front end and decoder float32"
    )


class QuantizationError(ValueError):
    """The int8 graph could not be made, or it is not accurate enough."""


# --- recordings and the held-out split ----------------------------------------------------------------
@dataclass(frozen=True)
class Recording:
    """One decoded recording (16 kHz mono, at most ``RECORDING_SECONDS``) and who speaks in it."""

    wave: Float32Array
    # The recording's folder relative to the audio directory (the speaker label); None for files that
    # lie directly in the audio directory (speaker unknown).
    speaker: str | None
    name: str


@dataclass(frozen=True)
class CalibrationSet:
    calibration: list[Recording]
    heldout: list[Recording]
    split: SplitKind

    @property
    def calibration_speakers(self) -> list[str]:
        return sorted({r.speaker for r in self.calibration if r.speaker is not None})

    @property
    def heldout_speakers(self) -> list[str]:
        return sorted({r.speaker for r in self.heldout if r.speaker is not None})


def audio_files(directory: Path) -> list[Path]:
    """Audio files under ``directory`` (recursively), sorted so that the held-out split is reproducible."""
    if not directory.is_dir():
        raise QuantizationError(f"audio directory {directory} does not exist")
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _decode(path: Path) -> Float32Array | None:
    try:
        audio = decode_audio(path.read_bytes(), max_seconds=MAX_FILE_SECONDS)
    except (OSError, VoxGateError) as exc:
        log.warning("audio file %s skipped: %s", path, exc)
        return None
    return audio.waveform[: int(RECORDING_SECONDS * TARGET_SAMPLE_RATE)]


def load_recordings(directory: Path) -> list[Recording]:
    """The usable recordings under ``directory``, each labelled with its speaker (its folder).

    Decoded as the service decodes uploads (16 kHz mono), at most ``RECORDING_SECONDS`` of each;
    unreadable files and files longer than ``MAX_FILE_SECONDS`` are skipped (logged).
    """
    recordings = []
    for path in audio_files(directory):
        wave = _decode(path)
        if wave is None:
            continue
        folder = path.parent.relative_to(directory).as_posix()
        speaker = None if folder == "." else folder
        recordings.append(Recording(wave, speaker, path.relative_to(directory).as_posix()))
    return recordings


def split_calibration(
    recordings: Sequence[Recording], heldout: Sequence[Recording] | None = None
) -> CalibrationSet:
    """Which recordings calibrate and which measure accuracy: never the same speaker in both.

    * ``heldout`` given (``--heldout-audio``): it is the held-out set, and every recording calibrates.
    * Otherwise every ``HELDOUT_EVERY``-th speaker, in name order counting from the last (at least one),
      is held out with all of their recordings; recordings without a speaker folder only calibrate.
    * Fewer than two speakers: every fourth recording, with a warning (the gate then measures the same
      speakers it was calibrated on, which overrates it).
    """
    if len(recordings) < MIN_CALIBRATION_FILES:
        raise QuantizationError(
            f"int8 export needs at least {MIN_CALIBRATION_FILES} usable calibration recordings of speech, "
            f"got {len(recordings)}"
        )
    if heldout is not None:
        if not heldout:
            raise QuantizationError("no usable held-out recordings of speech (--heldout-audio)")
        shared = {r.speaker for r in recordings} & {r.speaker for r in heldout} - {None}
        if shared:
            log.warning(
                "speaker folders %s are in both the calibration and the held-out audio: if they are the "
                "same people, the gate overrates the int8 graph",
                ", ".join(sorted(s for s in shared if s is not None)),
            )
        return CalibrationSet(list(recordings), list(heldout), "heldout-audio")
    speakers = sorted({r.speaker for r in recordings if r.speaker is not None})
    if len(speakers) >= 2:
        held_speakers = set(speakers[::-1][::HELDOUT_EVERY])
        return CalibrationSet(
            [r for r in recordings if r.speaker not in held_speakers],
            [r for r in recordings if r.speaker in held_speakers],
            "speaker",
        )
    log.warning(
        "calibration audio has %s: holding out every fourth recording instead of whole speakers, so the "
        "accuracy gate only covers the calibration speakers. Put each speaker's recordings in a folder of "
        "their own, or pass --heldout-audio with other speakers.",
        "one speaker folder" if speakers else "no speaker folders",
    )
    return CalibrationSet(
        [r for i, r in enumerate(recordings) if i % 4 != 3],
        [r for i, r in enumerate(recordings) if i % 4 == 3],
        "file",
    )


# --- the host ---------------------------------------------------------------------------------------------
# The CPU features (as /proc/cpuinfo names them) that decide which int8 kernels ONNX Runtime's MLAS runs:
# x86 SSE/AVX2/AVX-512 (u8 x s8 by vpmaddubsw, int16 pair sums), VNNI in its AVX-512 and VEX forms
# (vpdpbusd, int32 sums), AMX; Arm NEON dot product and i8mm.
INT8_CPU_FLAGS = (
    "sse4_1",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "avx_vnni_int8",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "sve2",
)


def this_host(cpuinfo: Path = Path("/proc/cpuinfo")) -> ValidationHost:
    """The machine the accuracy figures are measured on: what the CPU reports, no assumptions."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    flags: set[str] = set()
    model = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):  # x86 / Arm
            flags.update(value.split())
        elif key == "model name" and model is None:
            model = value.strip() or None
    return ValidationHost(
        machine=platform.machine(),
        cpu_model=model,
        cpu_flags=[flag for flag in INT8_CPU_FLAGS if flag in flags],
        onnxruntime=ort.__version__,
    )


# --- graph rewrites -------------------------------------------------------------------------------------
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


def calibration_inputs(
    waves: Sequence[Float32Array], conditions: Sequence[str] = CONDITION_NAMES
) -> Iterator[Float32Array]:
    """What calibration feeds, one at a time (derived as it goes: five copies of every recording would
    not need to be in memory at once): each recording in every condition."""
    return (derive(condition, wave) for wave in waves for condition in conditions)


class _Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
    """Feeds calibration inputs one at a time (batch 1: no padding enters the activation ranges)."""

    def __init__(self, inputs: Iterator[Float32Array]) -> None:
        self._items = inputs

    def get_next(self) -> dict[str, np.ndarray] | None:
        wave = next(self._items, None)
        return None if wave is None else _feed(wave)


@dataclass(frozen=True)
class Scores:
    """Cosine of each held-out recording's embedding to its float32 one, per condition."""

    cosines: dict[str, list[float]]
    max_score_change: float

    @property
    def worst(self) -> float:
        return min(min(values) for values in self.cosines.values())

    @property
    def as_recorded(self) -> list[float]:
        return self.cosines[AS_RECORDED]

    def by_condition(self) -> dict[str, float]:
        return {name: min(values) for name, values in self.cosines.items()}


class _HeldOut:
    """Held-out recordings in every condition, and their float32 embeddings to score graphs by."""

    def __init__(self, fp32_graph: Path, waves: Sequence[Float32Array]) -> None:
        self._feeds = {name: [_feed(derive(name, w)) for w in waves] for name in CONDITION_NAMES}
        self._reference = self._embed(fp32_graph)

    def _embed(self, graph: Path) -> dict[str, npt.NDArray[np.float64]]:
        session = _cpu_session(graph)
        result = {}
        for name, feeds in self._feeds.items():
            emb = np.stack([np.asarray(session.run(None, f)[0][0], dtype=np.float64) for f in feeds])
            result[name] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        return result

    def compare(self, graph: Path) -> Scores:
        """Cosines to float32, and the largest change of a verification score (cosine between two
        held-out recordings as recorded) from float32 to ``graph``."""
        emb = self._embed(graph)
        cosines = {
            name: [float(c) for c in np.sum(emb[name] * self._reference[name], axis=1)] for name in emb
        }
        ours, ref = emb[AS_RECORDED], self._reference[AS_RECORDED]
        score_change = float(np.abs(ours @ ours.T - ref @ ref.T).max())
        return Scores(cosines, score_change)


@dataclass(frozen=True)
class QuantizedGraph:
    quantized: list[str]
    kept_float: list[str]
    scores: Scores


class _Quantizer:
    """Writes int8 variants of one prepared graph; activation ranges are calibrated once, then cached."""

    def __init__(
        self,
        prepared: Path,
        workdir: Path,
        inputs: Callable[[], Iterator[Float32Array]],
        scheme: Int8Scheme,
    ) -> None:
        self.prepared = prepared
        self.candidates = encoder_convolutions(onnx.load(str(prepared)))
        if not self.candidates:
            raise QuantizationError(f"{prepared}: no encoder convolutions to quantise")
        self._inputs, self._scheme = inputs, scheme
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
            None if reuse else _Reader(self._inputs()),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_quantize=list(nodes),
            per_channel=True,
            reduce_range=self._scheme.reduce_range,
            activation_type=self._scheme.activation_type,
            weight_type=self._scheme.weight_type,
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
    min_cosine: float,
    scheme: Int8Scheme = DEFAULT_SCHEME,
    calibration_conditions: Sequence[str] = CONDITION_NAMES,
) -> QuantizedGraph:
    """Write the int8 graph of ``fp32_graph`` that reaches ``min_cosine`` on ``heldout`` in every condition.

    ``calibration_conditions`` (default: all of them) is there to measure the alternatives
    (``bench.int8_conditions``); the exporter calibrates on all.

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
        quantizer = _Quantizer(
            prepared, workdir, lambda: calibration_inputs(calibration, calibration_conditions), scheme
        )
        held = _HeldOut(fp32_graph, heldout)
        nodes = list(quantizer.candidates)
        graph = quantizer.write(nodes)
        scores = held.compare(graph)
        log.info("all %d encoder convolutions int8: min cosine to fp32 %.6f", len(nodes), scores.worst)
        if scores.worst < min_cosine:
            ranked = _rank_by_sensitivity(quantizer, held)
            for name in ranked[: len(ranked) // 2]:
                nodes.remove(name)
                graph = quantizer.write(nodes)
                scores = held.compare(graph)
                log.info("kept %s in float32: min cosine to fp32 %.6f", name, scores.worst)
                if scores.worst >= min_cosine:
                    break
        if scores.worst < min_cosine:
            below = [
                f"{name} {value:.6f}" for name, value in scores.by_condition().items() if value < min_cosine
            ]
            raise QuantizationError(
                f"int8 graph is not accurate enough: min cosine to the float32 graph on {len(heldout)} "
                f"held-out recordings is below {min_cosine:g} ({', '.join(below)}) even with "
                f"{len(quantizer.candidates) - len(nodes)} of {len(quantizer.candidates)} convolutions "
                "kept in float32; nothing written. Serve the float32 graph, or calibrate with audio "
                "like the audio you will serve"
            )
        shutil.move(str(graph), int8_graph)
        kept = [n for n in quantizer.candidates if n not in nodes]
        return QuantizedGraph(nodes, kept, scores)


def _rank_by_sensitivity(quantizer: _Quantizer, held: _HeldOut) -> list[str]:
    """Candidates ordered by how much quantising each one alone lowers the worst held-out cosine."""
    loss: dict[str, float] = {}
    for i, name in enumerate(quantizer.candidates, 1):
        graph = quantizer.write([name])
        loss[name] = 1.0 - held.compare(graph).worst
        graph.unlink()
        log.info("sensitivity %d/%d %s: %.2e", i, len(quantizer.candidates), name, loss[name])
    return sorted(loss, key=loss.__getitem__, reverse=True)


def _cpu_session(graph: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])


def _embed_alone(graph: Path) -> Callable[[Float32Array], Float32Array]:
    """One clip alone (a batch of one) -> its embedding, on the CPU provider."""
    session = _cpu_session(graph)

    def embed(wave: Float32Array) -> Float32Array:
        embedding: Float32Array = session.run(None, _feed(wave))[0][0]
        return embedding

    return embed


def quantize_bundle(
    fp32_dir: Path,
    out: Path,
    split: CalibrationSet,
    *,
    min_cosine: float = DEFAULT_MIN_COSINE,
    scheme: Int8Scheme = DEFAULT_SCHEME,
) -> ModelManifest:
    """Quantise the float32 bundle in ``fp32_dir`` into ``out`` (graph + manifest).

    Nothing is written to ``out`` unless every held-out recording, in every condition, keeps a cosine of
    at least ``min_cosine`` to the float32 graph.
    """
    fp32 = load_manifest(fp32_dir)
    if fp32.precision != "fp32":
        raise QuantizationError(f"{fp32_dir}: int8 starts from a float32 graph, not {fp32.precision}")
    log.info(
        "quantising %s: %d calibration recordings (%s), %d held out (%s)",
        fp32.name,
        len(split.calibration),
        _speakers_text(split.calibration_speakers),
        len(split.heldout),
        _speakers_text(split.heldout_speakers) if split.split != "file" else "every fourth recording",
    )
    with tempfile.TemporaryDirectory(prefix="voxgate-int8-out-") as tmp:
        staged = Path(tmp) / GRAPH_FILE
        result = quantize_graph(
            fp32_dir / GRAPH_FILE,
            staged,
            [r.wave for r in split.calibration],
            [r.wave for r in split.heldout],
            min_cosine=min_cosine,
            scheme=scheme,
        )
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), out / GRAPH_FILE)
        copy_probe(fp32_dir, out, fp32)  # the self-check probe and its float32 references
        probe = fp32.probe
        if probe is not None:  # and its clips in the telephone band, the float32 graph's embeddings
            probe = add_condition_clips(
                out,
                probe,
                _embed_alone(fp32_dir / GRAPH_FILE),
                reference=f"the float32 graph {fp32.graph_sha256[:12]} on the CPU",
            )
    scores = result.scores
    worst, mean = min(scores.as_recorded), float(np.mean(scores.as_recorded))
    log.info(
        "int8 vs fp32 on held-out audio: min cosine %.6f, mean %.6f (as recorded); worst by condition: %s",
        worst,
        mean,
        ", ".join(f"{name} {value:.6f}" for name, value in scores.by_condition().items()),
    )
    manifest = fp32.model_copy(
        update={
            "precision": "int8",
            "graph_sha256": sha256_file(out / GRAPH_FILE),
            "probe": probe,
            "quantization": QuantizationInfo(
                method=method_text(scheme),
                quantized_nodes=len(result.quantized),
                float32_nodes=result.kept_float,
                calibration_recordings=len(split.calibration),
                heldout_recordings=len(split.heldout),
                min_cosine_to_fp32=worst,
                mean_cosine_to_fp32=mean,
                max_score_change=scores.max_score_change,
                scheme=scheme.name,
                heldout_split=split.split,
                calibration_speakers=split.calibration_speakers,
                heldout_speakers=split.heldout_speakers,
                min_cosine_by_condition=scores.by_condition(),
                min_cosine_gate=min_cosine,
                validated_on=this_host(),
            ),
        }
    )
    write_manifest(out, manifest)
    return manifest


def _speakers_text(speakers: Sequence[str]) -> str:
    if not speakers:
        return "no speaker folders"
    return f"{len(speakers)} speakers: {', '.join(speakers)}"
