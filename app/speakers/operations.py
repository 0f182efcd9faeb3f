"""Speaker operations: enroll, verify, identify, list, get and delete - the rules of the service.

Every operation takes the caller's tenant and already-decoded recordings and returns a typed result;
the HTTP layer only parses requests and renders these results. This module owns what the answers
mean: embeddings are L2-normalised here, scores are cosines of unit vectors, the threshold and the
minimum-speech policy are applied here, and the warnings are decided here.

Accuracy (issue 12): the speech gate (``Policy.check_speech``, on the VAD's net speech), the score
(``app.speakers.scoring.Scorer``: cosine or AS-Norm, with an optional calibrated LLR), the decision threshold
(settings, else the manifest's calibration, else its default), and the unlike-voiceprint check of
enrollment (warn, or refuse with 409) are decided here; ``embed_recordings`` is the one way recordings
become embeddings, for the service and for ``voxgate eval``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from app.audio.vad import Region, speech_only
from app.core.errors import (
    InvalidAudio,
    InvalidRequest,
    NoSpeech,
    NotEnoughSpeech,
    SpeakerNotFound,
    StoreUnavailable,
    UnlikeVoiceprint,
)
from app.core.settings import Settings
from app.core.vectors import l2_normalize
from app.engine.engine import EmbeddingEngine
from app.engine.manifest import ModelManifest
from app.speakers.scoring import Cohort, LlrCalibration, Score, Scorer, ScoreType, check_calibration_current
from app.store.index import Hit, VoiceprintIndex
from app.store.redis_store import Voiceprint
from app.store.tenants import TenantIndexes

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Recording:
    """One decoded upload: 16 kHz mono samples and the net speech the VAD found in them."""

    name: str
    waveform: Float32Array
    speech_seconds: float
    regions: Sequence[Region] = ()  # where the VAD found the speech (samples)


@dataclass(frozen=True)
class Waiting:
    """How long an operation may take, and how to tell that nobody waits for its answer any more."""

    deadline: float  # time.monotonic()
    is_disconnected: Callable[[], Awaitable[bool]] | None = None


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
        )

    def enrolled(self, speech_seconds: float) -> bool:
        return speech_seconds >= self.enroll_speech_seconds

    @property
    def unlike_cosine(self) -> float:
        return self.threshold if self.unlike_threshold is None else self.unlike_threshold

    def check_speech(self, recording: Recording) -> None:
        """``no_speech`` when the VAD found none, ``not_enough_speech`` below the minimum."""
        seconds = recording.speech_seconds
        if seconds <= 0.0:
            raise NoSpeech("no speech found in the recording", file=recording.name)
        if seconds < self.min_speech_seconds:
            raise NotEnoughSpeech(
                f"{seconds:.2f} s of speech found; at least {self.min_speech_seconds:g} s needed",
                file=recording.name,
                speech_seconds=round(seconds, 3),
                min_speech_seconds=self.min_speech_seconds,
            )


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


class SpeakerOperations:
    def __init__(self, engine: EmbeddingEngine, tenants: TenantIndexes, policy: Policy) -> None:
        self.engine = engine
        self.tenants = tenants
        self.policy = policy

    @property
    def model_key(self) -> str:
        return self.engine.manifest.model_key()

    # --- enrollment ------------------------------------------------------------------------------
    async def enroll(
        self,
        tenant: str,
        speaker_id: str,
        recordings: Sequence[Recording],
        metadata: dict[str, Any] | None,
        waiting: Waiting,
    ) -> Enrollment:
        """Add recordings to a speaker's voiceprint (creating it). Nothing is stored unless every
        recording is accepted; one unlike the voiceprint is added with an ``unlike_voiceprint`` notice,
        or (``unlike_voiceprint=refuse``) refuses the request with 409."""
        self._require_speech(recordings)
        embeddings = await self._embed(recordings, waiting)
        store = self.tenants.store(tenant)
        existing = await store.get(speaker_id)
        warnings = self._unlike_voiceprint(recordings, embeddings, existing)
        result = await store.add_utterances(
            speaker_id,
            np.sum(embeddings, axis=0).astype(np.float32),
            len(embeddings),
            sum(r.speech_seconds for r in recordings),
            metadata,
        )
        # Read-your-writes on this replica; other replicas catch up through the change stream.
        await self.tenants.upsert(tenant, speaker_id, result.sum)
        needed = self.policy.enroll_speech_seconds
        return Enrollment(
            speaker_id=speaker_id,
            created=result.created,
            added_utterances=len(embeddings),
            utterances=result.count,
            speech_seconds=round(result.speech_seconds, 3),
            enrolled=self.policy.enrolled(result.speech_seconds),
            remaining_speech_seconds=round(max(0.0, needed - result.speech_seconds), 3),
            warnings=warnings,
        )

    def _unlike_voiceprint(
        self,
        recordings: Sequence[Recording],
        embeddings: Sequence[Float32Array],
        existing: Voiceprint | None,
    ) -> list[Notice]:
        """A notice for each recording whose cosine to the rest of the voiceprint is below the threshold:
        the enrolled voiceprint when there is one, else the request's other recordings. Refused instead
        (409, nothing stored) when the policy says so."""
        threshold = self.policy.unlike_cosine
        warnings: list[Notice] = []
        for i, (recording, embedding) in enumerate(zip(recordings, embeddings, strict=True)):
            if existing is not None:
                reference, against = existing.direction(), "the enrolled voiceprint"
            elif len(embeddings) > 1:
                others = np.sum([e for j, e in enumerate(embeddings) if j != i], axis=0)
                reference, against = l2_normalize(others), "the other recordings of this request"
            else:
                continue
            score = float(np.dot(embedding, reference))
            if score < threshold and self.policy.unlike_voiceprint == "refuse":
                raise UnlikeVoiceprint(
                    f"cosine {score:.3f} to {against} is below {threshold:.3f}: not enrolled (is this the "
                    "same speaker?)",
                    file=recording.name,
                    cosine=round(score, 4),
                    unlike_voiceprint_threshold=threshold,
                )
            if score < threshold:
                warnings.append(
                    Notice(
                        code="unlike_voiceprint",
                        detail=f"cosine {score:.3f} to {against} is below the threshold {threshold:.3f}; "
                        "is this the same speaker?",
                        file=recording.name,
                    )
                )
        return warnings

    # --- verification ----------------------------------------------------------------------------
    async def verify_speaker(
        self,
        tenant: str,
        speaker_id: str,
        probe: Recording,
        threshold: float | None,
        waiting: Waiting,
    ) -> Verification:
        """Is ``probe`` the enrolled speaker ``speaker_id``? (404 before any inference when not enrolled.)"""
        voiceprint = await self.tenants.store(tenant).get(speaker_id)
        if voiceprint is None:
            raise await self._not_found(tenant, speaker_id)
        self._require_speech([probe])
        (embedding,) = await self._embed([probe], waiting)
        warnings = self._enrollment_notices(voiceprint)
        decision = self._decide(speaker_id, None, embedding, voiceprint.direction(), threshold, warnings)
        if decision.match:  # a successful verification keeps the voiceprint from expiring
            await self.tenants.store(tenant).touch(speaker_id)
        return decision

    async def verify_pair(
        self, probe: Recording, reference: Recording, threshold: float | None, waiting: Waiting
    ) -> Verification:
        """Are ``probe`` and ``reference`` the same speaker? (Nothing stored is read: no tenant.)"""
        self._require_speech([probe, reference])
        a, b = await self._embed([probe, reference], waiting)
        return self._decide(None, reference.name, a, b, threshold, [])

    def _decide(
        self,
        speaker_id: str | None,
        reference: str | None,
        probe: Float32Array,
        against: Float32Array,
        threshold: float | None,
        warnings: list[Notice],
    ) -> Verification:
        used = self.policy.threshold if threshold is None else threshold
        score = self.policy.scorer.score(probe, against)
        return Verification(
            speaker_id,
            reference,
            score.value,
            used,
            score.value >= used,
            warnings,
            score_type=self.policy.scorer.score_type,
            llr=score.llr,
        )

    # --- identification --------------------------------------------------------------------------
    async def identify(
        self,
        tenant: str,
        probe: Recording,
        *,
        top_k: int,
        candidates: Sequence[str] | None,
        threshold: float | None,
        waiting: Waiting,
    ) -> Identification:
        """Exact cosine search over the tenant's speakers enrolled under this model (or ``candidates``)."""
        index = await self.tenants.index(tenant)
        # A replica whose index lost touch with Redis may answer with stale speakers: refuse instead.
        if not self.tenants.in_sync(tenant):
            raise StoreUnavailable(f"voiceprint index is not in sync with Redis: {self.tenants.last_error}")
        self._require_speech([probe])
        (embedding,) = await self._embed([probe], waiting)
        hits = await self._live_hits(tenant, index, embedding, top_k, candidates)
        warnings: list[Notice] = []
        store = self.tenants.store(tenant)
        # Expired voiceprints not yet swept are not searched: not counted either.
        searched = len(index) if store.retention_s is None else await store.count()
        if candidates is not None:
            known = {c for c in candidates if c in index}
            searched = len(known - await store.expired(sorted(known)))
            unknown = sorted(set(candidates) - known)
            if unknown:
                warnings.append(
                    Notice(
                        code="unknown_candidates",
                        detail=f"not enrolled under this model: {', '.join(unknown)}",
                    )
                )
        used = self.policy.threshold if threshold is None else threshold
        scored = await self._score_hits(tenant, embedding, hits)
        best = scored[0] if scored and scored[0][1].value >= used else None
        if best is not None and (chosen := await store.get(best[0])) is not None:
            warnings += self._enrollment_notices(chosen)  # as /verify says of the same voiceprint
        return Identification(
            speaker_id=best[0] if best else None,
            score=best[1].value if best else None,
            candidates=[Candidate(speaker, score.value) for speaker, score in scored],
            threshold=used,
            searched=searched,
            warnings=warnings,
            score_type=self.policy.scorer.score_type,
            llr=best[1].llr if best else None,
        )

    def _enrollment_notices(self, voiceprint: Voiceprint) -> list[Notice]:
        if self.policy.enrolled(voiceprint.speech_seconds):
            return []
        return [
            Notice(
                code="not_fully_enrolled",
                detail=f"the voiceprint of {voiceprint.speaker_id!r} holds {voiceprint.speech_seconds:.1f} s "
                f"of speech; {self.policy.enroll_speech_seconds:g} s are recommended",
            )
        ]

    async def _live_hits(
        self,
        tenant: str,
        index: VoiceprintIndex,
        embedding: Float32Array,
        top_k: int,
        candidates: Sequence[str] | None,
    ) -> list[Hit]:
        """The index's best ``top_k`` hits among the voiceprints that have not expired: an expired one
        keeps its index row until the sweeper deletes it, but is gone for identification at once."""
        store, wanted = self.tenants.store(tenant), top_k
        while True:
            hits = await asyncio.to_thread(index.search, embedding, wanted, candidates)
            expired = await store.expired([hit.speaker_id for hit in hits])
            live = [hit for hit in hits if hit.speaker_id not in expired]
            if len(live) >= top_k or len(hits) < wanted:  # enough, or nobody else to find
                return live[:top_k]
            wanted += len(expired)

    async def _score_hits(
        self, tenant: str, embedding: Float32Array, hits: Sequence[Any]
    ) -> list[tuple[str, Score]]:
        """The index's cosine hits as the scorer scores them, best first. AS-Norm re-scores (and may
        re-rank) the top hits with their voiceprints, read from the store."""
        scorer = self.policy.scorer
        if not hits:
            return []
        if scorer.score_type == "cosine":
            return [
                (
                    h.speaker_id,
                    Score(
                        h.score,
                        h.score,
                        None if scorer.calibration is None else scorer.calibration.llr(h.score),
                    ),
                )
                for h in hits
            ]
        voiceprints = await self.tenants.store(tenant).get_many([h.speaker_id for h in hits])
        found = [vp for vp in voiceprints if vp is not None]
        if not found:
            return []
        scores = scorer.score_many(embedding, np.stack([vp.direction() for vp in found]))
        ranked = sorted(zip((vp.speaker_id for vp in found), scores, strict=True), key=lambda p: -p[1].value)
        return ranked

    # --- speaker records -------------------------------------------------------------------------
    async def list_speakers(self, tenant: str, cursor: str | None, limit: int) -> SpeakerList:
        """The tenant's speakers under this model, ordered by id, ``limit`` at a time."""
        store = self.tenants.store(tenant)
        ids = await store.list_ids(cursor, limit + 1)
        page_ids = ids[:limit]
        voiceprints = await store.get_many(page_ids)
        return SpeakerList(
            items=[self._record(vp) for vp in voiceprints],
            total=await store.count(),
            next_cursor=page_ids[-1] if len(ids) > limit and page_ids else None,
        )

    async def get(self, tenant: str, speaker_id: str) -> SpeakerRecord:
        voiceprint = await self.tenants.store(tenant).get(speaker_id)
        if voiceprint is None:
            raise await self._not_found(tenant, speaker_id)
        return self._record(voiceprint)

    async def delete(self, tenant: str, speaker_id: str) -> Deletion:
        """Erase the speaker: its voiceprint under every model of the tenant, and its index rows."""
        deleted = await self.tenants.store(tenant).delete_everywhere(speaker_id)
        await self.tenants.remove(tenant, speaker_id)
        if not deleted:
            raise SpeakerNotFound(f"speaker {speaker_id!r} is not enrolled", speaker_id=speaker_id)
        return Deletion(speaker_id, deleted)

    def _record(self, vp: Voiceprint) -> SpeakerRecord:
        return SpeakerRecord(
            speaker_id=vp.speaker_id,
            utterances=vp.count,
            speech_seconds=round(vp.speech_seconds, 3),
            enrolled=self.policy.enrolled(vp.speech_seconds),
            metadata=vp.metadata,
            created_at=vp.created_at,
            updated_at=vp.updated_at,
            expires_at=vp.expires_at,
        )

    async def _not_found(self, tenant: str, speaker_id: str) -> SpeakerNotFound:
        """404, saying so when the speaker exists under other models (whose embeddings we cannot use)."""
        others = await self.tenants.store(tenant).other_models_with(speaker_id)
        if others:
            return SpeakerNotFound(
                f"speaker {speaker_id!r} is not enrolled under model {self.model_key}; it exists under "
                f"other model(s): {', '.join(others)} (re-enroll to use it with this model)",
                speaker_id=speaker_id,
                other_models=others,
            )
        return SpeakerNotFound(f"speaker {speaker_id!r} is not enrolled", speaker_id=speaker_id)

    # --- speech and embeddings -------------------------------------------------------------------
    def _require_speech(self, recordings: Sequence[Recording]) -> None:
        """Refuse the whole request, before any inference, when one recording has too little speech."""
        for recording in recordings:
            self.policy.check_speech(recording)

    async def _embed(self, recordings: Sequence[Recording], waiting: Waiting) -> list[Float32Array]:
        return await embed_recordings(self.engine, recordings, waiting)


async def embed_recordings(
    engine: EmbeddingEngine,
    recordings: Sequence[Recording],
    waiting: Waiting,
    *,
    drop_non_speech: bool | None = None,
) -> list[Float32Array]:
    """Unit-length embeddings of all recordings, submitted together so the engine can batch them (only
    their speech regions when the model's manifest says ``drop_non_speech``, or the caller does)."""
    trim = engine.manifest.drop_non_speech if drop_non_speech is None else drop_non_speech

    async def one(recording: Recording) -> Float32Array:
        waveform = recording.waveform
        if trim and recording.regions:
            waveform = speech_only(waveform, list(recording.regions))
        raw = await engine.embed(waveform, deadline=waiting.deadline, is_disconnected=waiting.is_disconnected)
        try:
            return l2_normalize(raw)
        except ValueError as exc:  # a degenerate input the model maps to the zero vector
            raise InvalidAudio(
                "the model produced no usable embedding for this recording", file=recording.name
            ) from exc

    if not recordings:
        raise InvalidRequest("no recordings")
    # A TaskGroup cancels the sibling inferences as soon as one fails (e.g. 429): no wasted work.
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(r)) for r in recordings]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
