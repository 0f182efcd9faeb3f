"""Export Resemblyzer's pretrained GE2E encoder (``resemblyzer/pretrained.pt``) to a VoxGate bundle.

The graph is ``app.modeling.ge2e.GE2EEmbedder``: raw 16 kHz audio and true lengths in, Resemblyzer's
L2-normalised utterance embedding out (volume normalisation, mel front end, partial windows and their
averaging all inside the graph). models/README.md records how models/default was produced with this.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from app.core.paths import sha256_file
from app.engine.manifest import ModelManifest
from app.export.onnx_common import export_bundle
from app.export.probe import EmbedClip, torch_reference, write_probe
from app.modeling.ge2e import EMBEDDING_DIM, GE2EEmbedder

log = logging.getLogger(__name__)

DEFAULT_NAME = "resemblyzer-ge2e"
ARCHITECTURE = "ge2e-lstm"
# Equal-error-rate threshold of this graph on shared/data/speech/trials.txt (189 same-speaker, 189
# different-speaker trials, 7 speakers): the midpoint of the cosine interval in which false accepts and
# false rejects are closest, rounded to 2 decimals. tests/modeling/test_resemblyzer_model.py recomputes it.
DEFAULT_THRESHOLD = 0.75
THRESHOLD_SOURCE = (
    "EER threshold of this graph on shared/data/speech/trials.txt (378 trials, 7 speakers, LibriSpeech "
    "test-other + VCTK, same-session positives): midpoint of the cosine interval where false-accept and "
    "false-reject rates are closest, rounded to 2 decimals"
)
# Resemblyzer counts a trailing 1.6 s window once 75 % of it is audio, i.e. 1.2 s; with less speech the
# embedding rests on one mostly zero-padded window.
MIN_SPEECH_SECONDS = 1.2
# The graph itself handles any length (Resemblyzer's windows every 0.77 s, averaged), so up to 30 s the
# service's embedding is exactly Resemblyzer's. Longer recordings are cut into 30 s segments whose
# embeddings the service averages, weighted by speech: that bounds one batch item's work (39 windows), so
# a 5-minute upload padded into a batch does not make every short request in it pay for 390 windows.
SEGMENT_SECONDS = 30.0
LICENSE = "Apache-2.0"
ATTRIBUTION = (
    "Resemblyzer by Resemble AI (https://github.com/resemble-ai/Resemblyzer, PyPI resemblyzer 0.1.4, "
    "pretrained.pt), Apache License 2.0. Speaker encoder after Wan et al., 'Generalized End-to-End Loss "
    "for Speaker Verification', ICASSP 2018 (arXiv:1710.10467)."
)


def load_pretrained(path: Path) -> GE2EEmbedder:
    """A GE2EEmbedder holding the weights of a Resemblyzer ``pretrained.pt`` (``{"model_state": ...}``)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
        raise ValueError(f"{path}: not a Resemblyzer checkpoint (no 'model_state')")
    model = GE2EEmbedder()
    model.load_resemblyzer_state(checkpoint["model_state"])
    return model.eval()


def export_resemblyzer(
    path: Path, out: Path, *, precision: str = "fp32", name: str | None = None
) -> ModelManifest:
    """Write ``out/model.onnx`` and ``out/manifest.json`` for the GE2E encoder in ``path``."""
    if precision != "fp32":
        # ONNX Runtime's CPU provider has no float16 LSTM kernel, so an fp16 graph would run on GPU only,
        # and none was at hand to validate it; the fp32 graph is ~5.7 MB and runs everywhere.
        raise ValueError(
            f"precision {precision!r} is not supported for the Resemblyzer GE2E graph: export fp32 "
            "(ONNX Runtime has no float16 LSTM on CPU, and an fp16 variant has not been validated on GPU)"
        )
    path = Path(path)
    model = load_pretrained(path)
    embed_clip, reference_model = _probe_reference(path, model)
    probe = write_probe(Path(out), embed_clip, reference_model=reference_model)
    manifest = export_bundle(
        model,
        Path(out),
        name=name or DEFAULT_NAME,
        architecture=ARCHITECTURE,
        source=f"resemblyzer 0.1.4 {path.name}",
        source_sha256=sha256_file(path),
        embedding_dim=EMBEDDING_DIM,
        precision="fp32",
        default_threshold=DEFAULT_THRESHOLD,
        threshold_source=THRESHOLD_SOURCE,
        min_speech_seconds=MIN_SPEECH_SECONDS,
        segment_seconds=SEGMENT_SECONDS,
        segment_overlap_seconds=0.0,
        license=LICENSE,
        attribution=ATTRIBUTION,
        probe=probe,
    )
    log.info("exported %s (%s) to %s", manifest.name, ARCHITECTURE, out)
    return manifest


def _probe_reference(path: Path, model: GE2EEmbedder) -> tuple[EmbedClip, str]:
    """What computes the self-check probe's reference embeddings: Resemblyzer's own encoder on the same
    weights (the ``reference`` extra) when it is installed, else the float32 PyTorch module traced here."""
    try:
        from resemblyzer import VoiceEncoder, normalize_volume
    except ImportError:
        log.warning("resemblyzer not installed: the probe's references come from the traced PyTorch module")
        return torch_reference(model), f"GE2EEmbedder, PyTorch float32 eager (torch {torch.__version__})"
    encoder = VoiceEncoder("cpu", verbose=False, weights_fpath=path)

    def embed(wave: npt.NDArray[np.float32]) -> npt.ArrayLike:
        # The graph's own volume normalisation, then Resemblyzer's embed_utterance (no silence trimming).
        result: npt.ArrayLike = encoder.embed_utterance(normalize_volume(wave, -30, increase_only=True))
        return result

    version = importlib.metadata.version("resemblyzer")
    return embed, (
        f"resemblyzer {version} VoiceEncoder('cpu').embed_utterance(normalize_volume(wav, -30, "
        f"increase_only=True)) on {path.name}, float32 (torch {torch.__version__})"
    )
