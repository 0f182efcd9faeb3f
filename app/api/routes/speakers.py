"""GET /speakers, GET /speakers/{speaker_id}, DELETE /speakers/{speaker_id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from app.api.deps import SpeakerIdPath, State
from app.api.routes.openapi import problems
from app.api.schemas import DeleteResponse, Speaker, SpeakerPage
from app.api.state import AppState
from app.errors import SpeakerNotFound
from app.store.keys import SPEAKER_ID_PATTERN
from app.store.redis_store import Voiceprint

router = APIRouter(prefix="/speakers", tags=["speakers"])


async def speaker_not_found(state: AppState, speaker_id: str) -> SpeakerNotFound:
    """404, saying so when the speaker exists under other models (whose embeddings we cannot use)."""
    others = await state.store.other_models_with(speaker_id)
    if others:
        return SpeakerNotFound(
            f"speaker {speaker_id!r} is not enrolled under model {state.model_key}; it exists under "
            f"other model(s): {', '.join(others)} (re-enroll to use it with this model)",
            speaker_id=speaker_id,
            other_models=others,
        )
    return SpeakerNotFound(f"speaker {speaker_id!r} is not enrolled", speaker_id=speaker_id)


def _speaker(state: AppState, vp: Voiceprint) -> Speaker:
    return Speaker(
        speaker_id=vp.speaker_id,
        model=state.model_key,
        utterances=vp.count,
        speech_seconds=round(vp.speech_seconds, 3),
        enrolled=vp.speech_seconds >= state.settings.enroll_speech_seconds,
        metadata=vp.metadata,
        created_at=vp.created_at,
        updated_at=vp.updated_at,
    )


@router.get("", response_model=SpeakerPage, responses=problems(422, 503))
async def list_speakers(
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=SPEAKER_ID_PATTERN, description="next_cursor of the previous page")
    ] = None,
) -> SpeakerPage:
    """Speakers enrolled under this service's model, ordered by id."""
    ids = await state.store.list_ids(cursor, limit + 1)
    more = len(ids) > limit
    page_ids = ids[:limit]
    voiceprints = await state.store.get_many(page_ids)
    return SpeakerPage(
        items=[_speaker(state, vp) for vp in voiceprints],
        total=await state.store.count(),
        next_cursor=page_ids[-1] if more and page_ids else None,
    )


@router.get("/{speaker_id}", response_model=Speaker, responses=problems(404, 422, 503))
async def get_speaker(state: State, speaker_id: SpeakerIdPath) -> Speaker:
    voiceprint = await state.store.get(speaker_id)
    if voiceprint is None:
        raise await speaker_not_found(state, speaker_id)
    return _speaker(state, voiceprint)


@router.delete("/{speaker_id}", response_model=DeleteResponse, responses=problems(404, 422, 503))
async def delete_speaker(state: State, speaker_id: SpeakerIdPath) -> DeleteResponse:
    """Erase the speaker: its voiceprint under every model of this tenant, and its place in the
    speaker lists and indexes."""
    deleted = await state.store.delete_everywhere(speaker_id)
    await run_in_threadpool(state.index.remove, speaker_id)
    if not deleted:
        raise SpeakerNotFound(f"speaker {speaker_id!r} is not enrolled", speaker_id=speaker_id)
    return DeleteResponse(speaker_id=speaker_id, deleted_models=deleted)
