"""POST /identify: who among the enrolled speakers is this (or nobody known)?"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.api.deps import IdentifyFormData, State
from app.api.intake import embed_uploads, files_field, int_field, threshold_field
from app.api.routes.openapi import multipart_body, problems
from app.api.schemas import Candidate, IdentifyForm, IdentifyResponse, Notice
from app.errors import StoreUnavailable
from app.store.keys import validate_speaker_id

router = APIRouter(tags=["identification"])

MAX_TOP_K = 100


@router.post(
    "/identify",
    response_model=IdentifyResponse,
    openapi_extra=multipart_body(IdentifyForm),
    responses=problems(400, 413, 415, 422, 429, 503, 504),
)
async def identify(request: Request, state: State, form: IdentifyFormData) -> IdentifyResponse:
    """Exact cosine search over every speaker enrolled under this model (or only `candidates`).
    `speaker_id` is the best candidate when its score reaches the threshold, else null."""
    threshold = threshold_field(form, state.default_threshold)
    top_k = int_field(form, "top_k", 5, 1, MAX_TOP_K)
    candidates: list[str] | None = None
    raw_candidates = form.field_values("candidates")
    if raw_candidates:
        candidates = [
            validate_speaker_id(c.strip()) for raw in raw_candidates for c in raw.split(",") if c.strip()
        ]
    (upload,) = files_field(form, "audio", at_most=1)
    # A replica whose index lost touch with Redis may answer with stale speakers: refuse instead.
    if not state.syncer.healthy:
        raise StoreUnavailable(f"voiceprint index is not in sync with Redis: {state.syncer.last_error}")
    (probe,) = await embed_uploads(state, request, [upload], state.min_speech_seconds)

    hits = await run_in_threadpool(state.index.search, probe.embedding, top_k, candidates)
    warnings: list[Notice] = []
    searched = len(state.index)
    if candidates is not None:
        known = {c for c in candidates if c in state.index}
        searched = len(known)
        unknown = sorted(set(candidates) - known)
        if unknown:
            warnings.append(
                Notice(
                    code="unknown_candidates", detail=f"not enrolled under this model: {', '.join(unknown)}"
                )
            )
    best = hits[0] if hits and hits[0].score >= threshold else None
    return IdentifyResponse(
        speaker_id=best.speaker_id if best else None,
        score=best.score if best else None,
        candidates=[Candidate(speaker_id=h.speaker_id, score=h.score) for h in hits],
        threshold=threshold,
        searched=searched,
        model=state.model_key,
        warnings=warnings,
    )
