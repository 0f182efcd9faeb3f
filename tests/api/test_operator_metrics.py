"""What an operator watches: every refusal counted by its problem code, a key's own 429 told apart from
the server's (by reason), access log lines naming tenant, key and problem, decisions and scores per
endpoint, and the enrolled-speakers gauge - against a real redis-server, the real app and real
`voxgate serve` processes."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.api.factory import create_app
from app.api.middleware import OTHER_PROBLEM, RequestContextMiddleware, problem_label
from app.api.problems import install_problem_handlers
from app.core.errors import OVERLOAD_REASONS, Overloaded, RateLimited
from app.core.logs import configure_logging
from app.core.settings import Settings
from app.engine import ipc
from tests.support.access import bearer, new_key
from tests.support.data import REPO_ROOT, speech_files, wav_part
from tests.support.redis_server import RedisProcess, settings_for
from tests.support.service import LiveService, run_voxgate

SPEECH = speech_files()


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """JSON logs into a buffer (put back afterwards: logging is process-wide)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging(Settings(log_json=True, log_level="INFO"), stream=stream)
    yield stream
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def access_log(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == "voxgate.access"]


def problems(registry: CollectorRegistry, code: str) -> float:
    return registry.get_sample_value("voxgate_http_problems_total", {"code": code}) or 0.0


# --- every refusal by its code; the two 429s apart ---------------------------------------------------
def test_refusals_are_counted_by_code_and_logged_with_tenant_key_and_problem(
    redis_server: RedisProcess, tiny_model: Path, access_lines: io.StringIO
) -> None:
    settings = settings_for(redis_server.url, tiny_model, auth="required")
    key_id, key = new_key(settings, "acme", rate=0.001, burst=2)
    registry = CollectorRegistry()
    with TestClient(create_app(settings, registry=registry), raise_server_exceptions=False) as c:
        assert c.get("/speakers", headers=bearer(key)).status_code == 200
        missing = c.get("/speakers/nobody", headers=bearer(key))
        limited = c.get("/speakers", headers=bearer(key))
        anonymous = c.get("/speakers")
    assert (missing.json()["code"], limited.json()["code"]) == ("speaker_not_found", "rate_limited")
    assert anonymous.json()["code"] == "missing_api_key"
    assert problems(registry, "speaker_not_found") == 1
    assert problems(registry, "rate_limited") == 1
    assert problems(registry, "missing_api_key") == 1
    assert problems(registry, "overloaded") == 0
    for reason in OVERLOAD_REASONS:  # a key's own 429 is no overload refusal
        assert registry.get_sample_value("voxgate_overload_refusals_total", {"reason": reason}) == 0

    ok, not_found, rate_limited, unauthenticated = access_log(access_lines)
    assert (ok["tenant"], ok["key_id"], ok["problem"], ok["status"]) == ("acme", key_id, None, 200)
    assert (not_found["problem"], not_found["key_id"]) == ("speaker_not_found", key_id)
    # The rate-limited request names the key that went over its limit.
    assert (rate_limited["status"], rate_limited["problem"]) == (429, "rate_limited")
    assert (rate_limited["tenant"], rate_limited["key_id"]) == ("acme", key_id)
    assert "reason" not in rate_limited
    assert (unauthenticated["tenant"], unauthenticated["key_id"]) == (None, None)
    assert unauthenticated["problem"] == "missing_api_key"


