"""GET /speakers, GET /speakers/{speaker_id}, DELETE /speakers/{speaker_id},
GET /speakers/{speaker_id}/export."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import DeleteCaller, ExportCaller, ReadCaller, RequestId, SpeakerIdPath, State
from app.api.routes.openapi import problems
from app.api.schemas import DeleteResponse, Speaker, SpeakerExport, SpeakerPage
from app.core.ids import SPEAKER_ID_PATTERN

router = APIRouter(prefix="/speakers", tags=["speakers"])


@router.get("", response_model=SpeakerPage, responses=problems(401, 403, 422, 429, 503))
async def list_speakers(
    state: State,
    caller: ReadCaller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=SPEAKER_ID_PATTERN, description="next_cursor of the previous page")
    ] = None,
) -> SpeakerPage:
    """Speakers enrolled under this service's model, ordered by id."""
    page = await state.speakers.list_speakers(caller.tenant, cursor, limit)
    return SpeakerPage(
        items=[Speaker.model_validate({**asdict(s), "model": state.model_key}) for s in page.items],
        total=page.total,
        next_cursor=page.next_cursor,
    )


@router.get("/{speaker_id}", response_model=Speaker, responses=problems(401, 403, 404, 422, 429, 503))
async def get_speaker(state: State, caller: ReadCaller, speaker_id: SpeakerIdPath) -> Speaker:
    record = await state.speakers.get(caller.tenant, speaker_id)
    return Speaker.model_validate({**asdict(record), "model": state.model_key})


@router.delete(
    "/{speaker_id}", response_model=DeleteResponse, responses=problems(401, 403, 404, 422, 429, 503)
)
async def delete_speaker(
    state: State, caller: DeleteCaller, request_id: RequestId, speaker_id: SpeakerIdPath
) -> DeleteResponse:
    """Erase the speaker: its voiceprint under every model of this tenant, and its place in the
    speaker lists and indexes."""
    async with state.gate.audited(caller, "delete", speaker_id, request_id):
        deletion = await state.speakers.delete(caller.tenant, speaker_id)
    return DeleteResponse.model_validate(asdict(deletion))


@router.get(
    "/{speaker_id}/export", response_model=SpeakerExport, responses=problems(401, 403, 404, 422, 429, 503)
)
async def export_speaker(
    state: State, caller: ExportCaller, request_id: RequestId, speaker_id: SpeakerIdPath
) -> SpeakerExport:
    """Everything held about one speaker except the voiceprint itself, for a data-subject request: its
    records under every model (metadata, counts, times), its lockout state and every audit event that
    names it (enrollments, verifications, identifications, deletion, ...). Needs the `export` scope; the
    export itself is audited. 404 when nothing at all is held about the speaker."""
    export = await state.speakers.export(caller, speaker_id, request_id)
    return SpeakerExport.model_validate(asdict(export))
