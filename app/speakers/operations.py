"""Speaker operations: enroll, verify, identify, list, get, delete and export.

Every operation takes the caller (tenant, key, scopes, the key's thresholds) or its tenant and
already-decoded recordings and returns a typed result (``app.speakers.results``); the HTTP layer only
parses requests and renders these results. This module applies the policy (``app.speakers.policy``):
embeddings are L2-normalised unit vectors, the speech gate is checked before any inference, the threshold
comes from the model, the tenant's and the key's policy and the request within the floor, scores and
thresholds decide, and the warnings are decided here.

Every decision is audited (``app.access.audit``). A verification of an enrolled speaker is reserved with
the lockout (``app.access.lockout``) before inference, in the same round trip that reads the voiceprint
and the tenant's policy; its decision settles the reservation, moves the retention and appends the audit
event in one more round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from app.access.audit import AuditEvent, AuditLog
from app.access.auth import Caller
from app.access.lockout import Lockout, Outcome
from app.access.scopes import Scope
from app.audio.recording import Recording
from app.core.errors import (
    DuplicateAudio,
    SpeakerNotFound,
    StoreUnavailable,
    UnlikeVoiceprint,
    VoxGateError,
)
from app.core.vectors import l2_normalize
from app.engine.engine import Engine, Waiting
from app.speakers.disclosure import disclose
from app.speakers.policy import AppliedThreshold, Policy
from app.speakers.results import (
    Candidate,
    Deletion,
    Enrollment,
    Identification,
    Notice,
    SpeakerExport,
    SpeakerList,
    SpeakerRecord,
    Verification,
)
from app.speakers.scoring import Score
from app.store.connection import Batch, reply
from app.store.index import Hit, VoiceprintIndex
from app.store.redis_store import CLIP_DIGEST_BYTES, DuplicateRecordings, RedisVoiceprintStore, Voiceprint
from app.store.tenants import TenantIndexes
from app.store.thresholds import TenantPolicies, ThresholdOverrides

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]


def clip_digest(recording: Recording) -> bytes:
    """What identifies a recording's decoded audio (the same samples, whatever container carried them)."""
    return hashlib.sha256(recording.waveform.tobytes()).digest()[:CLIP_DIGEST_BYTES]


def _duplicate_audio(speaker_id: str, names: list[str]) -> DuplicateAudio:
    return DuplicateAudio(
        f"already enrolled for {speaker_id!r} (or twice in this request): {', '.join(names)}; "
        "nothing of this request was stored",
        files=names,
    )