def test_an_overload_refusal_is_counted_by_its_reason(
    redis_server: RedisProcess, tiny_model: Path, access_lines: io.StringIO
) -> None:
    # A deadline that has passed when admission asks: refused by expected wait, before the body is read
    # (the refusal the engine's old queue-full counter never saw).
    settings = settings_for(redis_server.url, tiny_model, request_timeout_s=1e-9)
    registry = CollectorRegistry()
    with TestClient(create_app(settings, registry=registry), raise_server_exceptions=False) as c:
        refused = c.post("/verify", data={"speaker_id": "x"}, files=[wav_part(SPEECH["vctk_p225"][0])])
    assert (refused.status_code, refused.json()["code"]) == (429, "overloaded")
    assert problems(registry, "overloaded") == 1
    assert registry.get_sample_value("voxgate_overload_refusals_total", {"reason": "expected_wait"}) == 1
    (line,) = access_log(access_lines)
    assert (line["problem"], line["reason"], line["tenant"], line["key_id"]) == (
        "overloaded",
        "expected_wait",
        "default",
        None,
    )


def test_every_overload_reason_and_unknown_codes_get_their_own_label(access_lines: io.StringIO) -> None:
    registry = CollectorRegistry()
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(RequestContextMiddleware, registry=registry)

    @app.get("/overloaded/{reason}")
    async def overloaded(reason: str) -> None:
        raise Overloaded("busy", reason=reason)  # type: ignore[arg-type]

    @app.get("/limited")
    async def limited() -> None:
        raise RateLimited("slow down")

    with TestClient(app) as client:
        for reason in OVERLOAD_REASONS:
            assert client.get(f"/overloaded/{reason}").status_code == 429
        assert client.get("/limited").json()["code"] == "rate_limited"
        assert client.get("/no/such/route").status_code == 404
    for reason in OVERLOAD_REASONS:
        assert registry.get_sample_value("voxgate_overload_refusals_total", {"reason": reason}) == 1
    assert problems(registry, "overloaded") == len(OVERLOAD_REASONS)
    assert problems(registry, "rate_limited") == 1
    assert problems(registry, "not_found") == 1
    assert [line["reason"] for line in access_log(access_lines)[: len(OVERLOAD_REASONS)]] == list(
        OVERLOAD_REASONS
    )
    # Label values are the service's own codes only.
    assert problem_label("speaker_not_found") == "speaker_not_found"
    assert problem_label("method_not_allowed") == "method_not_allowed"
    assert problem_label("x" * 80) == OTHER_PROBLEM


def test_an_overload_reason_survives_the_wire_between_processes() -> None:
    # Refused in the inference process, answered by a front-end worker: the reason travels along.
    for reason in OVERLOAD_REASONS:
        sent = Overloaded("busy", retry_after_s=2.0, reason=reason)
        received = ipc.decode_error(ipc.encode_error(7, sent))
        assert isinstance(received, Overloaded)
        assert (received.reason, received.retry_after_s, received.extra) == (reason, 2.0, {})


# --- decisions, scores, speakers -------------------------------------------------------------------
def test_decisions_and_scores_are_counted_per_endpoint(redis_server: RedisProcess, tiny_model: Path) -> None:
    settings = settings_for(redis_server.url, tiny_model)
    registry = CollectorRegistry()
    enrolled, other = SPEECH["vctk_p225"][0], SPEECH["vctk_p225"][1]
    with TestClient(create_app(settings, registry=registry)) as c:
        assert c.post("/enroll", data={"speaker_id": "alice"}, files=[wav_part(enrolled)]).status_code == 200
        same = c.post("/verify", data={"speaker_id": "alice"}, files=[wav_part(enrolled)]).json()
        # A stricter threshold than any score of two recordings: no match.
        strict = c.post(
            "/verify", data={"speaker_id": "alice", "threshold": "1"}, files=[wav_part(other)]
        ).json()
        named = c.post("/identify", files=[wav_part(enrolled)]).json()
        nobody = c.post("/identify", data={"threshold": "1"}, files=[wav_part(other)]).json()
        metrics = c.get("/metrics").text
        # While the app runs (its lifespan registers these metrics and removes them at its end).
        samples = {
            (s.name, frozenset(s.labels.items())): s.value for m in registry.collect() for s in m.samples
        }
    assert (same["match"], strict["match"]) == (True, False)
    assert (named["speaker_id"], nobody["speaker_id"]) == ("alice", None)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    for endpoint in ("verify", "identify"):
        assert value("voxgate_decisions_total", endpoint=endpoint, decision="match") == 1
        assert value("voxgate_decisions_total", endpoint=endpoint, decision="no_match") == 1
        assert value("voxgate_scores_count", endpoint=endpoint, score_type="cosine") == 2
        observed = value("voxgate_scores_sum", endpoint=endpoint, score_type="cosine")
        assert observed is not None
    assert value("voxgate_scores_sum", endpoint="verify", score_type="cosine") == pytest.approx(
        same["score"] + strict["score"], abs=1e-6
    )
    for bound in ("0.5", "0.9", "0.95", "1.0"):
        below = sum(score <= float(bound) for score in (same["score"], strict["score"]))
        assert value("voxgate_scores_bucket", endpoint="verify", score_type="cosine", le=bound) == below
    assert 'voxgate_decisions_total{decision="match",endpoint="verify"} 1.0' in metrics


