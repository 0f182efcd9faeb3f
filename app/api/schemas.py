"""Typed response bodies (what /docs shows and client generators read).

Every field of a response model is sent, null or not, so the document marks every field required
(``json_schema_serialization_defaults_required``): a generated client then reads ``warnings`` as a list,
never as "maybe unset". Value sets are enums, so each is one named schema in the document, not a copy
per model.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

if TYPE_CHECKING:
    from app.engine.selfcheck import SelfCheckResult


class ScoreType(StrEnum):
    """What `score` is: a raw cosine, or AS-Norm against the model's cohort (VOXGATE_SCORE_NORMALIZATION)."""

    COSINE = "cosine"
    ASNORM = "asnorm"


class ThresholdSource(StrEnum):
    """Where a decision's threshold came from: the model (its manifest or calibration), the service
    (VOXGATE_THRESHOLD), the tenant's policy or the API key's (set by the operator), or the request."""

    MODEL = "model"
    SERVICE = "service"
    TENANT = "tenant"
    KEY = "key"
    REQUEST = "request"


class Precision(StrEnum):
    """Numeric precision of a served graph."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


LLR_DESCRIPTION = (
    "Calibrated log-likelihood ratio (natural log) of `score`, from the model's logistic-regression "
    "calibration (voxgate calibrate); null unless VOXGATE_CALIBRATED_SCORES=true. > 0 favours same speaker."
)


def _without_default(schema: dict[str, Any]) -> None:
    # An absent member has no value, null included: its schema states none.
    schema.pop("default", None)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class Problem(_Out):
    """RFC 9457 problem details, plus a stable machine-readable ``code``. Some problems carry more
    members (``errors`` of invalid_request, ``other_models`` of speaker_not_found)."""

    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=False)
    type: str = Field(examples=["urn:voxgate:problem:invalid_audio"])
    title: str
    status: int
    detail: str
    # Absent from the answers the HTTP layer gives before a request's path is known (408 while the
    # headers trickle in, 503 connection_limit).
    instance: str | SkipJsonSchema[None] = Field(
        None, description="The request's path.", json_schema_extra=_without_default
    )
    code: str = Field(examples=["invalid_audio"])
    request_id: str = Field(
        description="The request's id, as in the X-Request-ID header: quote it in bug reports."
    )


class Notice(_Out):
    """A non-fatal remark about the request (e.g. a recording unlike the enrolled ones)."""

    code: str
    detail: str
    file: str | None = None


# --- responses ---
class EnrollResponse(_Out):
    speaker_id: str
    model: str
    created: bool = Field(description="True when this request created the speaker.")
    added_utterances: int
    utterances: int = Field(description="Utterances in the voiceprint after this request.")
    speech_seconds: float = Field(description="Net speech in the voiceprint after this request.")
    enrolled: bool = Field(description="Enough net speech for a reliable voiceprint.")
    remaining_speech_seconds: float
    warnings: list[Notice] = Field(default_factory=list)


class VerifyResponse(_Out):
    speaker_id: str | None = Field(description="The enrolled speaker compared against, if any.")
    reference: str | None = Field(None, description="Filename of the reference recording, if used.")
    score: float = Field(description="The score score_type names: cosine similarity in [-1, 1], or AS-Norm.")
    score_type: ScoreType = ScoreType.COSINE
    llr: float | None = Field(None, description=LLR_DESCRIPTION)
    threshold: float
    threshold_source: ThresholdSource = Field(description="Where the threshold came from.")
    match: bool = Field(description="score >= threshold")
    model: str
    warnings: list[Notice] = Field(default_factory=list)


class Candidate(_Out):
    speaker_id: str
    score: float


class IdentifyResponse(_Out):
    speaker_id: str | None = Field(description="Best match at or above the threshold; null = nobody known.")
    score: float | None = Field(description="Score of speaker_id (null when nobody matched).")
    candidates: list[Candidate] = Field(description="Best-scoring speakers, best first.")
    score_type: ScoreType = ScoreType.COSINE
    llr: float | None = Field(None, description=LLR_DESCRIPTION + " Of speaker_id's score.")
    threshold: float
    threshold_source: ThresholdSource = Field(description="Where the threshold came from.")
    searched: int = Field(description="How many enrolled speakers were compared.")
    model: str
    warnings: list[Notice] = Field(default_factory=list)


class Speaker(_Out):
    speaker_id: str
    model: str
    utterances: int
    speech_seconds: float
    enrolled: bool
    metadata: dict[str, Any]
    created_at: float = Field(description="Unix time")
    updated_at: float = Field(description="Unix time")
    expires_at: float | None = Field(
        None,
        description="Unix time the voiceprint is deleted unless enrolled into or successfully verified "
        "before (VOXGATE_RETENTION_DAYS); null = kept until deleted.",
    )


class SpeakerPage(_Out):
    items: list[Speaker]
    total: int
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end.")


class DeleteResponse(_Out):
    speaker_id: str
    deleted_models: list[str] = Field(description="Model keys under which the speaker was erased.")


class HeldVoiceprint(_Out):
    """What is stored about a speaker under one model, without the voiceprint itself."""

    model: str
    utterances: int
    speech_seconds: float
    recordings_fingerprinted: int = Field(
        description="Recordings whose digest (SHA-256 of the decoded audio, 128 bits) is kept to detect "
        "duplicate enrollments; the digests themselves are not exported."
    )
    metadata: dict[str, Any] | None = Field(
        description="As enrolled; null when it is sealed under data keys that were erased."
    )
    created_at: float = Field(description="Unix time")
    updated_at: float = Field(description="Unix time")
    expires_at: float | None = Field(description="Unix time (retention); null = kept until deleted.")


class AuditRecord(_Out):
    """One audit event: never audio, embeddings or metadata."""

    time: float = Field(description="Unix time")
    tenant: str
    key_id: str | None = Field(description="The API key that acted (null: keys off, or an operator).")
    speaker_id: str | None
    action: str = Field(examples=["verify"])
    outcome: str = Field(description="ok, or the problem code the request was answered with.")
    request_id: str | None
    score: float | None
    threshold: float | None
    threshold_source: ThresholdSource | None
    match: bool | None
    actor: str | None = Field(description="Who ran an operator's command (cli:user@host).")
    detail: str | None


class SpeakerExport(_Out):
    """Everything held about one speaker except the voiceprint itself (a data-subject request)."""

    speaker_id: str
    tenant: str
    exported_at: float = Field(description="Unix time")
    voiceprints: list[HeldVoiceprint] = Field(description="One per model the speaker is enrolled under.")
    locked_until: float | None = Field(description="Unix time the speaker's lockout ends; null = not locked.")
    recent_failed_verifications: int = Field(description="Failed verifications within the lockout window.")
    audit_events: list[AuditRecord] = Field(
        description="Every audit event naming the speaker still in the tenant's trail (capped at "
        "VOXGATE_AUDIT_MAX_EVENTS per stream), oldest first."
    )


class Health(_Out):
    status: Literal["ok"] = "ok"


class ReadyChecks(_Out):
    engine_running: bool = Field(description="Warm-up done and the batcher's worker thread alive.")
    redis: bool = Field(description="Redis answers PING.")
    index_synced: bool = Field(description="The identification index reached Redis on its last poll.")


class SelfCheckReport(_Out):
    """The start-up self-check: the graph embedded its bundle's probe on the serving provider and was
    compared with the float32 model's reference embeddings."""

    passed: bool | None = Field(
        description="true: the probe's embeddings matched; null: not checked (the bundle has no probe). "
        "A failed check stops start-up, so it is never false on a running service."
    )
    cosine: float | None = Field(description="Worst probe clip's cosine to its reference embedding.")
    threshold: float | None = Field(description="The cosine it had to reach for this precision.")
    provider: str
    precision: Precision
    detail: str | None = Field(None, description="Why the graph was not checked.")

    @classmethod
    def of(cls, result: SelfCheckResult | None) -> SelfCheckReport | None:
        if result is None:
            return None
        return cls.model_validate(
            {
                "passed": result.passed,
                "cosine": result.cosine,
                "threshold": result.threshold,
                "provider": result.provider,
                "precision": result.precision,
                "detail": None if result.passed else result.detail,
            }
        )


class Readiness(_Out):
    ready: bool
    checks: ReadyChecks
    provider: str
    model: str
    precision: Precision = Field(description="Numeric precision of the served graph.")
    speakers_indexed: int
    selfcheck: SelfCheckReport | None = Field(None, description="The start-up self-check's result.")
    detail: str | None = None
