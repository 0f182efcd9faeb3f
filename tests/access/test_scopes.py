"""Key scopes and expiry: every endpoint checks its scope (403 insufficient_scope, audited, nothing
changed), keys from before scopes keep every endpoint, expired keys are 401 expired_api_key, and
`voxgate keys create --scopes/--expires` - against a real redis-server and the real app."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.access.scopes import ALL_SCOPES, DEFAULT_SCOPES, Scope
from app.api.factory import create_app
from app.core.settings import Settings
from app.store.keys import api_key_key
from tests.support.access import audit_events, bearer, new_key
from tests.support.data import speech_files, wav_part
from tests.support.redis_server import RedisProcess, redis_snapshot, settings_for
from tests.support.service import run_voxgate

SPEECH = speech_files()["librispeech_1688"]

# Every endpoint that takes a key, the scope it needs, and a request it answers with 200 (alice is
# enrolled; the delete comes last).
ENDPOINTS: list[tuple[str, str, Scope, dict[str, object]]] = [
    ("POST", "/enroll", Scope.ENROLL, {"data": {"speaker_id": "carol"}, "files": [wav_part(SPEECH[1])]}),
    ("POST", "/verify", Scope.VERIFY, {"data": {"speaker_id": "alice"}, "files": [wav_part(SPEECH[2])]}),
    ("POST", "/identify", Scope.IDENTIFY, {"files": [wav_part(SPEECH[2])]}),
    ("GET", "/speakers", Scope.READ, {}),
    ("GET", "/speakers/alice", Scope.READ, {}),
    ("GET", "/speakers/alice/export", Scope.EXPORT, {}),
    ("DELETE", "/speakers/alice", Scope.DELETE, {}),
]


@pytest.fixture
def settings(redis_server: RedisProcess, tiny_model: Path) -> Settings:
    return settings_for(redis_server.url, tiny_model, auth="required", rate_limit_rps=0.0)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_every_endpoint_is_in_the_table_and_the_document() -> None:
    document = create_app(Settings.model_construct(redis_url="redis://x:1/0", auth="required")).openapi()
    keyed = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }
    assert keyed == {(m, p.replace("alice", "{speaker_id}")) for m, p, _, _ in ENDPOINTS}
    assert {scope for _, _, scope, _ in ENDPOINTS} == DEFAULT_SCOPES
    for _, operations in document["paths"].items():
        for operation in operations.values():
            if operation.get("security"):
                assert "403" in operation["responses"]


@pytest.mark.parametrize("scope", sorted(Scope))
def test_a_key_with_one_scope_may_call_its_endpoints_only(
    scope: Scope, client: TestClient, settings: Settings
) -> None:
    _, admin = new_key(settings, "acme", scopes=ALL_SCOPES)
    enrolled = client.post(
        "/enroll", headers=bearer(admin), data={"speaker_id": "alice"}, files=[wav_part(SPEECH[0])]
    )
    assert enrolled.status_code == 200
    key_id, key = new_key(settings, "acme", scopes=frozenset({scope}))
    for method, path, needed, request in ENDPOINTS:
        before = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
        r = client.request(method, path, headers=bearer(key), **request)  # type: ignore[arg-type]
        if needed == scope:
            assert r.status_code == 200, (scope, path, r.text)
            continue
        assert r.status_code == 403, (scope, path, r.text)
        problem = r.json()
        assert (problem["code"], problem["required_scope"]) == ("insufficient_scope", needed.value)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert redis_snapshot(settings.redis_url or "", settings.redis_namespace) == before, path
    refused = [e for e in audit_events(settings, "acme") if e.action == "authorize"]
    assert len(refused) == len([e for e in ENDPOINTS if e[2] != scope])
    assert {(e.key_id, e.outcome) for e in refused} == {(key_id, "insufficient_scope")}


def test_keys_from_before_scopes_keep_every_endpoint_but_not_a_lower_threshold(
    client: TestClient, settings: Settings
) -> None:
    key_id, key = new_key(settings, "acme")
    raw = redis.Redis.from_url(settings.redis_url or "")
    raw.hdel(api_key_key(settings.redis_namespace, key_id), "scopes")  # as written before scopes existed
    for method, path, _, request in ENDPOINTS:
        r = client.request(method, path, headers=bearer(key), **request)  # type: ignore[arg-type]
        assert r.status_code != 403, path
    lowered = client.post(
        "/identify", headers=bearer(key), data={"threshold": "0.1"}, files=[wav_part(SPEECH[2])]
    )
    assert (lowered.status_code, lowered.json()["code"]) == (403, "threshold_below_floor")
    # A scope name this version does not know grants nothing.
    raw.hset(api_key_key(settings.redis_namespace, key_id), "scopes", "read,superuser")
    assert client.get("/speakers", headers=bearer(key)).status_code == 200
    assert client.post("/identify", headers=bearer(key), files=[wav_part(SPEECH[2])]).status_code == 403


def test_an_expired_key_is_refused_with_its_own_code(client: TestClient, settings: Settings) -> None:
    key_id, key = new_key(settings, "acme", expires_at=time.time() + 1.0)
    assert client.get("/speakers", headers=bearer(key)).status_code == 200
    time.sleep(1.1)
    for _ in range(2):
        r = client.get("/speakers", headers=bearer(key))
        assert (r.status_code, r.json()["code"]) == (401, "expired_api_key")
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert {(e.key_id, e.outcome) for e in audit_events(settings, "_unauthenticated")} == {
        (key_id, "expired_api_key")
    }
    # An expiry edited into something unreadable: expired (fail closed), as an unreadable revocation.
    other_id, other = new_key(settings, "acme")
    redis.Redis.from_url(settings.redis_url or "").hset(
        api_key_key(settings.redis_namespace, other_id), "expires_at", "soon"
    )
    assert client.get("/speakers", headers=bearer(other)).json()["code"] == "expired_api_key"


def test_keys_create_takes_scopes_expiry_and_thresholds(redis_server: RedisProcess) -> None:
    env = {"REDIS_URL": redis_server.url, "VOXGATE_REDIS_NAMESPACE": f"scopes-{uuid.uuid4().hex[:8]}"}
    made = run_voxgate("keys", "create", "--tenant", "acme", "--scopes", "verify, read", "--expires", "30d",
                       "--threshold", "0.8", "--threshold-floor", "0.7", "--json", env=env)  # fmt: skip
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["scopes"] == ["verify", "read"]
    assert created["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=60)
    assert (created["threshold"], created["threshold_floor"]) == (0.8, 0.7)
    everything = json.loads(
        run_voxgate("keys", "create", "--tenant", "acme", "--scopes", "all", "--json", env=env).stdout
    )
    assert set(everything["scopes"]) == {s.value for s in Scope}
    default = json.loads(run_voxgate("keys", "create", "--tenant", "acme", "--json", env=env).stdout)
    assert set(default["scopes"]) == {s.value for s in DEFAULT_SCOPES}
    assert default["expires_at"] is None
    listed = run_voxgate("keys", "list", "--tenant", "acme", env=env)
    assert "verify,read" in listed.stdout
    for option, value in [
        ("--scopes", "verify,nope"),
        ("--scopes", ","),
        ("--expires", "yesterday"),
        ("--expires", "2001-01-01"),
        ("--expires", "99999999999d"),
        ("--threshold", "nan"),
        ("--threshold-floor", "1e9"),
    ]:
        refused = run_voxgate("keys", "create", "--tenant", "acme", option, value, env=env)
        assert refused.returncode != 0, (option, value)
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "Traceback" not in refused.stderr
    floor_above = run_voxgate(
        "keys", "create", "--tenant", "acme", "--threshold", "0.5", "--threshold-floor", "0.6", env=env
    )
    assert floor_above.returncode == 1
    assert "above the threshold" in floor_above.stderr
    # Creating a key is an act of the tenant's trail, with who did it (its secret never).
    trail = run_voxgate("audit", "--tenant", "acme", "--json", env=env)
    events = [json.loads(line) for line in trail.stdout.splitlines()]
    assert [e["action"] for e in events] == ["key_create"] * 3
    assert {e["key_id"] for e in events} == {created["key_id"], everything["key_id"], default["key_id"]}
    assert all(e["actor"].startswith("cli:") for e in events)
    assert created["key"].rsplit("_", 1)[1] not in trail.stdout
