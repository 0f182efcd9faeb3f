"""The start-up self-check: does this host still compute what the graph computed at export?

Every exported bundle carries a probe (``probe.flac``: a few seconds of real speech, and in the manifest
the embeddings the float32 model that made the graph gives each clip; see ``app.export.probe``). An int8
bundle's probe also has each clip in the telephone band, derived here from the same samples by
``app.audio.conditions`` (the rule the export's calibration and gate use), because an int8 graph's
fixed activation ranges are what narrowband speech can overrun. After
warm-up, on the engine's worker thread, the backend embeds the probe on the provider it will serve with
and compares each clip's embedding with its reference by cosine. Below the precision's threshold the
service does not become ready. A different CPU instruction set (int8 kernels without VNNI), a CUDA or
TensorRT float16 conversion, another onnxruntime version or a damaged file can change the embeddings
while every hash and shape still matches; this is what notices.

``run_selfcheck`` is the one entry point (the engine's start-up and ``voxgate selfcheck`` call it).
No torch here: this is on the serving path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from app.audio.conditions import AS_RECORDED, derive
from app.audio.decode import decode_audio
from app.core.errors import VoxGateError
from app.core.paths import sha256_file
from app.engine.backend import run_padded
from app.engine.manifest import ManifestError, ModelManifest

if TYPE_CHECKING:
    from app.engine.backend import EmbeddingBackend

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

# The thresholds, per precision of the served graph: the worst clip's cosine to the float32 reference.
# fp32: the graph is the reference model's own arithmetic; providers, kernels and summation orders move
# the embedding by ~1e-6 (cosine 1 - 1e-7 measured), a changed weight or a broken kernel by far more.
FP32_MIN_COSINE = 0.9999
# fp16: half-precision encoders keep a cosine of ~0.99999 to float32; 0.999 leaves room for the
# provider's own fp16 kernels (cuDNN, TensorRT) and still refuses a graph that has gone wrong.
FP16_MIN_COSINE = 0.999
# int8: the export measured the worst cosine to float32 on held-out speech in each condition
# (``quantization.min_cosine_by_condition``); each probe clip is held to its condition's minimum. The probe
# is other speech, so it may land a little below that minimum on a host that runs the graph exactly as
# the export machine did. A host whose int8 kernels differ (e.g. saturating u8 x s8 products without
# VNNI) falls far below it.
INT8_MARGIN = 0.005


class SelfCheckFailed(RuntimeError):
    """The graph did not reproduce its probe's reference embeddings here: do not serve with it."""

    def __init__(self, result: SelfCheckResult) -> None:
        super().__init__(result.line())
        self.result = result


