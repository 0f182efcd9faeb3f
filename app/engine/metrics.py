"""Prometheus metrics of the inference engine, on an injectable registry (tests use their own).

The API serves them with ``render_metrics(engine.metrics.registry)`` (or ``engine.metrics.render()``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_FRACTION_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def render_metrics(registry: CollectorRegistry) -> tuple[bytes, str]:
    """Body and content type of a /metrics response for ``registry``."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class EngineMetrics:
    """One batcher's metrics: the embedding graph's under ``voxgate_engine_*``, speech detection's under
    ``voxgate_vad_*`` (``prefix``), both on the engine's registry."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "voxgate_engine") -> None:
        # A private registry by default: several engines (tests, benchmarks) never collide.
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_wait = Histogram(
            f"{prefix}_queue_wait_seconds",
            "Time a segment waited in the queue before its batch started.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{prefix}_batch_size", "Segments per inference batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.padding_fraction = Histogram(
            f"{prefix}_batch_padding_fraction",
            "Share of each batch's audio tensor that is zero padding (incl. length bucketing).",
            buckets=_FRACTION_BUCKETS,
            registry=r,
        )
        self.padded_samples = Counter(
            f"{prefix}_padded_samples",
            "Audio samples run through the graph, padding included.",
            registry=r,
        )
        self.real_samples = Counter(
            f"{prefix}_real_samples", "Audio samples of real input run through the graph.", registry=r
        )
        self.inference_time = Histogram(
            f"{prefix}_inference_seconds",
            "Wall time of one batch in the inference backend.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Gauges: one inference process per service, but a restarted one must replace the dead one's value.
        self.queue_depth = Gauge(
            f"{prefix}_queue_depth",
            "Segments waiting for inference.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected_overloaded = Counter(
            f"{prefix}_rejected_overloaded",
            "Requests refused at once because the queue was full.",
            registry=r,
        )
        self.requests = Counter(
            f"{prefix}_requests",
            "Embedding requests by outcome.",
            ["outcome"],  # ok, overloaded, deadline_exceeded, cancelled, failed, unavailable
            registry=r,
        )
        self.batch_failures = Counter(
            f"{prefix}_batch_failures", "Batches whose inference raised.", registry=r
        )
        self.ready = Gauge(
            f"{prefix}_ready",
            "1 when the engine is warm and its worker alive.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.provider = Gauge(
            f"{prefix}_provider_info",
            "Execution provider in use (value 1).",
            ["provider"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def render(self) -> tuple[bytes, str]:
        return render_metrics(self.registry)
