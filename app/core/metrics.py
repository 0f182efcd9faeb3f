"""Prometheus metrics of the service's decisions and of what it holds, on an injectable registry.

The HTTP layer counts requests and refusals (``app.api.middleware``), the engine its queue and batches
(``app.engine.metrics``); these are the ones an operator watches for drift and abuse: how many
verifications and identifications matched, the distribution of their scores, and how many voiceprints
are enrolled (speakers locked out: ``voxgate_speaker_lockouts_total``, counted where the lockout rule is
wired, ``app.api.wiring``). Labels are bounded sets only (endpoint, decision, score type, the replica's
model key), never a tenant, key or speaker: a service with thousands of tenants must not make thousands
of series (per-tenant figures: ``voxgate tenants list``, the audit trail).
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DecisionEndpoint = Literal["verify", "identify"]
DECISION_ENDPOINTS: Final[tuple[DecisionEndpoint, ...]] = get_args(DecisionEndpoint)
DECISIONS: Final = ("match", "no_match")
# Cosine scores lie in [-1, 1], with decision thresholds between about 0.3 and 0.85 (finer steps there);
# AS-Norm scores are unbounded, with thresholds of a few units. One bucket set serves both score types.
# No bucket below 0: Prometheus drops a histogram's _sum when one is negative, and sum / count (the mean
# score) is the first sign of drift; every score up to 0 counts in the first bucket.
SCORE_BUCKETS: Final = (
    0.0,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.55,
    0.6,
    0.65,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.95,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
)


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "voxgate_decisions_total",
            "Answered /verify and /identify requests by decision: match (score >= threshold; for "
            "/identify a speaker was named) or no_match.",
            ("endpoint", "decision"),
            registry=registry,
        )
        for endpoint in DECISION_ENDPOINTS:  # every series exists from the start (rate() needs it)
            for decision in DECISIONS:
                self.decisions.labels(endpoint, decision)
        self.scores = Histogram(
            "voxgate_scores",
            "Scores of answered /verify requests and of the best candidate of /identify, by score type "
            "(cosine or asnorm): a shift in this distribution is a sign of drift (new microphones, "
            "channels, or an attack).",
            ("endpoint", "score_type"),
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.speakers = Gauge(
            "voxgate_speakers",
            "Voiceprints enrolled under the model this replica serves, in every tenant (expired ones "
            "excluded); read from Redis every few seconds, so every replica reports the same figure: "
            "aggregate with max, not sum.",
            ("model",),
            registry=registry,
            multiprocess_mode="livemax",  # each front-end worker reads the same count
        )

    def unregister(self, registry: CollectorRegistry) -> None:
        for metric in (self.decisions, self.scores, self.speakers):
            registry.unregister(metric)

    def observe_decision(
        self, endpoint: DecisionEndpoint, matched: bool, score: float | None, score_type: str
    ) -> None:
        """One answered /verify or /identify (``score``: None when /identify had nobody to compare)."""
        self.decisions.labels(endpoint, "match" if matched else "no_match").inc()
        if score is not None:
            self.scores.labels(endpoint, score_type).observe(score)
