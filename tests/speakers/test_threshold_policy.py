"""Who sets a decision's threshold: the model, the tenant's policy (`voxgate tenants policy`), the API key,
and the request only within the floor (403 threshold_below_floor unless the key holds threshold-override);
answers say where it came from; a lowered threshold never extends retention. The rule as pure logic, then
through the real app on a real redis-server and the real command line."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.access.scopes import ALL_SCOPES
from app.api.factory import create_app
from app.core.errors import ThresholdBelowFloor
from app.core.settings import Settings
from app.speakers.policy import Policy
from app.store.thresholds import ThresholdOverrides
from tests.support.access import audit_events, bearer, new_key
from tests.support.data import speech_files, wav_part
from tests.support.redis_server import RedisProcess, settings_for
from tests.support.service import run_voxgate

SPEECH = speech_files()["librispeech_1688"]
NONE = ThresholdOverrides()


# --- the rule ---------------------------------------------------------------------------------------------
def policy(source: str = "manifest default_threshold") -> Policy:
    return Policy(threshold=0.75, min_speech_seconds=1.0, enroll_speech_seconds=8.0, threshold_source=source)


def applied(
    tenant: ThresholdOverrides, key: ThresholdOverrides, requested: float | None, may_lower: bool = False
) -> tuple[object, ...]:
    a = policy().threshold_for(tenant, key, requested, may_lower=may_lower)
    return a.value, a.source, a.floor, a.floor_source, a.lowered


def test_by_default_the_models_threshold_is_the_floor() -> None:
    assert applied(NONE, NONE, None) == (0.75, "model", 0.75, "model", False)
    assert applied(NONE, NONE, 0.8) == (0.8, "request", 0.75, "model", False)  # stricter: fine
    assert applied(NONE, NONE, 0.75) == (0.75, "request", 0.75, "model", False)
    with pytest.raises(ThresholdBelowFloor) as refused:
        applied(NONE, NONE, 0.7)
    assert (refused.value.status, refused.value.code) == (403, "threshold_below_floor")
    assert refused.value.extra == {"threshold": 0.7, "threshold_floor": 0.75, "floor_source": "model"}
    assert applied(NONE, NONE, -1.0, may_lower=True) == (-1.0, "request", 0.75, "model", True)
    service = policy("VOXGATE_THRESHOLD").threshold_for(NONE, NONE, None, may_lower=False)
    assert (service.value, service.source) == (0.75, "service")


def test_tenant_and_key_set_the_threshold_and_the_floor() -> None:
    assert applied(ThresholdOverrides(0.8), NONE, None) == (0.8, "tenant", 0.8, "tenant", False)
    with pytest.raises(ThresholdBelowFloor):
        applied(ThresholdOverrides(0.8), NONE, 0.78)  # the tenant's threshold is its floor
    # A floor below the threshold lets requests lower it that far; such a decision is "lowered".
    assert applied(ThresholdOverrides(floor=0.6), NONE, 0.65) == (0.65, "request", 0.6, "tenant", True)
    with pytest.raises(ThresholdBelowFloor):
        applied(ThresholdOverrides(floor=0.6), NONE, 0.55)
    # The key's own over the tenant's.
    assert applied(ThresholdOverrides(0.8, 0.6), ThresholdOverrides(0.9), None) == (
        0.9,
        "key",
        0.6,
        "tenant",
        False,
    )
    assert applied(ThresholdOverrides(0.8), ThresholdOverrides(floor=0.5), 0.55) == (
        0.55,
        "request",
        0.5,
        "key",
        True,
    )
    # A floor above the threshold below it: the floor holds for decisions that give none too.
    assert applied(ThresholdOverrides(0.7), ThresholdOverrides(floor=0.85), None) == (
        0.85,
        "key",
        0.85,
        "key",
        False,
    )


def test_a_policy_that_cannot_mean_anything_is_refused_or_ignored() -> None:
    for threshold, floor in [(float("nan"), None), (None, float("inf")), (0.5, 0.6), (1e6, None)]:
        with pytest.raises(ValueError, match="threshold"):
            ThresholdOverrides(threshold, floor)
    # Edited by hand in Redis into nonsense: not set (the level above applies), never a failed decision.
    assert ThresholdOverrides.parse({b"threshold": b"abc", b"threshold_floor": b"nan"}) == NONE
    assert ThresholdOverrides.parse({b"threshold": b"0.5", b"threshold_floor": b"0.6"}) == ThresholdOverrides(
        floor=0.6
    )


# --- through the app ---------------------------------------------------------------------------------------


@pytest.fixture
def settings(redis_server: RedisProcess, tiny_model: Path) -> Settings:
    return settings_for(redis_server.url, tiny_model, auth="required", rate_limit_rps=0.0, retention_days=30)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _env(settings: Settings) -> dict[str, str]:
    return {"REDIS_URL": settings.redis_url or "", "VOXGATE_REDIS_NAMESPACE": settings.redis_namespace}


def _verify(
    client: TestClient, key: str, threshold: str | None = None, audio: Path = SPEECH[0]
) -> dict[str, object]:
    data = {"speaker_id": "alice"} | ({} if threshold is None else {"threshold": threshold})
    answer: dict[str, object] = client.post(
        "/verify", headers=bearer(key), data=data, files=[wav_part(audio)]
    ).json()
    return answer


def _enroll(client: TestClient, key: str) -> None:
    r = client.post("/enroll", headers=bearer(key), data={"speaker_id": "alice"}, files=[wav_part(SPEECH[0])])
    assert r.status_code == 200, r.text


def _identify(client: TestClient, key: str, threshold: str | None = None) -> dict[str, object]:
    data = {} if threshold is None else {"threshold": threshold}
    answer: dict[str, object] = client.post(
        "/identify", headers=bearer(key), data=data, files=[wav_part(SPEECH[0])]
    ).json()
    return answer


def test_a_client_may_ask_for_a_stricter_decision_never_a_laxer_one(
    client: TestClient, settings: Settings
) -> None:
    _, key = new_key(settings, "acme")
    _enroll(client, key)
    plain = _verify(client, key)
    assert (plain["threshold"], plain["threshold_source"], plain["match"]) == (0.5, "model", True)
    assert (_verify(client, key, "0.9")["threshold_source"]) == "request"
    for answer in (_verify(client, key, "-1"), _identify(client, key, "0.1")):
        assert (answer["status"], answer["code"], answer["threshold_floor"], answer["floor_source"]) == (
            403, "threshold_below_floor", 0.5, "model",
        )  # fmt: skip
    assert _identify(client, key)["threshold_source"] == "model"
    # ... unless its key holds threshold-override.
    _, override = new_key(settings, "acme", scopes=ALL_SCOPES)
    lowered = _verify(client, override, "-1")
    assert (lowered["threshold"], lowered["threshold_source"], lowered["match"]) == (-1.0, "request", True)
    assert _identify(client, override, "-1")["threshold_source"] == "request"
    # Every decision is audited with its threshold and where it came from; the refusals with their code.
    decisions = [
        (e.action, e.outcome, e.threshold, e.threshold_source)
        for e in audit_events(settings, "acme")
        if e.action in ("verify", "identify")
    ]
    assert decisions == [
        ("verify", "ok", 0.5, "model"),
        ("verify", "ok", 0.9, "request"),
        ("verify", "threshold_below_floor", None, None),
        ("identify", "threshold_below_floor", None, None),
        ("identify", "ok", 0.5, "model"),
        ("verify", "ok", -1.0, "request"),
        ("identify", "ok", -1.0, "request"),
    ]


def test_the_operator_sets_a_tenants_policy_and_a_keys(client: TestClient, settings: Settings) -> None:
    env = _env(settings)
    _, key = new_key(settings, "acme")
    _enroll(client, key)
    set_floor = run_voxgate("tenants", "policy", "acme", "--threshold-floor", "0.2", env=env)
    assert set_floor.returncode == 0, set_floor.stderr
    assert set_floor.stdout.strip() == "tenant 'acme': threshold the model's, floor 0.2"
    lowered = _verify(client, key, "0.3")  # at once, no restart
    assert (lowered["threshold"], lowered["threshold_source"]) == (0.3, "request")
    assert _verify(client, key, "0.1")["code"] == "threshold_below_floor"
    assert run_voxgate("tenants", "policy", "acme", "--threshold", "0.95", env=env).returncode == 0
    shown = json.loads(run_voxgate("tenants", "policy", "acme", "--json", env=env).stdout)
    assert shown == {"tenant": "acme", "threshold": 0.95, "threshold_floor": 0.2}  # the floor kept
    strict = _verify(client, key, audio=SPEECH[3])
    assert (strict["threshold"], strict["threshold_source"]) == (0.95, "tenant")
    # A key's own threshold, over the tenant's.
    _, front = new_key(settings, "acme", thresholds=ThresholdOverrides(0.97))
    assert (_verify(client, front, audio=SPEECH[3])["threshold_source"]) == "key"
    # Refused in one line: a floor above the threshold, an unknown tenant, --clear with a value.
    for args in (
        ("acme", "--threshold-floor", "0.99"),
        ("acme-typo", "--threshold", "0.5"),
        ("acme", "--clear", "--threshold", "0.5"),
        ("acme", "--threshold", "nan"),
    ):
        refused = run_voxgate("tenants", "policy", *args, env=env)
        assert refused.returncode == 1, args
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert run_voxgate("tenants", "policy", "acme", "--clear", env=env).returncode == 0
    assert _verify(client, key)["threshold_source"] == "model"
    changes = [
        (e.action, e.detail, e.actor is not None)
        for e in audit_events(settings, "acme")
        if e.action == "policy"
    ]
    assert changes == [
        ("policy", "thresholds: floor 0.2", True),
        ("policy", "thresholds: threshold 0.95, floor 0.2", True),
        ("policy", "thresholds: none", True),
    ]


def test_a_lowered_threshold_never_extends_retention(client: TestClient, settings: Settings) -> None:
    _, key = new_key(settings, "acme", scopes=ALL_SCOPES)
    client.post("/enroll", headers=bearer(key), data={"speaker_id": "alice"}, files=[wav_part(SPEECH[0])])
    enrolled = client.get("/speakers/alice", headers=bearer(key)).json()["expires_at"]
    time.sleep(0.05)
    assert _verify(client, key, "-1")["match"] is True  # below the floor, with threshold-override
    assert client.get("/speakers/alice", headers=bearer(key)).json()["expires_at"] == enrolled
    assert _verify(client, key, "0.9")["match"] is True  # a stricter threshold: it proves more
    moved = client.get("/speakers/alice", headers=bearer(key)).json()["expires_at"]
    assert moved > enrolled
    # A floor the tenant set below the threshold: a match within it is lowered too.
    run_voxgate("tenants", "policy", "acme", "--threshold-floor", "-0.5", env=_env(settings))
    time.sleep(0.05)
    assert _verify(client, key, "0.4")["match"] is True
    assert client.get("/speakers/alice", headers=bearer(key)).json()["expires_at"] == moved


def test_without_keys_the_floor_holds_too(redis_server: RedisProcess, tiny_model: Path) -> None:
    settings = settings_for(redis_server.url, tiny_model, redis_namespace=f"open-{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.post("/enroll", data={"speaker_id": "alice"}, files=[wav_part(SPEECH[0])])
        r = c.post("/verify", data={"speaker_id": "alice", "threshold": "-1"}, files=[wav_part(SPEECH[1])])
        assert (r.status_code, r.json()["code"]) == (403, "threshold_below_floor")