class SpeakerOperations:
    def __init__(
        self,
        engine: Engine,
        tenants: TenantIndexes,
        policy: Policy,
        *,
        audit: AuditLog,
        lockout: Lockout,
        policies: TenantPolicies,
    ) -> None:
        self.engine = engine
        self.tenants = tenants
        self.policy = policy
        self.audit = audit
        self.lockout = lockout
        self.policies = policies

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
        digests = await asyncio.to_thread(lambda: [clip_digest(r) for r in recordings])
        if self.policy.duplicate_enrollment == "refuse":
            # The same audio twice in this request: refused before any inference (the store refuses what
            # the voiceprint holds already, atomically, when it is written).
            twice = [r.name for i, r in enumerate(recordings) if digests[i] in digests[:i]]
            if twice:
                raise _duplicate_audio(speaker_id, twice)
        recordings, embeddings = await self._analyze(recordings, waiting)
        store = self.tenants.store(tenant)
        existing = await store.get(speaker_id)
        warnings = self._unlike_voiceprint(recordings, embeddings, existing)
        try:
            result = await store.add_utterances(
                speaker_id,
                np.sum(embeddings, axis=0).astype(np.float32),
                len(embeddings),
                sum(r.speech_seconds for r in recordings),
                metadata,
                digests,
                refuse_duplicates=self.policy.duplicate_enrollment == "refuse",
            )
        except DuplicateRecordings as refused:
            raise _duplicate_audio(speaker_id, [recordings[i].name for i in refused.indexes]) from None
        warnings += [
            Notice(
                code="duplicate_audio",
                detail=f"this recording is already enrolled for {speaker_id!r} (or twice in this request): "
                "it was counted again",
                file=recordings[i].name,
            )
            for i in result.duplicates
        ]
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

    # --- decision thresholds ---------------------------------------------------------------------
    def _applied(
        self, caller: Caller, tenant_policy: ThresholdOverrides, requested: float | None
    ) -> AppliedThreshold:
        return self.policy.threshold_for(
            tenant_policy, caller.thresholds, requested, may_lower=caller.may(Scope.THRESHOLD_OVERRIDE)
        )

    async def _threshold(self, caller: Caller, requested: float | None) -> AppliedThreshold:
        return self._applied(caller, await self.policies.get(caller.tenant), requested)

    def _decision_event(
        self,
        caller: Caller,
        action: str,
        request_id: str | None,
        *,
        speaker_id: str | None = None,
        outcome: str = "ok",
        score: float | None = None,
        applied: AppliedThreshold | None = None,
        match: bool | None = None,
        detail: str | None = None,
    ) -> AuditEvent:
        return AuditEvent(
            time.time(),
            caller.tenant,
            caller.key_id,
            speaker_id,
            action,
            outcome,
            request_id,
            score=score,
            threshold=None if applied is None else applied.value,
            threshold_source=None if applied is None else applied.source,
            match=match,
            detail=detail,
        )

    # --- verification ----------------------------------------------------------------------------
    @asynccontextmanager
    async def verification(
        self, caller: Caller, speaker_id: str | None, requested: float | None, request_id: str | None
    ) -> AsyncIterator[VerificationAttempt]:
        """A verification of ``speaker_id`` (or, None, of two recordings): its threshold and, for an
        enrolled speaker, its voiceprint and a lockout reservation, all before any audio is decoded
        (403 ``threshold_below_floor``, 404, 423 ``speaker_locked``). The block decodes and calls
        ``decide``; a block that ends without a decision gives its reservation back, and the attempt is
        audited with its outcome either way."""
        attempt = VerificationAttempt(self, caller, speaker_id, request_id)
        try:
            await attempt.begin(requested)
            yield attempt
        except BaseException as exc:
            await attempt.abandon(exc)
            raise

    # --- identification --------------------------------------------------------------------------
    @asynccontextmanager
    async def identification(
        self, caller: Caller, requested: float | None, request_id: str | None
    ) -> AsyncIterator[IdentificationSearch]:
        """An identification: its threshold before any audio is decoded (403 ``threshold_below_floor``);
        the block decodes and calls ``search``. Audited with its outcome, whatever it is."""
        applied: AppliedThreshold | None = None
        try:
            applied = await self._threshold(caller, requested)
            search = IdentificationSearch(self, caller, applied)
            yield search
        except BaseException as exc:
            code = exc.code if isinstance(exc, VoxGateError) else "internal_error"
            await self.audit.record(
                self._decision_event(caller, "identify", request_id, outcome=code, applied=applied)
            )
            raise
        result = search.result
        assert result is not None, "an identification block searches"
        await self.audit.record(
            self._decision_event(
                caller,
                "identify",
                request_id,
                speaker_id=result.speaker_id,
                score=result.score,
                applied=applied,
                match=result.speaker_id is not None,
                detail=f"searched {result.searched}",
            )
        )

    async def _identify(
        self,
        tenant: str,
        applied: AppliedThreshold,
        probe: Recording,
        top_k: int,
        candidates: Sequence[str] | None,
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
        used = applied.value
        scored = await self._score_hits(tenant, embedding, hits)
        best = scored[0] if scored and scored[0][1].value >= used else None
        if best is not None and (chosen := await store.get(best[0])) is not None:
            warnings += self._enrollment_notices(chosen)  # as /verify says of the same voiceprint
        return Identification(
            speaker_id=best[0] if best else None,
            score=best[1].value if best else None,
            candidates=[Candidate(speaker, score.value) for speaker, score in scored],
            threshold=used,
            threshold_source=applied.source,
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
        """The index's best ``top_k`` hits among the voiceprints that have not expired and are not locked:
        an expired one keeps its index row until the sweeper deletes it, but is gone for identification at
        once; a locked speaker (too many failed verifications) can be neither verified nor identified."""
        store, wanted = self.tenants.store(tenant), top_k
        while True:
            hits = await asyncio.to_thread(index.search, embedding, wanted, candidates)
            ids = [hit.speaker_id for hit in hits]
            expired = await store.expired(ids)
            if self.lockout.enabled and ids:
                batch = Batch(self.tenants.root.client)
                self.lockout.queue_locked(batch, tenant, ids)
                expired |= self.lockout.locked_among(ids, (await batch.run())[0])
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

    async def export(self, caller: Caller, speaker_id: str, request_id: str | None) -> SpeakerExport:
        """Everything held about one speaker of the caller's tenant except the voiceprint itself
        (``app.speakers.disclosure``); 404 when nothing at all is held. Audited."""
        tenant = caller.tenant
        found = await disclose(self.tenants.store(tenant), self.audit, self.lockout, tenant, speaker_id)
        detail = None
        if found is not None:
            detail = f"{len(found.voiceprints)} voiceprint records, {len(found.audit_events)} audit events"
        await self.audit.record(
            self._decision_event(
                caller, "export", request_id, speaker_id=speaker_id,
                outcome="ok" if found is not None else SpeakerNotFound.code, detail=detail,
            )
        )  # fmt: skip
        if found is None:
            raise SpeakerNotFound(f"nothing is held about speaker {speaker_id!r}", speaker_id=speaker_id)
        return found

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


class VerificationAttempt:
    """One verification between ``SpeakerOperations.verification`` and its decision (see there)."""

    def __init__(
        self, ops: SpeakerOperations, caller: Caller, speaker_id: str | None, request_id: str | None
    ) -> None:
        self.ops = ops
        self.caller = caller
        self.speaker_id = speaker_id
        self.request_id = request_id
        self.applied: AppliedThreshold | None = None
        self.voiceprint: Voiceprint | None = None
        self.attempt_id: str | None = None  # set while a lockout reservation is held
        self.decided = False

    @property
    def _store(self) -> RedisVoiceprintStore:
        return self.ops.tenants.store(self.caller.tenant)

    async def begin(self, requested: float | None) -> None:
        ops, caller, speaker_id = self.ops, self.caller, self.speaker_id
        if speaker_id is None:
            self.applied = await ops._threshold(caller, requested)
            return
        # The voiceprint, the policy and the reservation in one round trip.
        batch = Batch(ops.tenants.root.client)
        got = self._store.queue_get(batch, speaker_id)
        policy = ops.policies.queue_read(batch, caller.tenant)
        attempt_id = secrets.token_hex(8)
        begun = (
            ops.lockout.queue_begin(batch, caller.tenant, speaker_id, attempt_id)
            if ops.lockout.enabled
            else None
        )
        answers = await batch.run()
        if begun is not None and not isinstance(answers[begun], Exception) and int(answers[begun][0]) == 1:
            self.attempt_id = attempt_id
        self.applied = ops._applied(caller, ThresholdOverrides.parse(reply(answers[policy]) or {}), requested)
        self.voiceprint = await self._store.voiceprint(speaker_id, answers[got])
        if self.voiceprint is None:
            raise await ops._not_found(caller.tenant, speaker_id)
        if begun is not None:
            ops.lockout.check_begun(speaker_id, answers[begun])

    async def decide(
        self, probe: Recording, waiting: Waiting, reference: Recording | None = None
    ) -> Verification:
        """Is ``probe`` the enrolled speaker (or the speaker of ``reference``)? Settles the reservation,
        moves the retention on a match at the policy's threshold or a stricter one, and audits the
        decision, in one round trip."""
        ops, applied = self.ops, self.applied
        assert applied is not None
        if self.voiceprint is not None:
            _, (embedding,) = await ops._analyze([probe], waiting)
            against, warnings = self.voiceprint.direction(), ops._enrollment_notices(self.voiceprint)
        else:
            assert reference is not None, "a verification without an enrolled speaker needs a reference"
            _, (embedding, against) = await ops._analyze([probe, reference], waiting)
            warnings = []
        score = ops.policy.scorer.score(embedding, against)
        match = score.value >= applied.value
        result = Verification(
            self.speaker_id,
            None if reference is None else reference.name,
            score.value,
            applied.value,
            match,
            warnings,
            score_type=ops.policy.scorer.score_type,
            llr=score.llr,
            threshold_source=applied.source,
        )
        event = ops._decision_event(
            self.caller, "verify", self.request_id, speaker_id=self.speaker_id, score=score.value,
            applied=applied, match=match,
        )  # fmt: skip
        self.decided = True
        await self._settle("match" if match else "fail", event, touch=match and not applied.lowered)
        return result

    async def _settle(self, outcome: Outcome, event: AuditEvent, *, touch: bool) -> None:
        ops, tenant = self.ops, self.caller.tenant
        batch = Batch(ops.tenants.root.client)
        settle = None
        if self.attempt_id is not None and self.speaker_id is not None:
            settle = ops.lockout.queue_finish(batch, tenant, self.speaker_id, self.attempt_id, outcome)
            self.attempt_id = None
        if touch and self.speaker_id is not None:
            self._store.queue_touch(batch, self.speaker_id)
        stored = ops.audit.queue(batch, event)
        try:
            answers = await batch.run()
        except StoreUnavailable as exc:
            ops.audit.confirm(event, exc)
            raise
        ops.audit.confirm(event, answers[stored])
        # A decision whose failure could not be counted is not answered (fail closed).
        settled = None if settle is None else ops.lockout.settled(tenant, answers[settle])
        if settled is not None and settled.locked_until is not None:
            why = (
                f"{settled.failures} failed verifications within {ops.lockout.window_s:g} s: locked for "
                f"{ops.lockout.lock_s:g} s"
            )
            await ops.audit.record(
                AuditEvent(
                    time.time(), tenant, self.caller.key_id, self.speaker_id, "lockout", "ok",
                    self.request_id, detail=why,
                )
            )  # fmt: skip
            log.warning(
                "speaker locked after failed verifications",
                extra={"tenant": tenant, "speaker": self.speaker_id, "key_id": self.caller.key_id},
            )

    async def abandon(self, exc: BaseException) -> None:
        """The attempt ended without a decision (or its decision could not be stored): give the
        reservation back and audit the outcome."""
        if self.decided:
            return  # its event went with the decision's batch (or was logged as not stored)
        code = exc.code if isinstance(exc, VoxGateError) else "internal_error"
        event = self.ops._decision_event(
            self.caller,
            "verify",
            self.request_id,
            speaker_id=self.speaker_id,
            outcome=code,
            applied=self.applied,
        )
        if self.attempt_id is None:
            await self.ops.audit.record(event)
            return
        # When Redis is gone the reservation lapses by itself (max pending); the event was logged.
        with contextlib.suppress(StoreUnavailable):
            await self._settle("void", event, touch=False)


class IdentificationSearch:
    """One identification between ``SpeakerOperations.identification`` and its result."""

    def __init__(self, ops: SpeakerOperations, caller: Caller, applied: AppliedThreshold) -> None:
        self.ops = ops
        self.caller = caller
        self.applied = applied
        self.result: Identification | None = None

    async def search(
        self, probe: Recording, *, top_k: int, candidates: Sequence[str] | None, waiting: Waiting
    ) -> Identification:
        self.result = await self.ops._identify(
            self.caller.tenant, self.applied, probe, top_k, candidates, waiting
        )
        return self.result
