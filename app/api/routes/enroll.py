"""POST /enroll: add recordings to a speaker's voiceprint (creating the speaker when new)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.api.deps import EnrollFormData, State
from app.api.intake import embed_uploads, files_field, metadata_field, speaker_id_field
from app.api.routes.openapi import multipart_body, problems
from app.api.schemas import EnrollForm, EnrollResponse, Notice
from app.store.redis_store import l2_normalize

router = APIRouter(tags=["enrollment"])


@router.post(
    "/enroll",
    response_model=EnrollResponse,
    openapi_extra=multipart_body(EnrollForm),
    responses=problems(400, 413, 415, 422, 429, 503, 504),
)
async def enroll(request: Request, state: State, form: EnrollFormData) -> EnrollResponse:
    """Each recording needs at least `min_speech_seconds` of speech; the speaker counts as enrolled
    once the voiceprint holds `enroll_speech_seconds`. Nothing is stored unless every recording is
    accepted. A recording unlike the existing voiceprint (cosine below the threshold) is still added,
    with a warning."""
    speaker_id = speaker_id_field(form)
    metadata = metadata_field(form, state.settings.max_metadata_bytes)
    uploads = files_field(form, "audio", at_most=state.settings.max_enroll_files)
    utterances = await embed_uploads(state, request, uploads, state.min_speech_seconds)

    threshold = state.default_threshold
    existing = await state.store.get(speaker_id)
    warnings: list[Notice] = []
    for i, utt in enumerate(utterances):
        if existing is not None:
            reference = existing.direction()
            against = "the enrolled voiceprint"
        elif len(utterances) > 1:
            others = np.sum([u.embedding for j, u in enumerate(utterances) if j != i], axis=0)
            reference = l2_normalize(others)
            against = "the other recordings of this request"
        else:
            continue
        score = float(np.dot(utt.embedding, reference))
        if score < threshold:
            warnings.append(
                Notice(
                    code="unlike_voiceprint",
                    detail=f"cosine {score:.3f} to {against} is below the threshold {threshold:.3f}; "
                    "is this the same speaker?",
                    file=utt.name,
                )
            )

    result = await state.store.add_utterances(
        speaker_id,
        np.sum([u.embedding for u in utterances], axis=0).astype(np.float32),
        len(utterances),
        sum(u.speech_seconds for u in utterances),
        metadata,
    )
    # Read-your-writes on this replica; other replicas catch up through the change stream.
    await run_in_threadpool(state.index.upsert, speaker_id, result.sum)
    needed = state.settings.enroll_speech_seconds
    return EnrollResponse(
        speaker_id=speaker_id,
        model=state.model_key,
        created=result.created,
        added_utterances=len(utterances),
        utterances=result.count,
        speech_seconds=round(result.speech_seconds, 3),
        enrolled=result.speech_seconds >= needed,
        remaining_speech_seconds=round(max(0.0, needed - result.speech_seconds), 3),
        warnings=warnings,
    )