def test_the_speakers_gauge_counts_every_tenant_of_the_model_from_any_replica(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    base = settings_for(redis_server.url, tiny_model)
    for tenant, speakers in (("t1", ["a", "b"]), ("t2", ["c"])):
        with TestClient(create_app(base.model_copy(update={"tenant": tenant}))) as c:
            for speaker in speakers:
                files = [wav_part(SPEECH["vctk_p226"][0])]
                assert c.post("/enroll", data={"speaker_id": speaker}, files=files).status_code == 200
    registry = CollectorRegistry()
    with TestClient(create_app(base.model_copy(update={"tenant": "t3"}), registry=registry)) as c:
        model = c.get("/readyz").json()["model"]
        assert registry.get_sample_value("voxgate_speakers", {"model": model}) == 3
        assert re.search(rf'voxgate_speakers\{{model="{re.escape(model)}"\}} 3\.0', c.get("/metrics").text)


# --- a real process: the access log line and /metrics ----------------------------------------------
@pytest.mark.parametrize("workers", ["0", "2"], ids=["one process", "two workers"])
def test_a_served_process_logs_and_counts_a_rate_limited_key(
    redis_server: RedisProcess, tiny_model: Path, tmp_path: Path, workers: str
) -> None:
    settings = {"auth": "required", "log_level": "INFO", "workers": workers}
    with LiveService(tiny_model, redis_server.url, tmp_path, settings) as service:
        env = {
            "REDIS_URL": redis_server.url,
            "VOXGATE_REDIS_NAMESPACE": service.env["VOXGATE_REDIS_NAMESPACE"],
        }
        created = run_voxgate("keys", "create", "--tenant", "acme", "--rate", "0.01", "--burst", "1", env=env)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        key_id = key.split("_", 2)[1]
        answers = [httpx.get(f"{service.url}/speakers", headers=bearer(key)) for _ in range(2)]
        assert [r.status_code for r in answers] == [200, 429]
        metrics = httpx.get(f"{service.url}/metrics").text
    assert 'voxgate_http_problems_total{code="rate_limited"} 1.0' in metrics
    assert 'voxgate_overload_refusals_total{reason="expected_wait"} 0.0' in metrics
    # docs/operations.md lists every metric a served process exports.
    documented = (REPO_ROOT / "docs" / "operations.md").read_text()
    types = [line.split()[2:4] for line in metrics.splitlines() if line.startswith("# TYPE ")]
    exported = {name for name, kind in types if not (name.endswith("_created") and kind == "gauge")}
    assert len(exported) >= 20
    assert [name for name in sorted(exported) if f"`{name}`" not in documented] == []
    lines = [json.loads(line) for line in service.log.splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("logger") == "voxgate.access" and line["status"] == 429]
    assert [(line["tenant"], line["key_id"], line["problem"]) for line in refused] == [
        ("acme", key_id, "rate_limited")
    ]
