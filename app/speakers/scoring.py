"""Scores: cosine, AS-Norm against a cohort, and a calibrated log-likelihood ratio.

The one place a pair of embeddings becomes a score, for the service (``app.speakers.operations``) and for
``voxgate eval`` / ``calibrate`` (``app.accuracy.evaluation``), so the tools measure exactly what the service
answers.

* **cosine**: the dot product of two unit-length embeddings, in [-1, 1].
* **asnorm** (adaptive symmetric normalisation; Matějka et al., Interspeech 2017): the cosine s of
  enrollment e and test t, normalised by the top-N cosines of each side against a cohort of other
  speakers' mean embeddings: ``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)``, where mu_x / sd_x are the
  mean and standard deviation of the N largest cohort cosines of x. The cohort is built by the operator
  (``voxgate cohort build``) and stored with the model (``cohort.npy``, described in the manifest).
* **llr**: ``scale * score + offset``, a logistic-regression calibration of the score type in use fitted
  by ``voxgate calibrate`` (prior-weighted, as in the BOSARIS toolkit): the natural-log likelihood ratio
  of "same speaker" over "different speakers". Optional in responses.

Nothing here imports onnxruntime or the store; it is plain numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from app.core.paths import sha256_file
from app.core.vectors import normalize_rows
from app.engine.manifest import CohortInfo, ModelManifest, ScoreCalibration

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

ScoreType = Literal["cosine", "asnorm"]
SCORE_TYPES: tuple[ScoreType, ...] = ("cosine", "asnorm")

# A cohort side whose top-N cosines are (nearly) all equal has no spread to normalise by.
MIN_STD = 1e-6


class CohortError(ValueError):
    """The model's cohort is missing, damaged, or does not fit the model."""


# --- AS-Norm ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cohort:
    """Unit-length speaker-mean embeddings [M, D] of speakers the service will not be asked about."""

    embeddings: Float32Array
    top_n: int

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] < 2:
            raise CohortError("a cohort needs at least 2 speakers")
        if self.top_n < 2:
            raise CohortError("AS-Norm needs top_n >= 2 (a standard deviation of the top cohort scores)")

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def effective_top_n(self) -> int:
        return min(self.top_n, self.size)

    def stats(self, vectors: Float32Array) -> tuple[Float64Array, Float64Array]:
        """Mean and standard deviation of each row's ``top_n`` largest cosines to the cohort."""
        v = normalize_rows(vectors)
        scores = (v @ self.embeddings.T).astype(np.float64)  # [K, M]
        n = self.effective_top_n
        top = -np.sort(-scores, axis=1)[:, :n] if n < self.size else scores
        mean = top.mean(axis=1)
        std = np.maximum(top.std(axis=1), MIN_STD)
        return mean, std

    @classmethod
    def load(cls, model_dir: Path, info: CohortInfo, top_n: int | None = None) -> Cohort:
        path = model_dir / info.file
        if not path.is_file():
            raise CohortError(f"cohort file {path} is missing (voxgate cohort build --model {model_dir} ...)")
        if sha256_file(path) != info.sha256:
            raise CohortError(f"{path}: sha256 does not match the manifest's cohort (rebuild it)")
        matrix = np.load(path, allow_pickle=False)
        if matrix.ndim != 2 or matrix.shape[0] != info.speakers:
            raise CohortError(f"{path}: expected {info.speakers} rows, found shape {matrix.shape}")
        return cls(normalize_rows(matrix), top_n if top_n is not None else info.top_n)


def asnorm(
    raw: Float64Array | float,
    enroll: tuple[Float64Array, Float64Array],
    test: tuple[Float64Array, Float64Array],
) -> Float64Array:
    """Symmetric normalisation of raw cosines with each side's (mean, std) of top cohort scores."""
    s = np.asarray(raw, dtype=np.float64)
    return 0.5 * ((s - enroll[0]) / enroll[1] + (s - test[0]) / test[1])


