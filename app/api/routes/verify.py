"""POST /verify: is this voice the enrolled speaker (or the speaker of a reference recording)?"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from app.api.deps import AdmittedRequest, CallerDep, RequestWaiting, State, VerifyFormData
from app.api.forms import Forms, openapi_body
from app.api.routes.openapi import problems
from app.api.schemas import VerifyResponse


def build_router(forms: Forms) -> APIRouter:
    router = APIRouter(tags=["verification"])

    @router.post(
        "/verify",
        response_model=VerifyResponse,
        openapi_extra=openapi_body(forms.verify),
        responses=problems(400, 401, 404, 413, 415, 422, 429, 503, 504),
    )
    async def verify(
        state: State,
        caller: CallerDep,
        form: VerifyFormData,
        admitted: AdmittedRequest,
        waiting: RequestWaiting,
    ) -> VerifyResponse:
        """Give either `speaker_id` (an enrolled speaker) or a second file `reference`. `score` is the
        cosine similarity; `match` = score >= threshold (the model's default unless given)."""
        if form.speaker_id is not None:
            (probe,) = await state.intake.decode([form.audio], admitted, waiting)
            result = await state.speakers.verify_speaker(
                caller.tenant, form.speaker_id, probe, form.threshold, waiting
            )
        else:
            assert form.reference is not None  # the form allows exactly one of the two
            probe, reference = await state.intake.decode([form.audio, form.reference], admitted, waiting)
            result = await state.speakers.verify_pair(probe, reference, form.threshold, waiting)
        state.metrics.observe_decision("verify", result.match, result.score, result.score_type)
        return VerifyResponse.model_validate({**asdict(result), "model": state.model_key})

    return router
