"""Export NeMo speaker models (TitaNet, ECAPA-TDNN, SpeakerNet) to VoxGate ONNX bundles.

The graph takes raw 16 kHz audio and true lengths and returns NeMo's (un-normalised) embedding: the log-mel
front end is inside the graph, and every layer masks with the true lengths, so a padded batch gives each
utterance the embedding NeMo gives it alone (NeMo's own ``export()`` takes features and drops the masks).

``precision="fp16"``: the front end stays float32 (power spectra exceed the fp16 range), the encoder and
decoder run in float16, pooling statistics and the SE averages are accumulated in float32; graph inputs
and output stay float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from app.engine.manifest import ModelManifest
from app.export.onnx_common import export_bundle
from app.export.probe import torch_reference, write_probe
from app.modeling.nemo_archive import load_config
from app.modeling.speaker_model import SpeakerModel, build_speaker_model, init_like_nemo, load_nemo_model

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16"]

# NeMo EncDecSpeakerLabelModel.verify_speakers: L2-normalise both embeddings, then "same speaker" when
# (cosine + 1) / 2 >= 0.7, i.e. cosine >= 0.4.
NEMO_VERIFY_THRESHOLD = 0.7
DEFAULT_THRESHOLD = 2 * NEMO_VERIFY_THRESHOLD - 1
THRESHOLD_SOURCE = (
    "NVIDIA NeMo EncDecSpeakerLabelModel.verify_speakers default: same speaker when "
    "(cosine + 1) / 2 >= 0.7 on L2-normalised embeddings, i.e. cosine >= 0.4 (not calibrated on our data)"
)
# Below about a second of speech, speaker embeddings of these models are unreliable.
MIN_SPEECH_SECONDS = 1.0
# NeMo embeds a whole utterance in one pass (get_embedding / verify_speakers); these graphs do the same up
# to 30 s, so results match NeMo for every utterance up to that length. Longer audio is cut into 30 s
# segments whose embeddings are averaged: it bounds the work of one batch item without changing typical
# verification inputs (a few seconds to tens of seconds).
SEGMENT_SECONDS = 30.0

CONFIG_PACKAGE = "app.modeling.configs"
RANDOM_INIT_CONFIGS = {
    "titanet-large": "titanet-large.yaml",
    "titanet-medium": "titanet-medium.yaml",
    "titanet-small": "titanet-small.yaml",
    "ecapa_tdnn": "ecapa_tdnn.yaml",
    "speakernet": "SpeakerNet_verification_3x2x256.yaml",
}


class EmbeddingGraph(nn.Module):
    """``forward(audio [B, N] f32, lengths [B] i64) -> embedding [B, D] f32``: what gets exported."""

    def __init__(self, model: SpeakerModel, precision: Precision = "fp32") -> None:
        super().__init__()
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, not {precision!r}")
        self.model = model.eval()
        # 2-D convolutions of unit height: ORT's CPU NCHWc kernels (see app.modeling.conv_asr, Layout).
        model.encoder.frames_as_width = True
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision == "fp16":
            model.encoder.half()
            model.decoder.half()

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats = self.model.features(audio, lengths)  # always float32
        encoded = self.model.encode(feats.feats.to(self.dtype), feats.lengths, feats.padded_lengths)
        _, embedding = self.model.decode(encoded, feats.lengths)
        return embedding.to(torch.float32)


@dataclass(frozen=True)
class SourceInfo:
    name: str
    source: str
    source_sha256: str | None = None
    license: str | None = None
    attribution: str | None = None


def export_model(model: SpeakerModel, out: Path, *, precision: Precision, info: SourceInfo) -> ModelManifest:
    # The self-check probe's references come from the float32 model, before an fp16 graph halves it.
    probe = write_probe(
        out,
        torch_reference(EmbeddingGraph(model, "fp32")),
        reference_model=f"{model.architecture}, PyTorch float32 eager (torch {torch.__version__})",
    )
    graph = EmbeddingGraph(model, precision)
    manifest = export_bundle(
        graph,
        out,
        name=info.name,
        architecture=model.architecture,
        source=info.source,
        source_sha256=info.source_sha256,
        embedding_dim=model.embedding_dim,
        precision=precision,
        default_threshold=DEFAULT_THRESHOLD,
        threshold_source=THRESHOLD_SOURCE,
        min_speech_seconds=MIN_SPEECH_SECONDS,
        segment_seconds=SEGMENT_SECONDS,
        segment_overlap_seconds=0.0,
        license=info.license,
        attribution=info.attribution,
        probe=probe,
    )
    log.info("exported %s (%s, %s) to %s", info.name, model.architecture, precision, out)
    return manifest


def export_nemo_checkpoint(
    nemo_path: Path,
    out: Path,
    *,
    precision: str,
    name: str | None,
    source: str | None = None,
    license: str | None = None,
    attribution: str | None = None,
) -> ModelManifest:
    """Export a ``.nemo`` checkpoint (weights loaded strictly) to ``out/model.onnx`` + manifest."""
    loaded = load_nemo_model(nemo_path)
    info = SourceInfo(
        name=name or nemo_path.stem,
        source=source or f"NeMo checkpoint {nemo_path.name}",
        source_sha256=loaded.archive.sha256,
        license=license,
        attribution=attribution,
    )
    return export_model(loaded.model, out, precision=_precision(precision), info=info)


def random_init_config(arch: str) -> dict[str, Any]:
    """The official NeMo config shipped in ``app/modeling/configs`` for ``arch`` (resolved)."""
    if arch not in RANDOM_INIT_CONFIGS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(RANDOM_INIT_CONFIGS)}")
    with resources.as_file(resources.files(CONFIG_PACKAGE) / RANDOM_INIT_CONFIGS[arch]) as path:
        return load_config(path)


def build_random_init(arch: str, seed: int = 0) -> SpeakerModel:
    model = build_speaker_model(random_init_config(arch))
    init_like_nemo(model, seed=seed)
    return model.eval()


def export_random_init(arch: str, out: Path, *, precision: str, name: str | None) -> ModelManifest:
    """Export an untrained full-size model (NeMo's initialisation, seed 0): for benchmarks only."""
    model = build_random_init(arch)
    info = SourceInfo(
        name=name or f"{arch}-random",
        source=f"random init (seed 0), NeMo config {RANDOM_INIT_CONFIGS[arch]}: untrained, benchmarks only",
    )
    return export_model(model, out, precision=_precision(precision), info=info)


def _precision(value: str) -> Precision:
    if value == "fp32":
        return "fp32"
    if value == "fp16":
        return "fp16"
    raise ValueError(f"precision must be fp32 or fp16, not {value!r}")