# --- calibration --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LlrCalibration:
    """llr = scale * score + offset (natural log)."""

    scale: float
    offset: float

    def llr(self, score: float) -> float:
        return self.scale * score + self.offset


def fit_llr(
    target: npt.ArrayLike, nontarget: npt.ArrayLike, prior: float = 0.5, iterations: int = 100
) -> LlrCalibration:
    """Linear logistic-regression calibration of scores to log-likelihood ratios.

    Minimises the prior-weighted cross-entropy (BOSARIS ``train_llr_fusion``): target trials weighted
    ``prior / N_target``, non-target trials ``(1 - prior) / N_nontarget``, the log-odds being
    ``llr + logit(prior)``. Newton's method with a small ridge on the scale, so perfectly separated
    scores give a large but finite slope.
    """
    tar = np.asarray(target, dtype=np.float64).reshape(-1)
    non = np.asarray(nontarget, dtype=np.float64).reshape(-1)
    if tar.size == 0 or non.size == 0:
        raise ValueError("calibration needs target and non-target scores")
    if not 0.0 < prior < 1.0:
        raise ValueError("prior must be in (0, 1)")
    x = np.concatenate([tar, non])
    y = np.concatenate([np.ones(tar.size), np.zeros(non.size)])
    w = np.concatenate([np.full(tar.size, prior / tar.size), np.full(non.size, (1 - prior) / non.size)])
    logit_prior = math.log(prior / (1 - prior))
    X = np.stack([x, np.ones_like(x)], axis=1)
    theta = np.zeros(2)
    ridge = np.diag([1e-6, 0.0])
    for _ in range(iterations):
        z = X @ theta + logit_prior
        p = 1.0 / (1.0 + np.exp(-z))
        grad = X.T @ (w * (p - y)) + ridge @ theta
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + ridge + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return LlrCalibration(scale=float(theta[0]), offset=float(theta[1]))


# --- scoring ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    value: float  # in the units of the scorer's score type (what the threshold compares with)
    cosine: float  # the raw cosine it came from
    llr: float | None  # calibrated log-likelihood ratio, when enabled


@dataclass(frozen=True)
class Scorer:
    """Scores probes against references as the service is configured to (``score_type``)."""

    score_type: ScoreType = "cosine"
    cohort: Cohort | None = None
    calibration: LlrCalibration | None = None  # for score_type; None = no llr in answers

    def __post_init__(self) -> None:
        if self.score_type == "asnorm" and self.cohort is None:
            raise CohortError("AS-Norm needs a cohort")

    def score_many(self, probe: Float32Array, references: Float32Array) -> list[Score]:
        """Scores of one unit-length probe against unit-length references [K, D]."""
        refs = np.asarray(references, dtype=np.float32).reshape(-1, probe.shape[-1])
        raw = (refs @ probe).astype(np.float64)
        values = raw
        if self.score_type == "asnorm":
            assert self.cohort is not None
            test_stats = self.cohort.stats(probe.reshape(1, -1))
            values = asnorm(raw, self.cohort.stats(refs), test_stats)
        return [
            Score(
                value=float(v),
                cosine=float(r),
                llr=None if self.calibration is None else self.calibration.llr(float(v)),
            )
            for v, r in zip(values.tolist(), raw.tolist(), strict=True)
        ]

    def score(self, probe: Float32Array, reference: Float32Array) -> Score:
        return self.score_many(probe, reference.reshape(1, -1))[0]


def calibration_for(manifest: ModelManifest, score_type: ScoreType) -> ScoreCalibration | None:
    return manifest.calibration.get(score_type)


def check_calibration_current(manifest: ModelManifest, score_type: ScoreType) -> None:
    """An AS-Norm calibration is only valid for the cohort it was measured with."""
    found = calibration_for(manifest, score_type)
    if found is None or score_type != "asnorm":
        return
    cohort_sha = manifest.cohort.sha256 if manifest.cohort is not None else None
    if found.cohort_sha256 != cohort_sha:
        raise CohortError(
            "the manifest's asnorm calibration was measured with another cohort; "
            "run voxgate calibrate --asnorm again"
        )
