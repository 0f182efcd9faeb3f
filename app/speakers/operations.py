"""Speaker operations: enroll, verify, identify, list, get and delete.

Every operation takes the caller's tenant and already-decoded recordings and returns a typed result
(``app.speakers.results``); the HTTP layer only parses requests and renders these results. This module
applies the policy (``app.speakers.policy``): embeddings are L2-normalised unit vectors, the speech gate
is checked before any inference, scores and thresholds decide, and the warnings are decided here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from app.audio.recording import Recording
from app.core.errors import (
    SpeakerNotFound,
    StoreUnavailable,
    UnlikeVoiceprint,
)
from app.core.vectors import l2_normalize
from app.engine.engine import Engine, Waiting
from app.speakers.policy import Policy
from app.speakers.results import (
    Candidate,
    Deletion,
    Enrollment,
    Identification,
    Notice,
    SpeakerList,
    SpeakerRecord,
    Verification,
)
from app.speakers.scoring import Score
from app.store.index import Hit, VoiceprintIndex
from app.store.redis_store import Voiceprint
from app.store.tenants import TenantIndexes

Float32Array = npt.NDArray[np.float32]


class SpeakerOperations:
    def __init__(self, engine: Engine, tenants: TenantIndexes, policy: Policy) -> None:
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
        recordings, embeddings = await self._analyze(recordings, waiting)
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
        _, (embedding,) = await self._analyze([probe], waiting)
        warnings = self._enrollment_notices(voiceprint)
        decision = self._decide(speaker_id, None, embedding, voiceprint.direction(), threshold, warnings)
        if decision.match:  # a successful verification keeps the voiceprint from expiring
            await self.tenants.store(tenant).touch(speaker_id)
        return decision

    async def verify_pair(
        self, probe: Recording, reference: Recording, threshold: float | None, waiting: Waiting
    ) -> Verification:
        """Are ``probe`` and ``reference`` the same speaker? (Nothing stored is read: no tenant.)"""
        _, (a, b) = await self._analyze([probe, reference], waiting)
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
        _, (embedding,) = await self._analyze([probe], waiting)
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
    async def _analyze(
        self, recordings: Sequence[Recording], waiting: Waiting
    ) -> tuple[list[Recording], list[Float32Array]]:
        """The recordings' speech and unit-length embeddings: the whole request is refused before any
        embedding when one recording has too little speech (the policy's gate)."""
        return await self.engine.analyze(recordings, waiting, gate=self.policy.speech_gate)
