"""Writing what a measurement found into the model's bundle: the decision threshold (and a logistic-
regression LLR calibration) of ``voxgate calibrate``, and the AS-Norm cohort of ``voxgate cohort build``.
Neither changes an embedding, so neither changes the model key (stored voiceprints stay valid)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app import __version__
from app.accuracy.measurement import Measurement, measuring_policy, tool_settings, with_engine
from app.accuracy.metrics import compute_metrics, eer, frr_at_far
from app.accuracy.trials import Embedded, embed_files
from app.core.paths import sha256_file
from app.core.vectors import normalize_rows
from app.engine.engine import EmbeddingEngine
from app.engine.manifest import CohortInfo, ModelManifest, ScoreCalibration, load_manifest, write_manifest
from app.speakers.scoring import LlrCalibration, ScoreType, fit_llr

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")
# Below this many cohort speakers AS-Norm statistics are noise (WeSpeaker uses the top 100 of thousands).
COHORT_ADVISED_SPEAKERS = 200
COHORT_FILE = "cohort.npy"
TOOL = f"voxgate {__version__}"


class CalibrationError(ValueError):
    """The measurement cannot calibrate anything (one line for the operator)."""


# --- voxgate calibrate ---------------------------------------------------------------------------------
def choose_threshold(
    target: np.ndarray, nontarget: np.ndarray, target_far: float | None
) -> tuple[float, str]:
    if target_far is None:
        _, threshold = eer(target, nontarget)
        return threshold, "eer"
    return frr_at_far(target, nontarget, target_far).threshold, f"far={target_far:g}"


@dataclass(frozen=True)
class Calibrated:
    model_key: str
    score_type: ScoreType
    calibration: ScoreCalibration
    llr: LlrCalibration
    nontarget_trials: int


def calibrate(
    m: Measurement, model_dir: Path, trials: Path, target_far: float | None, score_type: ScoreType
) -> Calibrated:
    """The threshold for ``target_far`` (or at the EER) and the LLR fit of ``score_type`` on the
    measurement, written into the manifest in ``model_dir`` (the cosine one also as its default)."""
    tar, non = m.scores.split(score_type)
    if tar.size == 0 or non.size == 0:
        raise CalibrationError(
            "calibration needs same-speaker and different-speaker trials that could be scored"
        )
    threshold, target = choose_threshold(tar, non, target_far)
    metrics = compute_metrics(score_type, tar, non, threshold, target)
    assert metrics.threshold is not None
    llr = fit_llr(tar, non)
    manifest = load_manifest(model_dir)  # as on disk (measure() may have copied it)
    key = manifest.model_key()
    calibration = ScoreCalibration(
        score_type=score_type,
        threshold=round(threshold, 6),
        target=target,
        far=metrics.threshold.far,
        frr=metrics.threshold.frr,
        eer=metrics.eer,
        llr_scale=llr.scale,
        llr_offset=llr.offset,
        llr_prior=0.5,
        trials_file=str(trials),
        trials_sha256=sha256_file(trials),
        target_trials=int(tar.size),
        nontarget_trials=int(non.size),
        skipped_trials=m.scores.skipped,
        refused_files=m.embedded.refused_counts(),
        min_speech_seconds=m.policy.min_speech_seconds,
        asnorm_top_n=m.cohort.effective_top_n if m.cohort is not None else None,
        cohort_sha256=manifest.cohort.sha256
        if score_type == "asnorm" and manifest.cohort is not None
        else None,
        created=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        tool=TOOL,
    )
    updates: dict[str, Any] = {"calibration": {**manifest.calibration, score_type: calibration}}
    if score_type == "cosine":
        updates["default_threshold"] = calibration.threshold
        updates["threshold_source"] = (
            f"voxgate calibrate ({target}) on {trials} ({tar.size} same-speaker + {non.size} "
            f"different-speaker trials, {calibration.created}); see calibration.cosine"
        )
    updated = ModelManifest.model_validate({**manifest.model_dump(), **updates})
    if updated.model_key() != key:  # calibration changes no embedding, so never the namespace
        raise AssertionError(f"model key changed: {key} -> {updated.model_key()}")
    write_manifest(model_dir, updated)
    return Calibrated(key, score_type, calibration, llr, int(non.size))


# --- voxgate cohort build ------------------------------------------------------------------------------
def cohort_files(root: Path) -> dict[str, list[str]]:
    """Each immediate sub-folder of ``root`` is a speaker; its audio files (recursively), relative to root."""
    speakers: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        found = sorted(
            f.relative_to(root).as_posix()
            for f in folder.rglob("*")
            if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES
        )
        if found:
            speakers[folder.name] = found
    return speakers


def speaker_means(
    embedded: Embedded, speakers: Mapping[str, Sequence[str]], min_files: int
) -> dict[str, np.ndarray]:
    means = {}
    for speaker, names in speakers.items():
        vectors = [e for n in names if (e := embedded.embedding(n)) is not None]
        if len(vectors) >= min_files:
            means[speaker] = normalize_rows(np.mean(np.stack(vectors), axis=0))[0]
    return means


@dataclass(frozen=True)
class BuiltCohort:
    model_key: str
    info: CohortInfo
    path: Path
    refused: dict[str, int]
    dropped_asnorm_calibration: bool


def build_cohort(
    root: Path, model_dir: Path, speakers: Mapping[str, Sequence[str]], top_n: int, min_files: int
) -> BuiltCohort:
    """Embed every speaker's recordings, keep their mean embeddings as ``cohort.npy`` beside the model
    and record the cohort in the manifest (dropping an AS-Norm calibration made with another cohort)."""
    settings = tool_settings(model_dir)
    manifest = load_manifest(model_dir)
    names = [n for files in speakers.values() for n in files]
    policy = measuring_policy(settings, manifest, None)

    async def work(engine: EmbeddingEngine) -> Embedded:
        return await embed_files(engine, names, root, policy, settings)

    embedded = asyncio.run(with_engine(settings, work))
    means = speaker_means(embedded, speakers, min_files)
    if len(means) < 2:
        raise CalibrationError("fewer than 2 speakers had usable recordings")
    matrix = np.stack([means[s] for s in sorted(means)]).astype(np.float32)
    info = CohortInfo(
        file=COHORT_FILE,
        sha256="",
        speakers=matrix.shape[0],
        recordings=sum(1 for r in embedded.files.values() if r.embedding is not None),
        top_n=top_n,
        source=str(root),
        created=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        tool=TOOL,
    )
    path = model_dir / info.file
    np.save(path, matrix, allow_pickle=False)
    info = info.model_copy(update={"sha256": sha256_file(path)})
    key = manifest.model_key()
    # An AS-Norm threshold measured with another cohort no longer holds: dropped (calibrate again).
    calibration = {k: v for k, v in manifest.calibration.items() if k != "asnorm"}
    updated = ModelManifest.model_validate(
        {**manifest.model_dump(), "cohort": info, "calibration": calibration}
    )
    assert updated.model_key() == key
    write_manifest(model_dir, updated)
    return BuiltCohort(key, info, path, embedded.refused_counts(), "asnorm" in manifest.calibration)
