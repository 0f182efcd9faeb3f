"""Who may do what: API keys bound to tenants, 401s, tenant isolation on every endpoint, per-key rate limits
shared by replicas, and the audit trail - against a real redis-server, the real app and real `voxgate`
processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.access.auth import ApiKeys
from app.api.factory import create_app
from app.core.settings import Settings
from app.store.connection import redis_client
from app.store.keys import api_key_key
from tests.support.access import audit_events, bearer, new_key
from tests.support.data import speech_files, wav_part
from tests.support.redis_server import OwnRedis, RedisProcess, redis_snapshot, settings_for
from tests.support.service import LiveService, run_voxgate

SPEECH = speech_files()
PROTECTED = [
    ("POST", "/enroll"),
    ("POST", "/verify"),
    ("POST", "/identify"),
    ("GET", "/speakers"),
    ("GET", "/speakers/alice"),
    ("DELETE", "/speakers/alice"),
]


@pytest.fixture
def settings(redis_server: RedisProcess, tiny_model: Path) -> Settings:
    return settings_for(redis_server.url, tiny_model, auth="required", rate_limit_rps=0.0)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


# --- auth mode --------------------------------------------------------------------------------------
def test_keys_are_required_off_loopback_by_default(tiny_model: Path) -> None:
    assert Settings(host="127.0.0.1").auth_required is False
    assert Settings(host="::1").auth_required is False
    assert Settings(host="0.0.0.0").auth_required is True
    assert Settings(host="10.1.2.3").auth_required is True
    assert Settings(host="0.0.0.0", auth="off").auth_required is False
    assert Settings(host="127.0.0.1", auth="required").auth_required is True


def test_the_open_tenant_follows_the_rule_for_tenants() -> None:
    # Names starting with '_' are the service's own (the stream of refused authentications).
    for reserved in ("_unauthenticated", "a" * 65, "acme:eu"):
        with pytest.raises(ValidationError):
            Settings(tenant=reserved)
    assert Settings(tenant="acme.eu-1").tenant == "acme.eu-1"


def test_without_keys_the_document_asks_for_none(redis_server: RedisProcess, tiny_model: Path) -> None:
    with TestClient(create_app(settings_for(redis_server.url, tiny_model))) as c:  # loopback: off
        document = c.get("/openapi.json").json()
    assert "securitySchemes" not in document.get("components", {})
    assert all("security" not in op for ops in document["paths"].values() for op in ops.values())
    assert "401" not in document["paths"]["/enroll"]["post"]["responses"]


def test_auth_off_on_a_public_address_logs_a_warning(
    redis_server: RedisProcess, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(redis_server.url, tiny_model, host="0.0.0.0", auth="off")
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as c:
        assert c.get("/speakers").status_code == 200  # off means off
    assert any("VOXGATE_AUTH=off on 0.0.0.0" in r.getMessage() for r in caplog.records)


# --- 401 ----------------------------------------------------------------------------------------------
def test_every_endpoint_refuses_a_missing_malformed_tampered_unknown_or_revoked_key(
    client: TestClient, settings: Settings
) -> None:
    key_id, key = new_key(settings, "acme")
    _, other = new_key(settings, "acme")
    revoked_id, revoked = new_key(settings, "acme")
    asyncio.run(_revoke(settings, revoked_id))
    tampered = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    unknown = f"vgk_{'0' * 12}_{key.rsplit('_', 1)[1]}"
    cases = {
        "missing": ({}, "missing_api_key"),
        "malformed": (bearer("hello"), "invalid_api_key"),
        "tampered": (bearer(tampered), "invalid_api_key"),
        "unknown": ({"X-API-Key": unknown}, "invalid_api_key"),
        "revoked": (bearer(revoked), "revoked_api_key"),
        # A key was sent, just not as a bearer token: not "missing".
        "basic scheme": ({"Authorization": f"Basic {key}"}, "invalid_api_key"),
        "no scheme": ({"Authorization": key}, "invalid_api_key"),
        # Two different keys: which tenant acts must not depend on which header wins.
        "two keys": ({**bearer(key), "X-API-Key": other}, "invalid_api_key"),
    }
    before = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
    for method, path in PROTECTED:
        for name, (headers, code) in cases.items():
            files = [wav_part(SPEECH["librispeech_1688"][0])] if method == "POST" else None
            data = {"speaker_id": "alice"} if path != "/identify" and method == "POST" else None
            r = client.request(method, path, headers=headers, files=files, data=data)
            assert r.status_code == 401, (method, path, name, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == code, (method, path, name)
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert redis_snapshot(settings.redis_url or "", settings.redis_namespace) == before
    # Both ways of presenting a valid key work.
    assert client.get("/speakers", headers=bearer(key)).status_code == 200
    assert client.get("/speakers", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/speakers", headers={**bearer(key), "X-API-Key": key}).status_code == 200
    # A refused request proved no tenant: its events are unauthenticated (naming the stored key when it
    # names one), never in the named key's tenant's trail.
    assert audit_events(settings, "acme") == []
    anonymous = audit_events(settings, "_unauthenticated")
    assert {e.outcome for e in anonymous} == {"missing_api_key", "invalid_api_key", "revoked_api_key"}
    assert {e.key_id for e in anonymous if e.outcome == "invalid_api_key"} == {None, key_id}
    assert {e.key_id for e in anonymous if e.outcome == "revoked_api_key"} == {revoked_id}
    assert all(e.request_id for e in anonymous)


def test_refused_requests_cannot_push_a_tenants_enrollments_out_of_its_trail(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    # The trail is capped. Wrong secrets for a known key id (anyone can send them) and the 429s of a
    # client hammering its limit must not displace the enrollments and deletions.
    settings = settings_for(
        redis_server.url,
        tiny_model,
        auth="required",
        rate_limit_rps=0.0,
        audit_max_events=100,
        redis_namespace=f"trail-{os.getpid()}",
    )
    key_id, key = new_key(settings, "acme", rate=0.001, burst=2)
    guessed = f"vgk_{key_id}_{'A' * 43}"
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        files = [wav_part(SPEECH["librispeech_1688"][0])]
        assert (
            c.post("/enroll", headers=bearer(key), data={"speaker_id": "kept"}, files=files).status_code
            == 200
        )
        assert c.delete("/speakers/kept", headers=bearer(key)).status_code == 200
        for _ in range(300):
            assert c.get("/speakers", headers=bearer(guessed)).json()["code"] == "invalid_api_key"
            assert c.get("/speakers", headers=bearer(key)).json()["code"] == "rate_limited"
    events = audit_events(settings, "acme")
    assert [(e.action, e.speaker_id, e.outcome) for e in events[:2]] == [
        ("enroll", "kept", "ok"),
        ("delete", "kept", "ok"),
    ]
    assert {e.outcome for e in events[2:]} == {"rate_limited"}  # merged in time order
    assert len(events) > 100  # the refusals are kept too, capped apart
    assert not any(e.action == "authenticate" for e in events)


async def _revoke(settings: Settings, key_id: str) -> None:
    client = redis_client(settings.redis_url or "")
    try:
        assert await ApiKeys(client, settings.redis_namespace).revoke(key_id) is not None
    finally:
        await client.aclose()


def test_operations_endpoints_stay_open_and_the_document_declares_the_schemes(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    assert any(s.get("name") == "X-API-Key" and s.get("in") == "header" for s in schemes.values())
    for path, method in [("/enroll", "post"), ("/speakers/{speaker_id}", "delete"), ("/speakers", "get")]:
        assert document["paths"][path][method]["security"], path
    assert "security" not in document["paths"]["/healthz"]["get"]


# --- tenants ------------------------------------------------------------------------------------------
def test_tenants_never_see_each_others_speakers(client: TestClient, settings: Settings) -> None:
    _, key_a = new_key(settings, "tenant-a")
    _, key_b = new_key(settings, "tenant-b")
    a, b = bearer(key_a), bearer(key_b)
    # The same id in both tenants, other voices; and one speaker only B has.
    assert (
        client.post(
            "/enroll", headers=a, data={"speaker_id": "alice"}, files=[wav_part(SPEECH["vctk_p225"][0])]
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/enroll", headers=b, data={"speaker_id": "alice"}, files=[wav_part(SPEECH["vctk_p226"][0])]
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/enroll", headers=b, data={"speaker_id": "bob"}, files=[wav_part(SPEECH["librispeech_2033"][0])]
        ).status_code
        == 200
    )

    # ... and one only A has: the other way round
    carol = [wav_part(SPEECH["librispeech_3080"][0])]
    assert client.post("/enroll", headers=a, data={"speaker_id": "carol"}, files=carol).status_code == 200
    assert client.get("/speakers/carol", headers=b).status_code == 404
    probe = [wav_part(SPEECH["librispeech_3080"][1])]
    assert client.post("/verify", headers=b, data={"speaker_id": "carol"}, files=probe).status_code == 404
    assert "carol" not in [
        c["speaker_id"] for c in client.post("/identify", headers=b, files=probe).json()["candidates"]
    ]
    assert client.delete("/speakers/carol", headers=b).status_code == 404
    assert client.delete("/speakers/carol", headers=a).status_code == 200

    # list and get
    assert [s["speaker_id"] for s in client.get("/speakers", headers=a).json()["items"]] == ["alice"]
    assert client.get("/speakers", headers=a).json()["total"] == 1
    assert [s["speaker_id"] for s in client.get("/speakers", headers=b).json()["items"]] == ["alice", "bob"]
    never = client.get("/speakers/nobody", headers=a).json()
    hidden = client.get("/speakers/bob", headers=a)
    assert hidden.status_code == 404
    assert hidden.json()["code"] == never["code"] == "speaker_not_found"
    assert hidden.json()["detail"] == never["detail"].replace("nobody", "bob")  # exactly as never enrolled

    # verify against the other tenant's speaker: it does not exist
    r = client.post(
        "/verify", headers=a, data={"speaker_id": "bob"}, files=[wav_part(SPEECH["librispeech_2033"][1])]
    )
    assert r.status_code == 404
    assert r.json()["code"] == "speaker_not_found"

    # identify searches the caller's tenant only (the replica-local indexes are kept apart)
    found_a = client.post(
        "/identify", headers=a, files=[wav_part(SPEECH["librispeech_2033"][1])], data={"top_k": "10"}
    ).json()
    assert [c["speaker_id"] for c in found_a["candidates"]] == ["alice"]
    assert found_a["searched"] == 1
    found_b = client.post(
        "/identify", headers=b, files=[wav_part(SPEECH["librispeech_2033"][1])], data={"top_k": "10"}
    ).json()
    assert sorted(c["speaker_id"] for c in found_b["candidates"]) == ["alice", "bob"]
    with_candidates = client.post(
        "/identify", headers=a, files=[wav_part(SPEECH["vctk_p225"][1])], data={"candidates": "alice,bob"}
    ).json()
    assert [c["speaker_id"] for c in with_candidates["candidates"]] == ["alice"]
    assert with_candidates["warnings"][0]["code"] == "unknown_candidates"

    # delete: A cannot delete B's bob; deleting A's alice leaves B's alice
    assert client.delete("/speakers/bob", headers=a).status_code == 404
    assert client.delete("/speakers/alice", headers=a).status_code == 200
    assert client.get("/speakers/alice", headers=b).status_code == 200
    assert client.get("/speakers/bob", headers=b).status_code == 200
    assert client.get("/speakers/alice", headers=a).status_code == 404

    # and the audit trail of each tenant holds its own events only
    events_a = audit_events(settings, "tenant-a")
    changes = {"enroll", "delete"}
    assert [(e.action, e.speaker_id, e.outcome) for e in events_a if e.action in changes] == [
        ("enroll", "alice", "ok"),
        ("enroll", "carol", "ok"),
        ("delete", "carol", "ok"),
        ("delete", "bob", "speaker_not_found"),
        ("delete", "alice", "ok"),
    ]
    assert all(e.tenant == "tenant-a" and e.request_id for e in events_a)
    # its decisions too: B's verification of carol (not B's) is B's, a 404
    assert ("verify", "bob", "speaker_not_found") in [(e.action, e.speaker_id, e.outcome) for e in events_a]
    events_b = audit_events(settings, "tenant-b")
    assert ("verify", "carol", "speaker_not_found") in [(e.action, e.speaker_id, e.outcome) for e in events_b]
    assert [(e.action, e.speaker_id, e.outcome) for e in events_b if e.action in changes] == [
        ("enroll", "alice", "ok"),
        ("enroll", "bob", "ok"),
        ("delete", "carol", "speaker_not_found"),
    ]


def test_refused_enrollments_are_audited_with_their_code(client: TestClient, settings: Settings) -> None:
    _, key = new_key(settings, "acme")
    broken = ("audio", ("s.wav", b"RIFF\0\0\0\0WAVE" + b"\0" * 100, "audio/wav"))
    r = client.post("/enroll", headers=bearer(key), data={"speaker_id": "carol"}, files=[broken])
    assert r.status_code == 400
    (event,) = audit_events(settings, "acme")
    assert (event.action, event.speaker_id, event.outcome) == ("enroll", "carol", "invalid_audio")
    assert event.request_id == r.headers["x-request-id"]


# --- keys through the command line, across replicas ---------------------------------------------------------
@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisProcess, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveService, LiveService, dict[str, str]]]:
    namespace = f"auth-{os.getpid()}-{id(tmp_path_factory)}"
    common = {"auth": "required", "redis_namespace": namespace, "rate_limit_rps": "0"}
    one = LiveService(tiny_model, redis_server.url, tmp_path_factory.mktemp("replica1"), common)
    two = LiveService(tiny_model, redis_server.url, tmp_path_factory.mktemp("replica2"), common)
    one.env["VOXGATE_REDIS_NAMESPACE"] = two.env["VOXGATE_REDIS_NAMESPACE"] = namespace
    env = {"REDIS_URL": redis_server.url, "VOXGATE_REDIS_NAMESPACE": namespace}
    with one, two:
        yield one, two, env


def test_cli_key_works_on_every_replica_and_revocation_is_seen_at_once(
    replicas: tuple[LiveService, LiveService, dict[str, str]],
) -> None:
    one, two, env = replicas
    created = run_voxgate("keys", "create", "--tenant", "acme", "--name", "web", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("vgk_")
    assert "shown only once" in created.stderr
    listed = run_voxgate("keys", "list", "--tenant", "acme", "--json", env=env)
    (entry,) = json.loads(listed.stdout)
    assert entry["tenant"] == "acme"
    assert entry["name"] == "web"
    assert key.split("_", 2)[2] not in listed.stdout  # never a secret
    stored = redis.Redis.from_url(env["REDIS_URL"]).hgetall(
        f"{env['VOXGATE_REDIS_NAMESPACE']}:apikey:{entry['key_id']}"
    )
    assert key.split("_", 2)[2].encode() not in b"".join(stored.values())  # only its hash
    for replica in (one, two):
        assert httpx.get(f"{replica.url}/speakers", headers=bearer(key)).status_code == 200
    assert run_voxgate("keys", "revoke", entry["key_id"], env=env).returncode == 0
    for replica in (two, one):  # the very next request, on either replica
        r = httpx.get(f"{replica.url}/speakers", headers=bearer(key))
        assert r.status_code == 401
        assert r.json()["code"] == "revoked_api_key"
    assert run_voxgate("keys", "revoke", "000000000000", env=env).returncode == 1


def test_rate_limit_is_shared_by_replicas(replicas: tuple[LiveService, LiveService, dict[str, str]]) -> None:
    one, two, env = replicas
    created = run_voxgate("keys", "create", "--tenant", "acme", "--rate", "0.2", "--burst", "3", env=env)
    key = created.stdout.strip()
    answers = [httpx.get(f"{replica.url}/speakers", headers=bearer(key)) for replica in (one, two, one, two)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]  # the burst of 3 is one bucket
    refused = answers[-1]
    assert refused.json()["code"] == "rate_limited"  # not "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    log = run_voxgate("audit", "--tenant", "acme", "--json", env=env)
    events = [json.loads(line) for line in log.stdout.splitlines()]
    assert any(e["action"] == "rate_limit" and e["outcome"] == "rate_limited" for e in events)


def test_unusable_limits_and_names_are_refused_in_one_line(
    replicas: tuple[LiveService, LiveService, dict[str, str]],
) -> None:
    _, _, env = replicas
    for option, value in [
        ("--rate", "nan"),
        ("--rate", "inf"),
        ("--rate", "1e-320"),
        ("--rate", "-1"),
        ("--burst", "0"),
        ("--burst", "10000000"),
        ("--name", "x\ny\x1b[31m"),
        ("--name", "n" * 101),
        ("--name", "a\u202eb"),
        ("--name", "a\u2028b"),
    ]:
        refused = run_voxgate("keys", "create", "--tenant", "acme", option, value, env=env)
        assert refused.returncode != 0, (option, value)
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "Traceback" not in refused.stderr
    listed = run_voxgate("keys", "list", env=env).stdout
    assert not re.search(r"\b(nan|inf)\b|defaultdefault|\x1b", listed), listed


def test_a_stored_key_with_unusable_limits_gets_the_defaults_not_a_500(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    # A record written before the limits were checked (or by hand) must not turn every request into a
    # 500 from the rate-limit script.
    settings = settings_for(
        redis_server.url, tiny_model, auth="required", redis_namespace=f"nanrate-{os.getpid()}"
    )
    raw = redis.Redis.from_url(settings.redis_url or "")
    edits: list[tuple[dict[str, Any], int]] = [
        ({"rate": "nan", "burst": "-3"}, 200),  # the defaults apply
        ({"rate": "abc", "burst": "1.5"}, 200),
        ({"created_at": "yesterday"}, 200),
        ({"revoked_at": "garbage"}, 401),  # unreadable: revoked (fail closed)
        ({"tenant": ""}, 401),  # no tenant: not a valid key
        ({"tenant": b"\xff\xfe"}, 401),
        ({"hash": b"\xc3\xa9" * 32}, 401),
    ]
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        for edit, status in edits:
            key_id, key = new_key(settings, "acme")
            raw.hset(api_key_key(settings.redis_namespace, key_id), mapping=edit)
            assert [c.get("/speakers", headers=bearer(key)).status_code for _ in range(2)] == [status] * 2, (
                edit
            )
        assert c.get("/speakers", headers=bearer(new_key(settings, "acme")[1])).status_code == 200
    assert (
        "Traceback"
        not in run_voxgate(
            "keys",
            "list",
            env={"REDIS_URL": settings.redis_url or "", "VOXGATE_REDIS_NAMESPACE": settings.redis_namespace},
        ).stderr
    )


def test_audit_and_erase_refuse_odd_input_in_one_line(
    replicas: tuple[LiveService, LiveService, dict[str, str]],
) -> None:
    _, _, env = replicas
    for since in ("0001-01-01", "99999999999999d", "\u00b2h", "1e309d"):
        listed = run_voxgate("audit", "--tenant", "acme", "--since", since, env=env)
        assert "Traceback" not in listed.stderr, since
        assert listed.returncode in (0, 1), since  # before 1970 means "from the start"
    limited = run_voxgate("audit", "--tenant", "acme", "--limit", "-1", env=env)
    assert limited.returncode == 1
    assert limited.stderr.strip().splitlines() == ["voxgate audit: --limit must be 1-1000000 events, not -1"]
    huge = run_voxgate("audit", "--tenant", "acme", "--limit", "9" * 20, env=env)
    assert huge.returncode == 1
    assert "Traceback" not in huge.stderr
    typo = run_voxgate("tenants", "erase", "no-such-tenant", "--yes", env=env)
    assert typo.returncode == 1
    assert "nothing erased" in typo.stderr


# --- Redis blips ------------------------------------------------------------------------------------------
def test_auth_and_rate_limits_answer_503_while_redis_is_down(tmp_path: Path, tiny_model: Path) -> None:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        settings = settings_for(server.url, tiny_model, auth="required", rate_limit_rps=5.0)
        _, key = new_key(settings, "acme")
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            assert c.get("/speakers", headers=bearer(key)).status_code == 200
            server.stop()
            r = c.get("/speakers", headers=bearer(key))
            assert r.status_code == 503
            assert r.json()["code"] == "store_unavailable"
            server.start()
            _, key = new_key(settings, "acme")  # this test server keeps no data
            assert c.get("/speakers", headers=bearer(key)).status_code == 200
    finally:
        server.stop()
