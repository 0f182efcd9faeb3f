"""The typed application state the lifespan yields and routes receive (via ``app.api.deps``)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from app.access.auth import Gate
from app.api.forms import Forms
from app.core.settings import Settings
from app.engine.admission import Admission
from app.engine.engine import Engine
from app.engine.intake import AudioIntake
from app.engine.manifest import ModelManifest
from app.speakers.operations import SpeakerOperations
from app.store.tenants import TenantIndexes

STATE_KEY = "voxgate"


@dataclass(frozen=True)
class AppState:
    settings: Settings
    engine: Engine
    tenants: TenantIndexes
    speakers: SpeakerOperations
    forms: Forms
    admission: Admission
    intake: AudioIntake
    gate: Gate
    registry: CollectorRegistry  # where the app's metrics are
    exposition: CollectorRegistry  # what /metrics serves (every process's, in a multi-process service)

    @property
    def manifest(self) -> ModelManifest:
        return self.engine.manifest

    @property
    def model_key(self) -> str:
        return self.manifest.model_key()
