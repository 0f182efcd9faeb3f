"""Speaker operations: enroll, verify, identify, list, get and delete - the rules of the service.

Every operation takes the caller's tenant and already-decoded recordings and returns a typed result;
the HTTP layer only parses requests and renders these results. This module owns what the answers
mean: embeddings are L2-normalised here, scores are cosines of unit vectors, the threshold and the
minimum-speech policy are applied here, and the warnings are decided here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.engine.engine import EmbeddingEngine
from app.errors import (
    InvalidAudio,
    InvalidRequest,
    NoSpeech,
    NotEnoughSpeech,
    SpeakerNotFound,
    StoreUnavailable,
)
from app.manifest import ModelManifest
from app.settings import Settings
from app.store.redis_store import Voiceprint
from app.store.tenants import TenantIndexes
from app.vectors import l2_normalize

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Recording:
    """One decoded upload: 16 kHz mono samples and the net speech the VAD found in them."""

    name: str
    waveform: Float32Array
    speech_seconds: float


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

    @classmethod
    def from_settings(cls, settings: Settings, manifest: ModelManifest) -> Policy:
        return cls(
            threshold=settings.threshold if settings.threshold is not None else manifest.default_threshold,
            # The model may need more speech than the service default for a stable embedding.
            min_speech_seconds=max(settings.min_speech_seconds, manifest.min_speech_seconds),
            enroll_speech_seconds=settings.enroll_speech_seconds,
        )

    def enrolled(self, speech_seconds: float) -> bool:
        return speech_seconds >= self.enroll_speech_seconds


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


@dataclass(frozen=True)
class SpeakerRecord:
    speaker_id: str
    utterances: int
    speech_seconds: float
    enrolled: bool
    metadata: dict[str, Any]
    created_at: float
    updated_at: float


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
        recording is accepted; one unlike the voiceprint is added with an ``unlike_voiceprint`` notice."""
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
        the enrolled voiceprint when there is one, else the request's other recordings."""
        threshold = self.policy.threshold
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
        warnings: list[Notice] = []
        if not self.policy.enrolled(voiceprint.speech_seconds):
            warnings.append(
                Notice(
                    code="not_fully_enrolled",
                    detail=f"the voiceprint holds {voiceprint.speech_seconds:.1f} s of speech; "
                    f"{self.policy.enroll_speech_seconds:g} s are recommended",
                )
            )
        return self._decide(
            speaker_id, None, float(np.dot(embedding, voiceprint.direction())), threshold, warnings
        )

    async def verify_pair(
        self, probe: Recording, reference: Recording, threshold: float | None, waiting: Waiting
    ) -> Verification:
        """Are ``probe`` and ``reference`` the same speaker? (Nothing stored is read: no tenant.)"""
        self._require_speech([probe, reference])
        a, b = await self._embed([probe, reference], waiting)
        return self._decide(None, reference.name, float(np.dot(a, b)), threshold, [])

    def _decide(
        self,
        speaker_id: str | None,
        reference: str | None,
        score: float,
        threshold: float | None,
        warnings: list[Notice],
    ) -> Verification:
        used = self.policy.threshold if threshold is None else threshold
        return Verification(speaker_id, reference, score, used, score >= used, warnings)

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
        hits = await asyncio.to_thread(index.search, embedding, top_k, candidates)
        warnings: list[Notice] = []
        searched = len(index)
        if candidates is not None:
            known = {c for c in candidates if c in index}
            searched = len(known)
            unknown = sorted(set(candidates) - known)
            if unknown:
                warnings.append(
                    Notice(
                        code="unknown_candidates",
                        detail=f"not enrolled under this model: {', '.join(unknown)}",
                    )
                )
        used = self.policy.threshold if threshold is None else threshold
        best = hits[0] if hits and hits[0].score >= used else None
        return Identification(
            speaker_id=best.speaker_id if best else None,
            score=best.score if best else None,
            candidates=[Candidate(h.speaker_id, h.score) for h in hits],
            threshold=used,
            searched=searched,
            warnings=warnings,
        )

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
        needed = self.policy.min_speech_seconds
        for recording in recordings:
            seconds = recording.speech_seconds
            if seconds <= 0.0:
                raise NoSpeech("no speech found in the recording", file=recording.name)
            if seconds < needed:
                raise NotEnoughSpeech(
                    f"{seconds:.2f} s of speech found; at least {needed:g} s needed",
                    file=recording.name,
                    speech_seconds=round(seconds, 3),
                    min_speech_seconds=needed,
                )

    async def _embed(self, recordings: Sequence[Recording], waiting: Waiting) -> list[Float32Array]:
        """Unit-length embeddings of all recordings, submitted together so the engine can batch them."""

        async def one(recording: Recording) -> Float32Array:
            raw = await self.engine.embed(
                recording.waveform, deadline=waiting.deadline, is_disconnected=waiting.is_disconnected
            )
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
