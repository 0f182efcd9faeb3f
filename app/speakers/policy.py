"""The decision rules, written once from the settings and the model's manifest: the speech gate (net
speech per recording, ``app.audio.recording.SpeechGate``), the score (``app.speakers.scoring.Scorer``:
cosine or AS-Norm, with an optional calibrated LLR), the decision threshold (settings, else the
manifest's calibration, else its default; then the tenant's and the key's policy, then the request's
within the floor: ``Policy.threshold_for``) and what enrollment does with a recording unlike the
voiceprint or already enrolled (warn, or refuse with 409)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.audio.recording import SpeechGate
from app.core.errors import ThresholdBelowFloor
from app.core.settings import Settings
from app.engine.manifest import ModelManifest
from app.speakers.scoring import Cohort, LlrCalibration, Scorer, ScoreType, check_calibration_current
from app.store.thresholds import ThresholdOverrides

# Where a decision's threshold came from: the model (its manifest or calibration), the service
# (VOXGATE_THRESHOLD), the tenant's policy, the API key's, or the request itself.
ThresholdSource = Literal["model", "service", "tenant", "key", "request"]
THRESHOLD_SOURCES: tuple[ThresholdSource, ...] = ("model", "service", "tenant", "key", "request")


@dataclass(frozen=True)
class AppliedThreshold:
    """The threshold a decision uses, where it came from, and the floor it was held to."""

    value: float
    source: ThresholdSource
    floor: float
    floor_source: ThresholdSource
    default: float  # what the decision would have used without the request's own threshold

    @property
    def lowered(self) -> bool:
        """The request asked for a laxer decision than the policy's: such a match never extends
        retention (it proves less than a match at the policy's threshold)."""
        return self.value < self.default


@dataclass(frozen=True)
class Policy:
    """The decision rules: written once, from the settings and the model's manifest."""

    threshold: float
    min_speech_seconds: float
    enroll_speech_seconds: float
    # --- accuracy ---
    threshold_source: str = "manifest default_threshold"
    scorer: Scorer = field(default_factory=Scorer)
    unlike_voiceprint: Literal["warn", "refuse"] = "warn"
    unlike_threshold: float | None = None  # cosine; None = threshold (a cosine policy's)
    duplicate_enrollment: Literal["warn", "refuse"] = "refuse"

    @classmethod
    def from_settings(
        cls, settings: Settings, manifest: ModelManifest, model_dir: Path | None = None
    ) -> Policy:
        scorer = build_scorer(settings, manifest, model_dir or settings.model_dir)
        threshold, source = decision_threshold(settings, manifest, scorer.score_type)
        cosine, _ = decision_threshold(settings, manifest, "cosine")
        return cls(
            threshold=threshold,
            # The model may need more speech than the service default for a stable embedding.
            min_speech_seconds=max(settings.min_speech_seconds, manifest.min_speech_seconds),
            enroll_speech_seconds=settings.enroll_speech_seconds,
            threshold_source=source,
            scorer=scorer,
            unlike_voiceprint=settings.unlike_voiceprint,
            unlike_threshold=settings.unlike_voiceprint_threshold
            if settings.unlike_voiceprint_threshold is not None
            else cosine,
            duplicate_enrollment=settings.duplicate_enrollment,
        )

    @property
    def base_source(self) -> ThresholdSource:
        return "service" if self.threshold_source == "VOXGATE_THRESHOLD" else "model"

    def threshold_for(
        self,
        tenant: ThresholdOverrides,
        key: ThresholdOverrides,
        requested: float | None,
        *,
        may_lower: bool,
    ) -> AppliedThreshold:
        """The threshold of one decision. Its default is the key's threshold, else the tenant's, else the
        service's (this policy's); its floor the key's floor, else the tenant's, else that default. A
        request may ask for a stricter threshold, never for one below the floor (403
        ``threshold_below_floor``) unless its key holds the ``threshold-override`` scope."""
        default, source = self.threshold, self.base_source
        levels: tuple[tuple[ThresholdSource, ThresholdOverrides], ...] = (("tenant", tenant), ("key", key))
        for level, overrides in levels:
            if overrides.threshold is not None:
                default, source = overrides.threshold, level
        floor, floor_source = default, source
        for level, overrides in levels:
            if overrides.floor is not None:
                floor, floor_source = overrides.floor, level
        if default < floor:  # a floor set above the threshold below it: the floor holds
            default, source = floor, floor_source
        if requested is None:
            return AppliedThreshold(default, source, floor, floor_source, default)
        if requested < floor and not may_lower:
            raise ThresholdBelowFloor(
                f"threshold {requested:g} is below the floor {floor:g} ({floor_source}): a request may ask "
                "for a stricter decision, not a laxer one (the key needs the threshold-override scope)",
                threshold=requested,
                threshold_floor=floor,
                floor_source=floor_source,
            )
        return AppliedThreshold(requested, "request", floor, floor_source, default)

    def enrolled(self, speech_seconds: float) -> bool:
        return speech_seconds >= self.enroll_speech_seconds

    @property
    def unlike_cosine(self) -> float:
        return self.threshold if self.unlike_threshold is None else self.unlike_threshold

    @property
    def speech_gate(self) -> SpeechGate:
        """The net speech every recording needs (the engine applies it before any embedding)."""
        return SpeechGate(self.min_speech_seconds)


def build_scorer(settings: Settings, manifest: ModelManifest, model_dir: Path) -> Scorer:
    """The scorer the settings ask for (``ValueError`` when the model lacks what it needs)."""
    score_type = settings_score_type(settings)
    cohort = None
    if score_type == "asnorm":
        if manifest.cohort is None:
            raise ValueError(
                f"VOXGATE_SCORE_NORMALIZATION=asnorm, but the model in {model_dir} has no cohort "
                "(voxgate cohort build --model DIR --root SPEECH)"
            )
        cohort = Cohort.load(model_dir, manifest.cohort, settings.asnorm_top_n)
        check_calibration_current(manifest, score_type)
    calibration = None
    if settings.calibrated_scores:
        found = manifest.calibration.get(score_type)
        if found is None:
            raise ValueError(
                f"VOXGATE_CALIBRATED_SCORES=true, but the model in {model_dir} has no {score_type} "
                "calibration (voxgate calibrate)"
            )
        calibration = LlrCalibration(found.llr_scale, found.llr_offset)
    return Scorer(score_type, cohort, calibration)


def settings_score_type(settings: Settings) -> ScoreType:
    return "asnorm" if settings.score_normalization == "asnorm" else "cosine"


def decision_threshold(
    settings: Settings, manifest: ModelManifest, score_type: ScoreType
) -> tuple[float, str]:
    """The default threshold for ``score_type`` and where it comes from (``VOXGATE_THRESHOLD`` is in the
    units of the score the settings select)."""
    if settings.threshold is not None and score_type == settings_score_type(settings):
        return settings.threshold, "VOXGATE_THRESHOLD"
    found = manifest.calibration.get(score_type)
    if found is not None:
        return found.threshold, f"voxgate calibrate ({found.target}, {found.created})"
    if score_type == "cosine":
        return manifest.default_threshold, "manifest default_threshold"
    raise ValueError(
        "VOXGATE_SCORE_NORMALIZATION=asnorm needs an AS-Norm threshold: voxgate calibrate --asnorm, or "
        "VOXGATE_THRESHOLD"
    )
