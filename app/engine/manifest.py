"""The model contract: what an exported graph promises, written next to it as ``manifest.json``.

Export writes it; the serving side reads it and refuses a graph that disagrees with it
(``check_graph_io``). Kept free of torch and onnxruntime so both sides can use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.paths import sha256_file

MANIFEST_FILE = "manifest.json"
GRAPH_FILE = "model.onnx"
PROBE_FILE = "probe.flac"
MANIFEST_FORMAT = 1

# The graph interface every VoxGate model exports (names are part of the contract).
AUDIO_INPUT = "audio"
LENGTHS_INPUT = "lengths"
EMBEDDING_OUTPUT = "embedding"


class ManifestError(ValueError):
    """The manifest is missing, malformed, or disagrees with its graph."""


class ValidationHost(BaseModel):
    """The machine an int8 graph's accuracy was measured on (by the export, on the CPU provider)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    machine: str = Field(description="platform.machine(), e.g. x86_64, aarch64.")
    cpu_model: str | None = Field(None, description="/proc/cpuinfo 'model name', when there is one.")
    cpu_flags: list[str] = Field(
        default_factory=list,
        description="The instruction-set features that select ONNX Runtime's int8 kernels (avx2, "
        "avx512f/bw, avx512_vnni, avx_vnni, amx_int8, ... as /proc/cpuinfo names them) this CPU has.",
    )
    onnxruntime: str = Field(description="ONNX Runtime version that ran the measurement.")


