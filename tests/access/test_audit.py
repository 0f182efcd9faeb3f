"""The audit trail: decisions, changes and operators' acts each kept (a flood of decisions cannot trim the
acts away), an event Redis did not take logged with all its fields, a tenant's erasure leaving a
biometric-free record that it happened, retention expiries, `voxgate audit` refusing a tenant it does not
know, and the trail's size per event (scripts/audit_footprint.py) - on a real redis-server, the real app
and the real command line."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.access.audit import AuditEvent, AuditLog
from app.api.factory import create_app
from app.core.errors import StoreUnavailable
from app.store.connection import Batch, redis_client
from app.store.keys import KeySchema
from app.store.redis_store import RedisVoiceprintStore
from app.store.retention import RetentionSweeper
from tests.support.access import audit_events, bearer
from tests.support.data import REPO_ROOT, speech_files, wav_part
from tests.support.redis_server import OwnRedis, RedisProcess, settings_for
from tests.support.service import run_voxgate

SPEECH = speech_files()["librispeech_1688"]


def _event(action: str, outcome: str = "ok", **more: object) -> AuditEvent:
    return AuditEvent(time.time(), "acme", "0123456789ab", "alice", action, outcome, uuid.uuid4().hex, **more)  # type: ignore[arg-type]


def test_a_flood_of_decisions_cannot_trim_the_operators_acts_away(redis_server: RedisProcess) -> None:
    async def scenario() -> list[AuditEvent]:
        client = redis_client(redis_server.url)
        audit = AuditLog(client, f"flood-{uuid.uuid4().hex[:8]}", maxlen=100)
        try:
            await audit.record(_event("key_create", actor="cli:root@host"))
            await audit.record(_event("enroll"))
            batch = Batch(client)
            for _ in range(500):
                audit.queue(
                    batch, _event("verify", score=0.31, threshold=0.75, threshold_source="model", match=False)
                )
                audit.queue(batch, _event("verify", "speaker_locked"))
            await batch.run()
            return await audit.read("acme", limit=10_000)
        finally:
            await client.aclose()

    events = asyncio.run(scenario())
    assert [e.action for e in events[:2]] == ["key_create", "enroll"]
    decisions = [e for e in events if e.action == "verify" and e.outcome == "ok"]
    assert 100 <= len(decisions) < 500  # capped on its own (MAXLEN ~)
    first = decisions[0]
    assert (first.score, first.threshold, first.threshold_source, first.match) == (0.31, 0.75, "model", False)
    assert 100 <= len([e for e in events if e.outcome == "speaker_locked"]) < 500
    assert events == sorted(events, key=lambda e: e.time)


def test_an_event_redis_did_not_take_is_logged_with_its_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = OwnRedis(tmp_path)
    server.start()
    client = redis_client(server.url, timeout_s=0.5)
    audit = AuditLog(client, "gone", maxlen=100)
    server.stop()

    async def scenario() -> None:
        try:
            await audit.record(_event("enroll"))  # never raises: the request's answer stands
            batch = Batch(client)
            event = _event("verify", score=0.9, threshold=0.75, threshold_source="tenant", match=True)
            audit.queue(batch, event)
            with pytest.raises(StoreUnavailable) as failed:
                await batch.run()
            audit.confirm(event, failed.value)
        finally:
            await client.aclose()

    with caplog.at_level(logging.INFO, logger="voxgate.audit"):
        asyncio.run(scenario())
    lost = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().startswith("audit event not stored in Redis") for r in lost] == [True, True]
    assert [r.audit["action"] for r in lost] == ["enroll", "verify"]  # type: ignore[attr-defined]
    assert lost[1].audit["threshold_source"] == "tenant"  # type: ignore[attr-defined]


def test_a_tenants_erasure_leaves_a_record_that_it_happened(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    settings = settings_for(redis_server.url, tiny_model, auth="required", rate_limit_rps=0.0)
    env = {"REDIS_URL": settings.redis_url or "", "VOXGATE_REDIS_NAMESPACE": settings.redis_namespace}
    keys = {
        t: json.loads(run_voxgate("keys", "create", "--tenant", t, "--json", env=env).stdout)
        for t in ("acme", "globex")
    }
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        for key in keys.values():
            h = bearer(key["key"])
            assert (
                c.post(
                    "/enroll", headers=h, data={"speaker_id": "alice"}, files=[wav_part(SPEECH[0])]
                ).status_code
                == 200
            )
            assert (
                c.post(
                    "/verify", headers=h, data={"speaker_id": "alice"}, files=[wav_part(SPEECH[1])]
                ).status_code
                == 200
            )
    revoked = run_voxgate("keys", "revoke", keys["acme"]["key_id"], env=env)
    assert revoked.returncode == 0
    assert [e.action for e in audit_events(settings, "acme")] == [
        "key_create",
        "enroll",
        "verify",
        "key_revoke",
    ]

    erased = run_voxgate("tenants", "erase", "acme", "--yes", env=env)
    assert erased.returncode == 0, erased.stderr
    shown = run_voxgate("audit", "--tenant", "acme", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    (record,) = [json.loads(line) for line in shown.stdout.splitlines()]  # the earlier trail went with it
    assert (record["action"], record["outcome"], record["speaker_id"]) == ("tenant_erase", "ok", None)
    assert record["actor"].startswith("cli:")
    assert "Redis keys removed" in record["detail"]
    assert not {"score", "threshold"} & {k for k, v in record.items() if v is not None}

    kept = run_voxgate("tenants", "erase", "globex", "--yes", "--keep-audit", env=env)
    assert kept.returncode == 0, kept.stderr
    actions = [
        json.loads(line)["action"]
        for line in run_voxgate("audit", "--tenant", "globex", "--json", env=env).stdout.splitlines()
    ]
    assert actions == ["key_create", "enroll", "verify", "tenant_erase"]
    # What is left of an erased tenant holds no voice data.
    stored = redis_client(settings.redis_url or "")

    async def leftovers() -> list[str]:
        try:
            return [k.decode() async for k in stored.scan_iter(match=f"{settings.redis_namespace}:globex:*")]
        finally:
            await stored.aclose()

    assert sorted(asyncio.run(leftovers())) == sorted(
        KeySchema(settings.redis_namespace, "globex", "-").audit_streams[:2]
    )


def test_audit_refuses_a_tenant_it_does_not_know(redis_server: RedisProcess) -> None:
    env = {"REDIS_URL": redis_server.url, "VOXGATE_REDIS_NAMESPACE": f"typo-{uuid.uuid4().hex[:8]}"}
    assert run_voxgate("keys", "create", "--tenant", "acme", env=env).returncode == 0
    typo = run_voxgate("audit", "--tenant", "acmee", env=env)
    assert typo.returncode == 1
    assert typo.stderr.strip().splitlines() == [
        "voxgate audit: no tenant 'acmee' (no API keys, nothing stored)"
    ]
    invalid = run_voxgate("audit", "--tenant", "a b", env=env)
    assert (invalid.returncode, len(invalid.stderr.strip().splitlines())) == (1, 1)
    assert run_voxgate("audit", "--tenant", "acme", env=env).returncode == 0
    assert run_voxgate("audit", "--tenant", "_unauthenticated", env=env).returncode == 0


def test_retention_expiries_are_audited(redis_server: RedisProcess, tiny_model: Path) -> None:
    settings = settings_for(redis_server.url, tiny_model, retention_days=1.5 / 86400)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.post("/enroll", data={"speaker_id": "old"}, files=[wav_part(SPEECH[0])]).status_code == 200
    time.sleep(1.6)

    async def sweep() -> int:
        client = redis_client(redis_server.url)
        store = RedisVoiceprintStore(
            client,
            KeySchema(settings.redis_namespace, settings.tenant, "-"),
            8,
            owns_client=True,
            retention_s=1.5,
        )
        audit = AuditLog(client, settings.redis_namespace, 100)
        try:
            first = await RetentionSweeper(store, on_expired=audit.expired).sweep()
            again = await RetentionSweeper(store, on_expired=audit.expired).sweep()  # another replica's
            return first + again
        finally:
            await store.close()

    assert asyncio.run(sweep()) == 1
    (expiry,) = [e for e in audit_events(settings, settings.tenant) if e.action == "expire"]
    assert (expiry.speaker_id, expiry.key_id) == ("old", None)
    assert "deleted under model tiny-test@" in (expiry.detail or "")


def test_the_footprint_script_measures_bytes_per_event(redis_server: RedisProcess) -> None:
    run = subprocess.run(
        [sys.executable, "scripts/audit_footprint.py", "--redis-url", redis_server.url, "--events", "2000",
         "--rate", "1000", "--max-events", "100000", "--timings", "50"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    per_event = float(re.search(r"^([0-9.]+) bytes per decision event", run.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert 40 < per_event < 400
    assert "100 s of decisions at 1000/s" in run.stdout
    assert len(re.findall(r"^.+: median [0-9.]+ ms, p99 [0-9.]+ ms$", run.stdout, re.M)) == 3
