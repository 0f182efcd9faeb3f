"""Dependencies as ``Annotated`` aliases, so route signatures read as plain types."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from app.api.multipart import FormContents, read_multipart
from app.api.state import STATE_KEY, AppState
from app.store.keys import validate_speaker_id


def get_state(request: Request) -> AppState:
    return cast(AppState, getattr(request.state, STATE_KEY))


State = Annotated[AppState, Depends(get_state)]


def speaker_id_path(speaker_id: str) -> str:
    """The path's speaker id, refused with 422 ``invalid_speaker_id`` when malformed."""
    return validate_speaker_id(speaker_id)


SpeakerIdPath = Annotated[str, Depends(speaker_id_path)]


async def enroll_form(request: Request, state: State) -> FormContents:
    return await read_multipart(
        request, max_file_bytes=state.settings.max_upload_bytes, max_files=state.settings.max_enroll_files
    )


async def verify_form(request: Request, state: State) -> FormContents:
    return await read_multipart(request, max_file_bytes=state.settings.max_upload_bytes, max_files=2)


async def identify_form(request: Request, state: State) -> FormContents:
    return await read_multipart(request, max_file_bytes=state.settings.max_upload_bytes, max_files=1)


EnrollFormData = Annotated[FormContents, Depends(enroll_form)]
VerifyFormData = Annotated[FormContents, Depends(verify_form)]
IdentifyFormData = Annotated[FormContents, Depends(identify_form)]