@dataclass(frozen=True)
class SelfCheckResult:
    model: str
    provider: str
    precision: str
    passed: bool | None  # None: not checked (the bundle has no probe)
    cosine: float | None  # the worst clip's cosine to its reference (the clip closest to its threshold)
    threshold: float | None  # that clip's threshold
    clips: int
    seconds: float
    detail: str
    condition: str | None = None  # that clip's condition, when the probe has derived clips

    def _worst(self) -> str:
        where = f": {self.condition}" if self.condition else ""
        return f"worst of {self.clips} probe clips{where}"

    def line(self) -> str:
        """The one line that says what was checked and what came out."""
        where = f"model {self.model} on {self.provider} ({self.precision})"
        if self.passed is None:
            return f"self-check skipped: {where}: {self.detail}"
        if self.passed:
            return (
                f"self-check passed: {where}: cosine {self.cosine:.7f} >= {self.threshold:g} "
                f"({self._worst()})"
            )
        return (
            f"self-check FAILED: {where}: cosine {self.cosine:.7f} < {self.threshold:g} ({self._worst()}): "
            f"{self.detail}"
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def threshold_for(manifest: ModelManifest, condition: str | None = None) -> float:
    """The cosine a probe clip in ``condition`` (None: as stored) must reach for a graph of this precision.

    int8: the export's minimum for that condition less ``INT8_MARGIN``; bundles made before the
    condition was measured have only the minimum as recorded, which then stands for every clip.
    """
    if manifest.precision == "fp32":
        return FP32_MIN_COSINE
    if manifest.precision == "fp16":
        return FP16_MIN_COSINE
    info = manifest.quantization
    if info is None:
        raise ManifestError("int8 manifest without its quantization figures (min_cosine_to_fp32)")
    measured = info.min_cosine_by_condition.get(condition or AS_RECORDED, info.min_cosine_to_fp32)
    return measured - INT8_MARGIN


def read_probe_clips(path: Path, sample_rate: int, bounds: Sequence[tuple[int, int]]) -> list[Float32Array]:
    """The probe's clips (``[start, end)`` sample ranges), decoded as the service decodes uploads.

    The exporter computes the references from these same samples.
    """
    try:
        audio = decode_audio(path.read_bytes())
    except (OSError, VoxGateError) as exc:
        raise ManifestError(f"{path}: cannot read the self-check probe: {exc}") from exc
    if audio.source_sample_rate != sample_rate:
        raise ManifestError(f"{path}: {audio.source_sample_rate} Hz, the manifest's probe says {sample_rate}")
    wave = audio.waveform
    clips = []
    for start, end in bounds:
        if end > wave.shape[0]:
            raise ManifestError(
                f"{path}: probe clip [{start}, {end}) lies past its end ({wave.shape[0]} samples)"
            )
        clips.append(np.ascontiguousarray(wave[start:end]))
    return clips


def _load_probe(
    model_dir: Path, manifest: ModelManifest
) -> tuple[list[Float32Array], npt.NDArray[np.float64]]:
    probe = manifest.probe
    assert probe is not None
    path = model_dir / probe.file
    if not path.is_file():
        raise ManifestError(f"no {probe.file} in {model_dir} (the manifest lists a self-check probe)")
    actual = sha256_file(path)
    if actual != probe.sha256:
        raise ManifestError(
            f"{path}: sha256 {actual[:16]}... does not match the manifest's probe {probe.sha256[:16]}... "
            "(swapped or damaged probe)"
        )
    if probe.sample_rate != manifest.sample_rate:
        raise ManifestError(f"probe at {probe.sample_rate} Hz, the graph takes {manifest.sample_rate} Hz")
    references = np.array([clip.reference for clip in probe.clips], dtype=np.float64)
    if references.shape[1] != manifest.embedding_dim:
        raise ManifestError(
            f"probe references have {references.shape[1]} dimensions, the graph {manifest.embedding_dim}"
        )
    stored = read_probe_clips(path, probe.sample_rate, [(c.start, c.end) for c in probe.clips])
    try:
        clips = [
            wave if clip.condition is None else derive(clip.condition, wave)
            for clip, wave in zip(probe.clips, stored, strict=True)
        ]
    except (ValueError, VoxGateError) as exc:
        raise ManifestError(f"{path}: cannot derive a probe clip: {exc}") from exc
    return clips, references


def _embed_clips(backend: EmbeddingBackend, clips: list[Float32Array]) -> npt.NDArray[np.float64]:
    """All clips as one batch padded to the backend's length bucket, as the batcher runs requests."""
    embeddings, _ = run_padded(backend, clips)
    return np.asarray(embeddings, dtype=np.float64)


def _cosines(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    with np.errstate(invalid="ignore", divide="ignore"):
        cos: npt.NDArray[np.float64] = np.sum(a * b, axis=1) / (
            np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        )
    return cos


def run_selfcheck(
    backend: EmbeddingBackend, manifest: ModelManifest, model_dir: Path | None
) -> SelfCheckResult:
    """Embed the bundle's probe on ``backend`` and compare with its reference embeddings.

    Returns the result when it passed, or when the bundle has no probe (skipped, logged as a warning);
    raises ``SelfCheckFailed`` when the worst clip's cosine is below ``threshold_for(manifest)`` (or not
    finite), and ``ManifestError`` when the probe is missing, swapped or damaged. Runs inference: call it
    on the backend's thread, never on the event loop.
    """
    model, provider, precision = manifest.model_key(), backend.provider, manifest.precision
    if manifest.probe is None or model_dir is None:
        detail = (
            "the bundle has no probe (exported before probes existed): its graph is served unchecked; "
            "re-export it to check it at start-up"
            if manifest.probe is None
            else "no model directory given, so no probe to embed"
        )
        result = SelfCheckResult(model, provider, precision, None, None, None, 0, 0.0, detail)
        log.warning(result.line())
        return result
    started = time.perf_counter()
    clips, references = _load_probe(model_dir, manifest)
    conditions = [clip.condition for clip in manifest.probe.clips]
    thresholds = np.array([threshold_for(manifest, condition) for condition in conditions])
    cosines = _cosines(_embed_clips(backend, clips), references)
    # The clip closest to (or furthest below) its threshold; a NaN cosine is the worst of all.
    index = int(np.argmin(np.nan_to_num(cosines - thresholds, nan=-np.inf)))
    worst, threshold = float(cosines[index]), float(thresholds[index])
    passed = bool(np.isfinite(cosines).all() and (cosines >= thresholds).all())
    detail = (
        f"references from {manifest.probe.reference_model}"
        if passed
        else "this host does not compute what the graph computed at export; not serving it"
    )
    result = SelfCheckResult(
        model,
        provider,
        precision,
        passed,
        worst,
        threshold,
        len(clips),
        time.perf_counter() - started,
        detail,
        # Named only when the probe has derived clips: a plain probe's line stays as it was.
        (conditions[index] or AS_RECORDED) if any(conditions) else None,
    )
    if not passed:
        log.error(result.line())
        raise SelfCheckFailed(result)
    log.info(result.line(), extra={"cosine": worst, "threshold": threshold, "seconds": result.seconds})
    return result
