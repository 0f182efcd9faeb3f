"""Engine configuration: the one place where settings become inference and batching parameters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.core.settings import CudnnConvAlgoSearch, ProviderName, Settings


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """How an ONNX Runtime session is built."""

    providers: Sequence[ProviderName] | Literal["auto"] = "auto"
    intra_op_threads: int = 0  # 0 = every core this process may use
    tensorrt_cache_dir: Path | None = None
    max_batch_size: int = 32
    cudnn_conv_algo_search: CudnnConvAlgoSearch = "HEURISTIC"  # CUDA provider only


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    max_batch_size: int = 32
    max_batch_samples: int = 240 * 16000
    max_wait_s: float = 0.005
    queue_size: int = 512


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model_dir: Path
    backend: BackendOptions = field(default_factory=BackendOptions)
    max_batch_audio_seconds: float = 240.0
    max_wait_s: float = 0.005
    queue_size: int = 512
    request_timeout_s: float = 30.0
    warmup: bool = True
    max_audio_seconds: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings, model_dir: Path | None = None) -> EngineConfig:
        return cls(
            model_dir=model_dir or settings.model_dir,
            backend=BackendOptions(
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
                tensorrt_cache_dir=settings.tensorrt_cache_dir,
                max_batch_size=settings.max_batch_size,
                cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
            ),
            max_batch_audio_seconds=settings.max_batch_audio_seconds,
            max_wait_s=settings.max_wait_ms / 1000.0,
            queue_size=settings.queue_size,
            request_timeout_s=settings.request_timeout_s,
            warmup=settings.warmup,
            max_audio_seconds=settings.max_audio_seconds,
        )

    def batcher(self, sample_rate: int) -> BatcherConfig:
        return BatcherConfig(
            max_batch_size=self.backend.max_batch_size,
            max_batch_samples=round(self.max_batch_audio_seconds * sample_rate),
            max_wait_s=self.max_wait_s,
            queue_size=self.queue_size,
        )
