"""GET /speakers, GET /speakers/{speaker_id}, DELETE /speakers/{speaker_id}."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import SpeakerIdPath, State, Tenant
from app.api.routes.openapi import problems
from app.api.schemas import DeleteResponse, Speaker, SpeakerPage
from app.store.keys import SPEAKER_ID_PATTERN

router = APIRouter(prefix="/speakers", tags=["speakers"])


@router.get("", response_model=SpeakerPage, responses=problems(422, 503))
async def list_speakers(
    state: State,
    tenant: Tenant,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=SPEAKER_ID_PATTERN, description="next_cursor of the previous page")
    ] = None,
) -> SpeakerPage:
    """Speakers enrolled under this service's model, ordered by id."""
    page = await state.speakers.list_speakers(tenant, cursor, limit)
    return SpeakerPage(
        items=[Speaker.model_validate({**asdict(s), "model": state.model_key}) for s in page.items],
        total=page.total,
        next_cursor=page.next_cursor,
    )


@router.get("/{speaker_id}", response_model=Speaker, responses=problems(404, 422, 503))
async def get_speaker(state: State, tenant: Tenant, speaker_id: SpeakerIdPath) -> Speaker:
    record = await state.speakers.get(tenant, speaker_id)
    return Speaker.model_validate({**asdict(record), "model": state.model_key})


@router.delete("/{speaker_id}", response_model=DeleteResponse, responses=problems(404, 422, 503))
async def delete_speaker(state: State, tenant: Tenant, speaker_id: SpeakerIdPath) -> DeleteResponse:
    """Erase the speaker: its voiceprint under every model of this tenant, and its place in the
    speaker lists and indexes."""
    deletion = await state.speakers.delete(tenant, speaker_id)
    return DeleteResponse.model_validate(asdict(deletion))
