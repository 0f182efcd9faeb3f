"""Retention counts from a voiceprint's last use with the retention in force now: a changed
VOXGATE_RETENTION_DAYS applies to what is already stored, and voiceprints written by older versions (a
fixed expiry) are converted - against a real redis-server and the real app."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.api.factory import create_app
from app.core.settings import Settings
from app.store.connection import redis_client
from app.store.keys import KeySchema, last_use_converted_key
from app.store.redis_store import RedisVoiceprintStore
from app.store.retention import RetentionSweeper
from tests.support.data import speech_files, wav_part
from tests.support.redis_server import RedisProcess, settings_for

SPEECH = speech_files()
DAY = 86400.0


def sweep(settings: Settings) -> int:
    async def run() -> int:
        store = RedisVoiceprintStore(
            redis_client(settings.redis_url or ""),
            KeySchema(settings.redis_namespace, settings.tenant, "-"),
            8,
            owns_client=True,
            retention_s=settings.retention_s,
        )
        try:
            return await RetentionSweeper(store).sweep()
        finally:
            await store.close()

    return asyncio.run(run())


def test_a_lowered_retention_applies_to_voiceprints_already_stored(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    kept_long = settings_for(redis_server.url, tiny_model, retention_days=30)
    with TestClient(create_app(kept_long)) as c:
        assert c.post(
            "/enroll", data={"speaker_id": "old"}, files=[wav_part(SPEECH["vctk_p225"][0])]
        ).is_success
        before = c.get("/speakers/old").json()
    assert before["expires_at"] == pytest.approx(before["updated_at"] + 30 * DAY, abs=0.01)
    time.sleep(1.2)
    lowered = kept_long.model_copy(update={"retention_days": 1.0 / DAY})  # one second
    with TestClient(create_app(lowered)) as c:
        assert c.get("/speakers/old").status_code == 404  # last used over a second ago: expired now
        assert c.get("/speakers").json()["total"] == 0
        found = c.post("/identify", files=[wav_part(SPEECH["vctk_p225"][0])]).json()
        assert (found["candidates"], found["searched"]) == ([], 0)
        assert c.post(
            "/enroll", data={"speaker_id": "new"}, files=[wav_part(SPEECH["vctk_p226"][0])]
        ).is_success
        assert c.get("/speakers/new").status_code == 200
        assert sweep(lowered) == 1  # "old" deleted for good; "new" is younger than a second
        assert [s["speaker_id"] for s in c.get("/speakers").json()["items"]] == ["new"]


def test_a_raised_retention_keeps_what_the_old_one_would_have_expired(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    short = settings_for(redis_server.url, tiny_model, retention_days=1.0 / DAY)
    with TestClient(create_app(short)) as c:
        assert c.post(
            "/enroll", data={"speaker_id": "s"}, files=[wav_part(SPEECH["vctk_p225"][0])]
        ).is_success
        enrolled_at = c.get("/speakers/s").json()["updated_at"]
    time.sleep(1.2)
    raised = short.model_copy(update={"retention_days": 10})
    with TestClient(create_app(raised)) as c:
        record = c.get("/speakers/s")
        assert record.status_code == 200
        assert record.json()["expires_at"] == pytest.approx(enrolled_at + 10 * DAY, abs=0.01)
    assert sweep(raised) == 0


def test_voiceprints_of_an_older_version_get_a_last_use(redis_server: RedisProcess, tiny_model: Path) -> None:
    settings = settings_for(redis_server.url, tiny_model, retention_days=10)
    with TestClient(create_app(settings)) as c:
        for speaker in ("fixed", "unlimited"):
            files = [wav_part(SPEECH["vctk_p226"][0])]
            assert c.post("/enroll", data={"speaker_id": speaker}, files=files).is_success
        model = c.get("/readyz").json()["model"]
        unlimited_enrolled = c.get("/speakers/unlimited").json()["updated_at"]
    keys = KeySchema(settings.redis_namespace, settings.tenant, model)
    raw = redis.Redis.from_url(redis_server.url)
    # As an older version stored them: a fixed expiry (retention on), or none (retention off).
    expires_at = time.time() + 3 * DAY
    raw.hdel(keys.speaker("fixed"), "used_at")
    raw.hset(keys.speaker("fixed"), "expires_at", repr(expires_at))
    raw.zadd(keys.legacy_expiry, {"fixed": expires_at})
    raw.hdel(keys.speaker("unlimited"), "used_at")
    raw.delete(keys.used, last_use_converted_key(settings.redis_namespace))

    with TestClient(create_app(settings)) as c:  # start-up converts them
        fixed = c.get("/speakers/fixed").json()
        unlimited = c.get("/speakers/unlimited").json()
    assert fixed["expires_at"] == pytest.approx(expires_at, abs=0.01)  # same retention: same expiry
    assert unlimited["expires_at"] == pytest.approx(unlimited_enrolled + 10 * DAY, abs=0.01)
    assert float(raw.hget(keys.speaker("fixed"), "used_at") or 0) == pytest.approx(expires_at - 10 * DAY)
    assert raw.hget(keys.speaker("fixed"), "expires_at") is None
    assert not raw.exists(keys.legacy_expiry)
    assert raw.zscore(keys.used, "unlimited") == pytest.approx(unlimited_enrolled)
    assert raw.exists(last_use_converted_key(settings.redis_namespace))

    # An older replica writing during a rolling upgrade: its fixed expiry is converted by the next sweep.
    for speaker in ("fixed", "unlimited"):
        raw.hdel(keys.speaker(speaker), "used_at")
        raw.zrem(keys.used, speaker)
    raw.zadd(keys.legacy_expiry, {"fixed": time.time() + 60.0, "unlimited": time.time() - 1.0})
    assert sweep(settings) == 1  # both converted; "unlimited" expired by its fixed expiry, so now too
    assert raw.zscore(keys.used, "fixed") == pytest.approx(time.time() + 60.0 - 10 * DAY, abs=5)
    assert not raw.exists(keys.speaker("unlimited"))
    raw.close()
