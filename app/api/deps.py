"""Dependencies as ``Annotated`` aliases, so route signatures read as plain types.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, and the
handoff (a thread pool submit and wake-up per dependency) cost more CPU than the whole HTTP parsing of a
request. The routes that take audio get everything from one dependency (``FormCall``): FastAPI's solving
of the six small ones it replaced cost about 0.3 CPU-ms per request (docs/performance.md)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Generic, cast

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.access.auth import Caller
from app.access.scopes import Scope
from app.api.forms import EnrollForm, Forms, FormT, IdentifyForm, VerifyForm, read_form
from app.api.middleware import ARRIVED_STATE_KEY, note_caller
from app.api.multipart import declared_length
from app.api.state import STATE_KEY, AppState
from app.audio.decode import check_declared_duration
from app.core.ids import SPEAKER_ID_PATTERN
from app.engine.admission import Admitted
from app.engine.engine import Waiting


def _state(request: Request) -> AppState:
    return cast(AppState, getattr(request.state, STATE_KEY))


async def get_state(request: Request) -> AppState:
    return _state(request)


State = Annotated[AppState, Depends(get_state)]


# Both ways of presenting a key, declared so that the OpenAPI document names them.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key (`voxgate keys create`).")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


# The schemes are taken only so that the OpenAPI document names them: the gate reads the raw headers.
BearerScheme = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
ApiKeyScheme = Annotated[str | None, Security(api_key_scheme)]


async def _caller(request: Request, state: AppState) -> Caller:
    """The caller (tenant and key) of this request: 401 without a valid key, 429 over its rate limit.
    The gate reads every value of both headers. The caller is noted for the access log as soon as its
    key is accepted, so a rate-limited request's line names its key too."""
    headers = request.headers
    return await state.gate.caller(
        headers.getlist("authorization"),
        headers.getlist("x-api-key"),
        _request_id(request),
        identified=lambda who: note_caller(request.scope.setdefault("state", {}), who.tenant, who.key_id),
    )


async def authenticate(request: Request, state: State, bearer: BearerScheme, api_key: ApiKeyScheme) -> Caller:
    return await _caller(request, state)


CallerDep = Annotated[Caller, Depends(authenticate)]


def _holding(scope: Scope) -> Callable[..., Awaitable[Caller]]:
    async def authorize(request: Request, state: State, caller: CallerDep) -> Caller:
        """The caller, when its key holds the scope; else 403 ``insufficient_scope``."""
        return await state.gate.authorize(caller, scope, _request_id(request))

    authorize.__name__ = f"authorize_{scope.name.lower()}"
    return authorize


# A route names the scope it needs by the caller it takes.
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


def _waiting(request: Request, state: AppState) -> Waiting:
    """The request's deadline (from its arrival) and how to notice its client went away."""
    arrived = getattr(request.state, ARRIVED_STATE_KEY, None) or time.monotonic()
    return Waiting(
        deadline=arrived + state.settings.request_timeout_s, is_disconnected=request.is_disconnected
    )


# The pattern is declared (and enforced) by FastAPI; app.api.problems answers a mismatch with
# 422 ``invalid_speaker_id``, as for a malformed id in a form.
SpeakerIdPath = Annotated[str, Path(pattern=SPEAKER_ID_PATTERN, description="An enrolled speaker's id.")]


@dataclass(frozen=True, slots=True)
class FormCall(Generic[FormT]):
    """A request to a route that takes audio, authenticated, authorized, admitted and its form read."""

    state: AppState
    caller: Caller
    request_id: str | None
    form: FormT
    admitted: Admitted
    waiting: Waiting


def _form_call(
    scope: Scope, form_of: Callable[[Forms], type[FormT]]
) -> Callable[..., AsyncIterator[FormCall[FormT]]]:
    async def form_call(
        request: Request, bearer: BearerScheme, api_key: ApiKeyScheme
    ) -> AsyncIterator[FormCall[FormT]]:
        """In this order: the key and its scope (401/403/429 before any body is read), admission
        (429/413 at once; unauthenticated requests never hold memory), then the form, read within the
        request's reservation. The memory is given back when the request ends."""
        state = _state(request)
        request_id = _request_id(request)
        caller = await state.gate.authorize(await _caller(request, state), scope, request_id)
        waiting = _waiting(request, state)
        admitted = state.admission.admit(declared_length(request), waiting.deadline)
        try:
            form = await _read(request, state, admitted, form_of(state.forms))
            yield FormCall(state, caller, request_id, form, admitted, waiting)
        finally:
            admitted.release()

    form_call.__name__ = f"{scope.name.lower()}_call"
    return form_call


async def _read(request: Request, state: AppState, admitted: Admitted, model: type[FormT]) -> FormT:
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


EnrollCall = Annotated[FormCall[EnrollForm], Depends(_form_call(Scope.ENROLL, lambda f: f.enroll))]
VerifyCall = Annotated[FormCall[VerifyForm], Depends(_form_call(Scope.VERIFY, lambda f: f.verify))]
IdentifyCall = Annotated[FormCall[IdentifyForm], Depends(_form_call(Scope.IDENTIFY, lambda f: f.identify))]
