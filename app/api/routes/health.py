"""GET /healthz (the process answers), GET /readyz (it can serve), GET /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import State
from app.api.schemas import Health, Precision, Readiness, ReadyChecks, SelfCheckReport

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: State) -> Response:
    """Ready = model loaded and warmed up, batcher running, Redis reachable, index in sync."""
    # Only what can fail while serving: the graph itself was checked before the app could start.
    checks = ReadyChecks(
        engine_running=state.engine.ready,  # warmed up and the batcher's worker thread alive
        redis=await state.tenants.root.ping(),
        index_synced=state.tenants.healthy,
    )
    ready = all(checks.model_dump().values())
    failing = [name for name, ok in checks.model_dump().items() if not ok]
    body = Readiness(
        ready=ready,
        checks=checks,
        provider=state.engine.provider,
        model=state.model_key,
        precision=Precision(state.manifest.precision),
        speakers_indexed=state.tenants.indexed_speakers(),
        selfcheck=SelfCheckReport.of(state.engine.selfcheck),
        detail=None if ready else f"not ready: {', '.join(failing)}",
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(state: State) -> Response:
    """HTTP request counts/latencies and the engine's queue, batch and inference metrics."""
    body = generate_latest(state.exposition)
    engine_registry = state.engine.metrics_registry
    if engine_registry is not None and engine_registry is not state.registry:  # an engine of its own
        body += generate_latest(engine_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
