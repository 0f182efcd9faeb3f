"""POST /identify: who among the enrolled speakers is this (or nobody known)?"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from app.api.deps import IdentifyCall
from app.api.forms import Forms, openapi_body
from app.api.routes.openapi import problems
from app.api.schemas import IdentifyResponse


def build_router(forms: Forms) -> APIRouter:
    router = APIRouter(tags=["identification"])

    @router.post(
        "/identify",
        response_model=IdentifyResponse,
        openapi_extra=openapi_body(forms.identify),
        responses=problems(400, 401, 403, 413, 415, 422, 429, 503, 504),
    )
    async def identify(call: IdentifyCall) -> IdentifyResponse:
        """Exact cosine search over every speaker enrolled under this model (or only `candidates`).
        `speaker_id` is the best candidate when its score reaches the threshold, else null. The threshold
        follows the same policy as /verify (`threshold_source`); locked speakers are not searched."""
        state, caller, form = call.state, call.caller, call.form
        async with state.speakers.identification(caller, form.threshold, call.request_id) as search:
            (probe,) = await state.intake.decode([form.audio], call.admitted, call.waiting)
            result = await search.search(
                probe, top_k=form.top_k, candidates=form.candidates, waiting=call.waiting
            )
        best = max((c.score for c in result.candidates), default=None)
        state.metrics.observe_decision("identify", result.speaker_id is not None, best, result.score_type)
        return IdentifyResponse.model_validate({**asdict(result), "model": state.model_key})

    return router
