"""POST /verify: is this voice the enrolled speaker (or the speaker of a reference recording)?"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request

from app.api.deps import State, VerifyFormData
from app.api.intake import embed_uploads, files_field, speaker_id_field, threshold_field
from app.api.routes.openapi import multipart_body, problems
from app.api.routes.speakers import speaker_not_found
from app.api.schemas import Notice, VerifyForm, VerifyResponse
from app.errors import InvalidRequest

router = APIRouter(tags=["verification"])


@router.post(
    "/verify",
    response_model=VerifyResponse,
    openapi_extra=multipart_body(VerifyForm),
    responses=problems(400, 404, 413, 415, 422, 429, 503, 504),
)
async def verify(request: Request, state: State, form: VerifyFormData) -> VerifyResponse:
    """Give either `speaker_id` (an enrolled speaker) or a second file `reference`. `score` is the
    cosine similarity; `match` = score >= threshold (the model's default unless given)."""
    threshold = threshold_field(form, state.default_threshold)
    (probe_upload,) = files_field(form, "audio", at_most=1)
    has_speaker = form.field_value("speaker_id") is not None
    references = form.file_list("reference")
    if has_speaker == bool(references) or len(references) > 1:
        raise InvalidRequest("give exactly one of: form field 'speaker_id' or file 'reference'")
    warnings: list[Notice] = []

    if has_speaker:
        speaker_id = speaker_id_field(form)
        voiceprint = await state.store.get(speaker_id)
        if voiceprint is None:
            raise await speaker_not_found(state, speaker_id)
        (probe,) = await embed_uploads(state, request, [probe_upload], state.min_speech_seconds)
        score = float(np.dot(probe.embedding, voiceprint.direction()))
        if voiceprint.speech_seconds < state.settings.enroll_speech_seconds:
            warnings.append(
                Notice(
                    code="not_fully_enrolled",
                    detail=f"the voiceprint holds {voiceprint.speech_seconds:.1f} s of speech; "
                    f"{state.settings.enroll_speech_seconds:g} s are recommended",
                )
            )
        reference_name = None
    else:
        speaker_id = None
        probe, reference = await embed_uploads(
            state, request, [probe_upload, references[0]], state.min_speech_seconds
        )
        score = float(np.dot(probe.embedding, reference.embedding))
        reference_name = reference.name

    return VerifyResponse(
        speaker_id=speaker_id,
        reference=reference_name,
        score=score,
        threshold=threshold,
        match=score >= threshold,
        model=state.model_key,
        warnings=warnings,
    )
