"""What the speaker operations answer: typed results the HTTP layer renders (and nothing else does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.access.audit import AuditEvent
from app.speakers.policy import ThresholdSource
from app.speakers.scoring import ScoreType
from app.store.redis_store import HeldRecord


@dataclass(frozen=True)
class Notice:
    """A non-fatal remark about a request (e.g. a recording unlike the enrolled ones)."""

    code: str
    detail: str
    file: str | None = None


@dataclass(frozen=True)
class Enrollment:
    speaker_id: str
    created: bool
    added_utterances: int
    utterances: int
    speech_seconds: float
    enrolled: bool
    remaining_speech_seconds: float
    warnings: list[Notice] = field(default_factory=list)


@dataclass(frozen=True)
class Verification:
    speaker_id: str | None  # the enrolled speaker compared against, if any
    reference: str | None  # the reference recording's name, if one was given instead
    score: float
    threshold: float
    match: bool
    warnings: list[Notice] = field(default_factory=list)
    score_type: ScoreType = "cosine"
    llr: float | None = None  # calibrated log-likelihood ratio of score (VOXGATE_CALIBRATED_SCORES)
    threshold_source: ThresholdSource = "model"


@dataclass(frozen=True)
class Candidate:
    speaker_id: str
    score: float


@dataclass(frozen=True)
class Identification:
    speaker_id: str | None  # the best candidate at or above the threshold; None = nobody known
    score: float | None
    candidates: list[Candidate]
    threshold: float
    searched: int
    warnings: list[Notice] = field(default_factory=list)
    score_type: ScoreType = "cosine"
    llr: float | None = None  # of the matched speaker's score
    threshold_source: ThresholdSource = "model"


@dataclass(frozen=True)
class SpeakerRecord:
    speaker_id: str
    utterances: int
    speech_seconds: float
    enrolled: bool
    metadata: dict[str, Any]
    created_at: float
    updated_at: float
    expires_at: float | None  # retention: unless enrolled into or verified before then


@dataclass(frozen=True)
class SpeakerList:
    items: list[SpeakerRecord]
    total: int
    next_cursor: str | None


@dataclass(frozen=True)
class Deletion:
    speaker_id: str
    deleted_models: list[str]


@dataclass(frozen=True)
class SpeakerExport:
    """Everything held about one speaker except the voiceprint itself (a data-subject request)."""

    speaker_id: str
    tenant: str
    exported_at: float
    voiceprints: list[HeldRecord]
    locked_until: float | None
    recent_failed_verifications: int
    audit_events: list[AuditEvent]
