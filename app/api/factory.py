"""The application factory: assembles routes, error rendering and middleware. The lifespan owns every
long-lived resource - the inference engine, and what ``app.services.open_state`` builds (Redis, the
tenants' indexes, retention, admission, the request gate) - and hands them to routes as one typed
``AppState`` (see ``app.api.deps``). Nothing heavy happens at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.api.forms import build_forms
from app.api.middleware import RequestContextMiddleware
from app.api.problems import install_problem_handlers
from app.api.routes import docs, enroll, health, identify, openapi, speakers, verify
from app.api.state import STATE_KEY
from app.api.wiring import open_state
from app.core.memory import startup_heap_frozen
from app.core.settings import Settings
from app.engine.board import WorkerSlot
from app.engine.engine import EmbeddingEngine, Engine

log = logging.getLogger(__name__)

API_DESCRIPTION = """\
Enroll speakers, verify a voice against an enrolled speaker or a second recording, identify a voice
among the enrolled speakers. Scores are raw **cosine similarities** in [-1, 1], or AS-Norm scores when
the service normalises them (`score_type` says which; `llr` is the calibrated log-likelihood ratio when
enabled); `match` means score >= threshold. The threshold is the operator's - the model's, or the one set
for the tenant or the API key - unless the request gives a stricter one (`threshold_source` says which); a
request's threshold below the operator's floor is refused unless the key holds `threshold-override`. Only
speech counts: noise, music, tones and silence are `no_speech`.

Audio: WAV (PCM 8/16/24/32-bit, float), FLAC, OGG (Vorbis, Opus) or MP3, sample rates 4-768 kHz, any channel
count (mixed to mono, resampled to 16 kHz). The format is recognised from the file's content, not its
name: content that is no supported audio container (e.g. a text file named `.wav`) or a declared
non-audio content type is **415 `unsupported_media_type`**; a supported container that cannot be
decoded (corrupt, truncated, empty) is **400 `invalid_audio`** (an MP3 without a length header states no
length, so one cut short is a valid, shorter MP3). Channels are averaged: a stereo recording whose
channels cancel out (one phase-inverted) is silence, `no_speech`.

Form fields: `candidates` (and `audio` on `/enroll`) may repeat; any other field given twice is
**422 `invalid_request`**; a blank field counts as absent.

Times (`created_at`, `updated_at`, `expires_at`) are Unix time: seconds since 1970-01-01T00:00:00Z, as
a float (the `voxgate` command's tables show the same instants as ISO 8601 UTC; its `--json` output
gives Unix time, like the API).

Every error is an RFC 9457 `application/problem+json` body (`type`, `title`, `status`, `detail`,
`request_id`, and `instance`, the path, once the request's headers were read) with a stable `code`:
`invalid_audio` 400; `missing_api_key`, `invalid_api_key`, `revoked_api_key`, `expired_api_key` 401 (with
`WWW-Authenticate`); `insufficient_scope` (the key lacks the endpoint's scope), `threshold_below_floor`
(a threshold below the operator's floor) 403; `speaker_not_found` 404;
`request_timeout` 408 (headers or body too slow); `unlike_voiceprint` (a recording unlike the voiceprint)
and `duplicate_audio` (a recording already enrolled) 409, when enrollment refuses them;
`audio_too_large` 413 (from `Content-Length` before the body is read, or while it streams in);
`unsupported_media_type` 415; `audio_too_long`, `no_speech`, `not_enough_speech`, `invalid_speaker_id`,
`invalid_request` 422; `speaker_locked` 423 (too many failed verifications of the speaker, with
`Retry-After`: not to be retried at once); `overloaded` (the server), `rate_limited` (the API key) and
`speaker_busy` (as many verifications of one speaker under way as its lockout allows) 429, with
`Retry-After`; `internal_error` 500 (a bug: the traceback is
logged under the request id); `store_unavailable`, `engine_unavailable`, `connection_limit` 503;
`store_full` 507 (Redis at its memory limit refuses writes); `deadline_exceeded` 504. A refused request
never changes stored data.

Authentication: when the service requires keys (`VOXGATE_AUTH`), every endpoint but `/healthz`,
`/readyz`, `/metrics`, `/docs` and `/openapi.json` needs `Authorization: Bearer KEY` or `X-API-Key: KEY`
(one key; two different ones are `invalid_api_key`); the key's tenant is the only tenant a request can
see, and its scopes say which endpoints it may call: `enroll`, `verify`, `identify`, `read` (list and get
speakers), `delete`, `export` (`GET /speakers/{id}/export`), and `threshold-override`.
"""


def create_app(
    settings: Settings | None = None,
    *,
    model_dir: Path | None = None,
    engine: Engine | None = None,
    registry: CollectorRegistry | None = None,
    engine_factory: Callable[[], Engine] | None = None,
    slot: WorkerSlot | None = None,
    exposition: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the app. ``engine``: an already started engine to share (the caller starts and stops it);
    without it the lifespan builds one (``engine_factory``, by default an ``EmbeddingEngine`` from
    ``settings`` / ``model_dir``) and owns it. ``registry``: where the app's Prometheus metrics are
    (``voxgate serve`` adds the HTTP connection metrics to it); a new one by default. A front-end worker
    of a multi-process service passes its ``slot`` on the board (admission and the memory budget are
    the service's) and the ``exposition`` registry /metrics serves (every process's metrics)."""
    settings = settings or Settings.model_validate({})
    if settings.redis_url is None:
        raise ValueError(
            "settings.redis_url is unset: `voxgate serve` starts an embedded Redis, tests pass one"
        )
    registry = registry if registry is not None else CollectorRegistry()
    forms = build_forms(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        owns_engine = engine is None
        if engine is not None:
            eng: Engine = engine
        elif engine_factory is not None:
            eng = engine_factory()
        else:
            eng = EmbeddingEngine.from_settings(settings, model_dir, registry=registry)
        if owns_engine:
            await eng.start()
        try:
            async with open_state(settings, eng, forms, registry, slot=slot, exposition=exposition) as state:
                with startup_heap_frozen():
                    yield {STATE_KEY: state}
        finally:
            # Uvicorn has stopped accepting and drained requests by now: the state is torn down in
            # reverse order of building, the engine (which drains its queue) last.
            if owns_engine:
                await eng.stop()

    app = FastAPI(
        title="VoxGate",
        version="0.1.0",
        summary="Speaker verification and identification",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=openapi.operation_id,
        **docs.FASTAPI_DOCS_OPTIONS,  # /docs from packaged assets (works offline), no /redoc
    )
    openapi.install_openapi(app, forms, keys_required=settings.auth_required)
    install_problem_handlers(app)
    app.add_middleware(RequestContextMiddleware, registry=registry)
    # The form-taking routes are built per app: their OpenAPI bodies carry this app's limits.
    for build in (enroll.build_router, verify.build_router, identify.build_router):
        app.include_router(build(forms))
    for module in (speakers, health, docs):
        app.include_router(module.router)
    return app
