"""Dependencies as ``Annotated`` aliases, so route signatures read as plain types.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, and the
handoff (a thread pool submit and wake-up per dependency) cost more CPU than the whole HTTP parsing of a
request (docs/performance.md)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, cast

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.access.auth import Caller
from app.access.scopes import Scope
from app.api.forms import EnrollForm, FormT, IdentifyForm, VerifyForm, read_form
from app.api.middleware import ARRIVED_STATE_KEY
from app.api.multipart import declared_length
from app.api.state import STATE_KEY, AppState
from app.audio.decode import check_declared_duration
from app.core.ids import SPEAKER_ID_PATTERN
from app.engine.admission import Admitted
from app.engine.engine import Waiting


async def get_state(request: Request) -> AppState:
    return cast(AppState, getattr(request.state, STATE_KEY))


State = Annotated[AppState, Depends(get_state)]


# Both ways of presenting a key, declared so that the OpenAPI document names them.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key (`voxgate keys create`).")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


async def authenticate(
    request: Request,
    state: State,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Caller:
    """The caller (tenant and key) of this request: 401 without a valid key, 429 over its rate limit.
    (``bearer`` and ``api_key`` declare the schemes in the OpenAPI document; the gate reads the raw
    headers, every value of them.)"""
    headers = request.headers
    return await state.gate.caller(
        headers.getlist("authorization"), headers.getlist("x-api-key"), _request_id(request)
    )


CallerDep = Annotated[Caller, Depends(authenticate)]


def _holding(scope: Scope) -> Callable[..., Awaitable[Caller]]:
    async def authorize(request: Request, state: State, caller: CallerDep) -> Caller:
        """The caller, when its key holds the scope; else 403 ``insufficient_scope``."""
        return await state.gate.authorize(caller, scope, _request_id(request))

    authorize.__name__ = f"authorize_{scope.name.lower()}"
    return authorize


# A route names the scope it needs by the caller it takes (declared first, so that the scope is checked
# before any body is read).
EnrollCaller = Annotated[Caller, Depends(_holding(Scope.ENROLL))]
VerifyCaller = Annotated[Caller, Depends(_holding(Scope.VERIFY))]
IdentifyCaller = Annotated[Caller, Depends(_holding(Scope.IDENTIFY))]
ReadCaller = Annotated[Caller, Depends(_holding(Scope.READ))]
DeleteCaller = Annotated[Caller, Depends(_holding(Scope.DELETE))]
ExportCaller = Annotated[Caller, Depends(_holding(Scope.EXPORT))]


def _request_id(request: Request) -> str | None:
    """The id the request middleware gave this request (logs, problems, the audit trail)."""
    value = getattr(request.state, "request_id", None)
    return str(value) if value is not None else None


async def request_id(request: Request) -> str | None:
    return _request_id(request)


RequestId = Annotated[str | None, Depends(request_id)]


async def request_waiting(request: Request, state: State) -> Waiting:
    """The request's deadline (from its arrival) and how to notice its client went away."""
    arrived = getattr(request.state, ARRIVED_STATE_KEY, None) or time.monotonic()
    return Waiting(
        deadline=arrived + state.settings.request_timeout_s, is_disconnected=request.is_disconnected
    )


RequestWaiting = Annotated[Waiting, Depends(request_waiting)]


# The pattern is declared (and enforced) by FastAPI; app.api.problems answers a mismatch with
# 422 ``invalid_speaker_id``, as for a malformed id in a form.
SpeakerIdPath = Annotated[str, Path(pattern=SPEAKER_ID_PATTERN, description="An enrolled speaker's id.")]


async def admit_request(
    request: Request, state: State, caller: CallerDep, waiting: RequestWaiting
) -> AsyncIterator[Admitted]:
    """Admission before the body is read (429/413 at once), after authentication: unauthenticated
    requests never hold memory. The memory is given back when the request ends."""
    admitted = state.admission.admit(declared_length(request), waiting.deadline)
    try:
        yield admitted
    finally:
        admitted.release()


AdmittedRequest = Annotated[Admitted, Depends(admit_request)]


async def _read(request: Request, state: State, admitted: Admitted, model: type[FormT]) -> FormT:
    """The request's form, read within its reservation: what decoding will likely need is prepaid now,
    before the body is read, so an admitted request is not refused half-way for memory."""
    settings = state.settings
    declared = declared_length(request)
    if declared is not None:
        admitted.reservation.prepay(
            state.intake.likely_decoding_bytes(declared, model.max_files()), "decoding this request's audio"
        )
    form = await read_form(
        request,
        model,
        max_file_bytes=settings.max_upload_bytes,
        on_unannounced_bytes=lambda n: admitted.reservation.grow(n, "the request body"),
        on_file_head=lambda head: check_declared_duration(head, settings.max_audio_seconds),
    )
    admitted.body_read()
    return form


async def enroll_form(request: Request, state: State, admitted: AdmittedRequest) -> EnrollForm:
    return await _read(request, state, admitted, state.forms.enroll)


async def verify_form(request: Request, state: State, admitted: AdmittedRequest) -> VerifyForm:
    return await _read(request, state, admitted, state.forms.verify)


async def identify_form(request: Request, state: State, admitted: AdmittedRequest) -> IdentifyForm:
    return await _read(request, state, admitted, state.forms.identify)


EnrollFormData = Annotated[EnrollForm, Depends(enroll_form)]
VerifyFormData = Annotated[VerifyForm, Depends(verify_form)]
IdentifyFormData = Annotated[IdentifyForm, Depends(identify_form)]