class QuantizationInfo(BaseModel):
    """How an int8 graph was made from its float32 graph, and what it costs in accuracy.

    Fields after ``max_score_change`` were added later; their defaults describe the bundles written
    before them (8-bit u8 x s8 weights, every fourth recording held out, no record of the host).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    quantized_nodes: int = Field(ge=1)
    float32_nodes: list[str] = Field(
        default_factory=list, description="Encoder convolutions kept in float32 (too sensitive)."
    )
    calibration_recordings: int = Field(ge=1)
    heldout_recordings: int = Field(ge=1)
    min_cosine_to_fp32: float = Field(
        description="Worst cosine to the float32 graph over the held-out recordings as recorded."
    )
    mean_cosine_to_fp32: float
    max_score_change: float = Field(
        description="Largest change of a cosine score between two held-out recordings, fp32 -> int8."
    )
    scheme: Literal["u8s8-7bit", "u8s8", "u8u8", "s8s8"] = Field(
        "u8s8",
        description="Integer formats of activations x weights: 'u8s8-7bit' (uint8 x 7-bit int8 weights, "
        "exact on every x86-64 int8 kernel) or 'u8s8' (8-bit weights: saturates on CPUs without VNNI).",
    )
    heldout_split: Literal["speaker", "heldout-audio", "file"] = Field(
        "file",
        description="How the held-out recordings were chosen: whole speakers of the calibration audio, "
        "a separate --heldout-audio set, or (no speaker folders) every fourth file.",
    )
    calibration_speakers: list[str] = Field(default_factory=list)
    heldout_speakers: list[str] = Field(
        default_factory=list, description="Speakers (folder names) never used for calibration."
    )
    min_cosine_by_condition: dict[str, float] = Field(
        default_factory=dict,
        description="Worst cosine to float32 per condition of the held-out recordings (app.export."
        "conditions: as recorded, telephone band, -20 dB, clipped, noise at 10 dB SNR; bundles made "
        "before the telephone band and noise have the first, third and fourth); every one met the gate.",
    )
    min_cosine_gate: float | None = Field(None, description="The export's --min-cosine.")
    validated_on: ValidationHost | None = Field(None, description="Where the figures were measured.")


class ProbeClip(BaseModel):
    """One clip of the probe audio and the embedding the float32 reference model gives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int = Field(ge=0, description="First sample of the clip in the probe file.")
    end: int = Field(gt=0, description="One past the clip's last sample.")
    source: str = Field(description="Where the clip's speech comes from (corpus, utterance, licence).")
    reference: tuple[float, ...] = Field(
        min_length=1, description="The reference model's (raw, not normalised) embedding of the clip alone."
    )
    condition: str | None = Field(
        default=None,
        description="The recording condition (app.audio.conditions, e.g. 'telephone band') the clip is "
        "derived in from the probe's samples [start, end) before it is embedded; None: as stored.",
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> ProbeClip:
        if self.end <= self.start:
            raise ValueError(f"probe clip [{self.start}, {self.end}) is empty")
        return self


class ProbeInfo(BaseModel):
    """The start-up self-check's probe: real speech stored beside the graph, and what it must embed to.

    Not part of the model key: the key names the graph, and the probe only checks that a host still runs
    that graph as it ran at export (``app.engine.selfcheck``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(
        default=PROBE_FILE,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="The probe audio (16-bit FLAC), a file name beside model.onnx.",
    )
    sha256: str = Field(description="sha256 of the probe file: a swapped or damaged probe is refused.")
    sample_rate: int = Field(gt=0)
    clips: tuple[ProbeClip, ...] = Field(min_length=1)
    reference_model: str = Field(description="The float32 model that computed the reference embeddings.")
    attribution: str = Field(description="Where the probe's speech comes from, and its licence.")


# --- accuracy: calibration and score normalisation (voxgate calibrate / cohort build) ---------------
class ScoreCalibration(BaseModel):
    """A threshold (and an LLR calibration) measured by ``voxgate calibrate`` for one score type.

    Calibration changes no embedding: it is not part of the model key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    score_type: Literal["cosine", "asnorm"]
    threshold: float = Field(description="Decision threshold, in the units of score_type.")
    target: str = Field(description="How the threshold was chosen: 'eer' or 'far=<rate>'.")
    far: float = Field(description="False-accept rate at the threshold on the calibration trials.")
    frr: float = Field(description="False-reject rate at the threshold on the calibration trials.")
    eer: float = Field(description="Equal error rate of the calibration trials.")
    llr_scale: float = Field(description="llr = llr_scale * score + llr_offset (natural log).")
    llr_offset: float
    llr_prior: float = Field(0.5, description="Target prior the logistic regression was weighted with.")
    trials_file: str = Field(description="The trials file (as given to voxgate calibrate).")
    trials_sha256: str
    target_trials: int = Field(ge=1)
    nontarget_trials: int = Field(ge=1)
    skipped_trials: int = Field(0, ge=0, description="Trials left out because a file was refused.")
    refused_files: dict[str, int] = Field(default_factory=dict, description="Refused files by reason code.")
    min_speech_seconds: float = Field(description="The speech gate the files went through.")
    asnorm_top_n: int | None = None
    cohort_sha256: str | None = Field(None, description="The cohort an asnorm calibration was measured with.")
    created: str = Field(description="When (UTC, ISO 8601).")
    tool: str = Field(description="Tool and version that measured it.")


class CohortInfo(BaseModel):
    """The AS-Norm cohort stored beside the graph (``voxgate cohort build``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field("cohort.npy", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
    sha256: str
    speakers: int = Field(ge=2, description="Rows: one unit-length mean embedding per cohort speaker.")
    recordings: int = Field(ge=2)
    top_n: int = Field(100, ge=2, description="Cohort scores AS-Norm averages per side (default).")
    source: str = Field(description="Where the cohort's recordings came from (as given).")
    created: str
    tool: str


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = MANIFEST_FORMAT
    name: str = Field(description="Model name, used to namespace stored embeddings.")
    architecture: str = Field(description="e.g. titanet-large, ecapa_tdnn, speakernet, ge2e")
    source: str = Field(description="Where the weights came from (checkpoint file, hub id, random init).")
    source_sha256: str | None = Field(None, description="sha256 of the source checkpoint file.")
    graph_sha256: str = Field(description="sha256 of model.onnx, checked at load time.")
    sample_rate: int = 16000
    embedding_dim: int = Field(gt=0)
    input_names: tuple[str, str] = (AUDIO_INPUT, LENGTHS_INPUT)
    output_names: tuple[str] = (EMBEDDING_OUTPUT,)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    quantization: QuantizationInfo | None = Field(None, description="Set for int8 graphs.")
    probe: ProbeInfo | None = Field(
        None, description="Self-check probe (absent in bundles exported before probes existed)."
    )
    opset: int
    default_threshold: float = Field(ge=-1.0, le=1.0, description="Cosine threshold for a match.")
    threshold_source: str = Field(description="Where default_threshold comes from.")
    min_speech_seconds: float = Field(ge=0.0)
    segment_seconds: float | None = Field(
        None, description="Audio longer than this is cut into segments whose embeddings are averaged."
    )
    segment_overlap_seconds: float = 0.0
    license: str | None = None
    attribution: str | None = None
    exporter: str = Field(description="Tool and version that wrote the graph.")
    # --- accuracy (written by voxgate calibrate / cohort build; none of them changes the model key) ---
    calibration: dict[Literal["cosine", "asnorm"], ScoreCalibration] = Field(
        default_factory=dict, description="Measured thresholds and LLR calibrations, by score type."
    )
    cohort: CohortInfo | None = Field(None, description="AS-Norm cohort beside the graph.")
    drop_non_speech: bool = Field(
        False,
        description="Embed only the VAD's speech regions (non-speech dropped). It changes embeddings, so it "
        "is part of the model key. Off unless measured to help the model (docs/accuracy.md).",
    )

    def model_key(self) -> str:
        """Stable identity for storage namespacing: name plus the first bytes of the graph hash (and a
        suffix when the embeddings are of the speech regions only)."""
        key = f"{self.name}@{self.graph_sha256[:12]}"
        return key + "+speech" if self.drop_non_speech else key


def write_manifest(model_dir: Path, manifest: ModelManifest) -> Path:
    path = model_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path


def load_manifest(model_dir: Path, *, verify_graph_hash: bool = True) -> ModelManifest:
    path = model_dir / MANIFEST_FILE
    graph = model_dir / GRAPH_FILE
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_FILE} in {model_dir}")
    if not graph.is_file():
        raise ManifestError(f"no {GRAPH_FILE} in {model_dir}")
    try:
        manifest = ModelManifest.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ManifestError(f"{path}: invalid manifest: {exc}") from exc
    if verify_graph_hash:
        actual = sha256_file(graph)
        if actual != manifest.graph_sha256:
            raise ManifestError(
                f"{graph}: sha256 {actual[:16]}... does not match "
                f"the manifest's {manifest.graph_sha256[:16]}..."
            )
    return manifest


def check_graph_io(
    manifest: ModelManifest,
    inputs: Sequence[tuple[str, Sequence[int | str | None]]],
    outputs: Sequence[tuple[str, Sequence[int | str | None]]],
) -> None:
    """Refuse a graph whose inputs/outputs disagree with the manifest.

    ``inputs``/``outputs`` are (name, shape) pairs as ONNX Runtime reports them
    (symbolic dims are strings or None).
    """
    in_names = [name for name, _ in inputs]
    out_names = [name for name, _ in outputs]
    if list(in_names) != list(manifest.input_names):
        raise ManifestError(f"graph inputs {in_names} != manifest {list(manifest.input_names)}")
    if list(out_names) != list(manifest.output_names):
        raise ManifestError(f"graph outputs {out_names} != manifest {list(manifest.output_names)}")
    audio_shape = list(inputs[0][1])
    lengths_shape = list(inputs[1][1])
    if len(audio_shape) != 2 or len(lengths_shape) != 1:
        raise ManifestError(
            f"graph input ranks {audio_shape}, {lengths_shape}: want [batch, samples], [batch]"
        )
    emb_shape = list(outputs[0][1])
    if len(emb_shape) != 2:
        raise ManifestError(f"graph output shape {emb_shape}: want [batch, dim]")
    if isinstance(emb_shape[1], int) and emb_shape[1] != manifest.embedding_dim:
        raise ManifestError(f"graph embedding dim {emb_shape[1]} != manifest {manifest.embedding_dim}")
