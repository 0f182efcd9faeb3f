"""POST /enroll: add recordings to a speaker's voiceprint (creating the speaker when new)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from app.api.deps import EnrollCall
from app.api.forms import Forms, openapi_body
from app.api.routes.openapi import problems
from app.api.schemas import EnrollResponse


def build_router(forms: Forms) -> APIRouter:
    router = APIRouter(tags=["enrollment"])

    @router.post(
        "/enroll",
        response_model=EnrollResponse,
        openapi_extra=openapi_body(forms.enroll),
        responses=problems(400, 401, 403, 409, 413, 415, 422, 429, 503, 504),
    )
    async def enroll(call: EnrollCall) -> EnrollResponse:
        """Each recording needs at least `min_speech_seconds` of speech; the speaker counts as enrolled
        once the voiceprint holds `enroll_speech_seconds`. Nothing is stored unless every recording is
        accepted. A recording unlike the rest of the voiceprint (cosine below the threshold) is still
        added, with a warning, or refused with 409 `unlike_voiceprint` (VOXGATE_UNLIKE_VOICEPRINT=refuse). A
        recording already in the voiceprint (the same decoded audio) is refused with 409 `duplicate_audio`,
        or added with a warning (VOXGATE_DUPLICATE_ENROLLMENT=warn)."""
        state, caller, form = call.state, call.caller, call.form
        async with state.gate.audit.audited(
            caller.tenant, caller.key_id, "enroll", form.speaker_id, call.request_id
        ) as note:
            recordings = await state.intake.decode(form.audio, call.admitted, call.waiting)
            result = await state.speakers.enroll(
                caller.tenant, form.speaker_id, recordings, form.metadata, call.waiting
            )
            note.detail = (
                f"{result.added_utterances} recordings added; the voiceprint holds {result.utterances} "
                f"({result.speech_seconds:g} s of speech)"
            )
        return EnrollResponse.model_validate({**asdict(result), "model": state.model_key})

    return router
