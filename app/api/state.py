"""The typed application state the lifespan yields and routes receive (via ``app.api.deps``)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from app.engine.engine import EmbeddingEngine
from app.manifest import ModelManifest
from app.settings import Settings
from app.store.index import VoiceprintIndex
from app.store.redis_store import RedisVoiceprintStore
from app.store.sync import IndexSyncer

STATE_KEY = "voxgate"


@dataclass(frozen=True)
class AppState:
    settings: Settings
    engine: EmbeddingEngine
    store: RedisVoiceprintStore
    index: VoiceprintIndex
    syncer: IndexSyncer
    registry: CollectorRegistry

    @property
    def manifest(self) -> ModelManifest:
        return self.engine.manifest

    @property
    def model_key(self) -> str:
        return self.manifest.model_key()

    @property
    def default_threshold(self) -> float:
        if self.settings.threshold is not None:
            return self.settings.threshold
        return self.manifest.default_threshold

    @property
    def min_speech_seconds(self) -> float:
        # The model may need more speech than the service default for a stable embedding.
        return max(self.settings.min_speech_seconds, self.manifest.min_speech_seconds)
