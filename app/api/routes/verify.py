"""POST /verify: is this voice the enrolled speaker (or the speaker of a reference recording)?"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from app.api.deps import VerifyCall
from app.api.forms import Forms, openapi_body
from app.api.routes.openapi import problems
from app.api.schemas import VerifyResponse


def build_router(forms: Forms) -> APIRouter:
    router = APIRouter(tags=["verification"])

    @router.post(
        "/verify",
        response_model=VerifyResponse,
        openapi_extra=openapi_body(forms.verify),
        responses=problems(400, 401, 403, 404, 413, 415, 422, 423, 429, 503, 504),
    )
    async def verify(call: VerifyCall) -> VerifyResponse:
        """Give either `speaker_id` (an enrolled speaker) or a second file `reference`. `score` is the
        cosine similarity; `match` = score >= threshold. The threshold is the operator's (the model's,
        the tenant's or the API key's: `threshold_source`) unless the request gives a stricter one; one
        below the floor is 403 `threshold_below_floor` unless the key holds `threshold-override`. After
        repeated failed verifications of a speaker, verifying it is 423 `speaker_locked` for a while."""
        state, caller, form = call.state, call.caller, call.form
        async with state.speakers.verification(
            caller, form.speaker_id, form.threshold, call.request_id
        ) as attempt:
            if form.reference is None:
                (probe,) = await state.intake.decode([form.audio], call.admitted, call.waiting)
                result = await attempt.decide(probe, call.waiting)
            else:
                probe, reference = await state.intake.decode(
                    [form.audio, form.reference], call.admitted, call.waiting
                )
                result = await attempt.decide(probe, call.waiting, reference)
        state.metrics.observe_decision("verify", result.match, result.score, result.score_type)
        return VerifyResponse.model_validate({**asdict(result), "model": state.model_key})

    return router
