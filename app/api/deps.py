"""Dependencies as ``Annotated`` aliases, so route signatures read as plain types."""

from __future__ import annotations

import time
from typing import Annotated, cast

from fastapi import Depends, Path, Request

from app.api.forms import EnrollForm, IdentifyForm, VerifyForm, read_form
from app.api.state import STATE_KEY, AppState
from app.speakers import Waiting
from app.store.keys import SPEAKER_ID_PATTERN

# Set by the request middleware when the request arrived: the deadline covers the whole request.
ARRIVED_KEY = "arrived_monotonic"


def get_state(request: Request) -> AppState:
    return cast(AppState, getattr(request.state, STATE_KEY))


State = Annotated[AppState, Depends(get_state)]


def current_tenant(state: State) -> str:
    """The tenant every operation of this request acts for."""
    return state.settings.tenant


Tenant = Annotated[str, Depends(current_tenant)]


def request_waiting(request: Request, state: State) -> Waiting:
    """The request's deadline (from its arrival) and how to notice its client went away."""
    arrived = getattr(request.state, ARRIVED_KEY, None) or time.monotonic()
    return Waiting(
        deadline=arrived + state.settings.request_timeout_s, is_disconnected=request.is_disconnected
    )


RequestWaiting = Annotated[Waiting, Depends(request_waiting)]


# The pattern is declared (and enforced) by FastAPI; app.api.problems answers a mismatch with
# 422 ``invalid_speaker_id``, as for a malformed id in a form.
SpeakerIdPath = Annotated[str, Path(pattern=SPEAKER_ID_PATTERN, description="An enrolled speaker's id.")]


async def enroll_form(request: Request, state: State) -> EnrollForm:
    return await read_form(request, state.forms.enroll, max_file_bytes=state.settings.max_upload_bytes)


async def verify_form(request: Request, state: State) -> VerifyForm:
    return await read_form(request, state.forms.verify, max_file_bytes=state.settings.max_upload_bytes)


async def identify_form(request: Request, state: State) -> IdentifyForm:
    return await read_form(request, state.forms.identify, max_file_bytes=state.settings.max_upload_bytes)


EnrollFormData = Annotated[EnrollForm, Depends(enroll_form)]
VerifyFormData = Annotated[VerifyForm, Depends(verify_form)]
IdentifyFormData = Annotated[IdentifyForm, Depends(identify_form)]
