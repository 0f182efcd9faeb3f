"""Voiceprints encrypted at rest (envelope encryption, bound to their Redis key), key rotation and
re-encryption, crypto-erasure of a tenant, and retention - real redis-server, real app and processes."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.api.factory import create_app
from app.core.crypto import SEALED_MAGIC, CryptoError, KeyEncryptionKey, new_key_text, parse_key
from app.core.settings import Settings
from app.store import vault as vault_module
from app.store.connection import redis_client
from app.store.retention import RetentionSweeper
from app.store.vault import VaultError
from tests.support.data import speech_files, wav_bytes, wav_part
from tests.support.redis_server import RedisProcess, set_threshold_policy, settings_for
from tests.support.service import LiveService, run_voxgate

SPEECH = speech_files()


def speaker_hashes(settings: Settings) -> dict[bytes, dict[bytes, bytes]]:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        return {k: client.hgetall(k) for k in client.scan_iter(match=f"{settings.redis_namespace}:*:spk:*")}
    finally:
        client.close()


def test_keys_parse_from_hex_or_base64_and_refuse_the_rest() -> None:
    text = new_key_text()
    raw = parse_key(text)
    import base64

    assert parse_key(base64.b64encode(raw).decode()) == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    for bad in ("", "abc", "00" * 31, "zz" * 32):
        with pytest.raises(CryptoError):
            parse_key(bad)


def test_voiceprints_are_sealed_and_bound_to_their_key(redis_server: RedisProcess, tiny_model: Path) -> None:
    settings = settings_for(redis_server.url, tiny_model, voiceprint_key=new_key_text())
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        r = client.post(
            "/enroll",
            data={"speaker_id": "alice", "metadata": '{"employee": "A-17"}'},
            files=[wav_part(SPEECH["vctk_p225"][0]), wav_part(SPEECH["vctk_p225"][1])],
        )
        assert r.status_code == 200, r.text
        client.post("/enroll", data={"speaker_id": "bob"}, files=[wav_part(SPEECH["vctk_p226"][0])])
        stored = speaker_hashes(settings)
        assert len(stored) == 2
        for fields in stored.values():
            assert fields[b"sum"].startswith(SEALED_MAGIC)  # no embedding in the clear
        alice = next(f for k, f in stored.items() if k.endswith(b":alice"))
        assert alice[b"metadata"].startswith(SEALED_MAGIC)
        assert b"A-17" not in b"".join(alice.values())
        # The service reads it back: record, verify and identify work on the decrypted vectors.
        assert client.get("/speakers/alice").json()["metadata"] == {"employee": "A-17"}
        v = client.post(
            "/verify", data={"speaker_id": "alice"}, files=[wav_part(SPEECH["vctk_p225"][0])]
        ).json()
        assert v["score"] > 0.99
        found = client.post("/identify", files=[wav_part(SPEECH["vctk_p225"][1])]).json()
        assert {c["speaker_id"] for c in found["candidates"]} == {"alice", "bob"}
        # A sealed value copied under another speaker's key does not open there: that speaker is gone,
        # not silently turned into alice.
        raw = redis.Redis.from_url(redis_server.url)
        bob_key = next(k for k in stored if k.endswith(b":bob"))
        raw.hset(bob_key, "sum", alice[b"sum"])
        raw.close()
        assert client.get("/speakers/bob").status_code == 404
        assert (
            client.post(
                "/verify", data={"speaker_id": "bob"}, files=[wav_part(SPEECH["vctk_p225"][0])]
            ).status_code
            == 404
        )
        # Enrolling into it starts bob afresh: nothing of what does not open is counted.
        again = client.post("/enroll", data={"speaker_id": "bob"}, files=[wav_part(SPEECH["vctk_p226"][1])])
        assert again.status_code == 200
        assert (again.json()["created"], again.json()["utterances"]) == (True, 1)
        assert client.get("/speakers/bob").json()["speech_seconds"] == again.json()["speech_seconds"]
        v = client.post(
            "/verify", data={"speaker_id": "bob"}, files=[wav_part(SPEECH["vctk_p226"][1])]
        ).json()
        assert v["score"] > 0.99


def test_concurrent_sealed_enrollments_lose_nothing(redis_server: RedisProcess, tiny_model: Path) -> None:
    # The same recording 20 times: counted 20 times where duplicates are only warned of.
    settings = settings_for(
        redis_server.url, tiny_model, voiceprint_key=new_key_text(), duplicate_enrollment="warn"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        statuses: list[int] = []

        def enroll() -> None:
            r = client.post(
                "/enroll", data={"speaker_id": "crowd"}, files=[wav_part(SPEECH["librispeech_1688"][0])]
            )
            statuses.append(r.status_code)

        threads = [threading.Thread(target=enroll) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 20
        assert client.get("/speakers/crowd").json()["utterances"] == 20


def test_replicas_with_the_same_key_read_and_with_another_or_none_refuse(
    redis_server: RedisProcess, tiny_model: Path, tmp_path: Path
) -> None:
    key = new_key_text()
    namespace = f"enc-{os.getpid()}-{time.monotonic_ns()}"
    common = {"redis_namespace": namespace, "voiceprint_key": key}
    with LiveService(tiny_model, redis_server.url, tmp_path / "one", common) as one:
        import httpx

        files = [("audio", ("a.wav", wav_bytes(SPEECH["vctk_p225"][0]), "audio/wav"))]
        assert (
            httpx.post(f"{one.url}/enroll", data={"speaker_id": "alice"}, files=files, timeout=60).status_code
            == 200
        )
        with LiveService(tiny_model, redis_server.url, tmp_path / "two", common) as two:
            answer = httpx.post(f"{two.url}/verify", data={"speaker_id": "alice"}, files=files, timeout=60)
            assert answer.status_code == 200
            assert answer.json()["score"] > 0.99
        for other in ({"voiceprint_key": new_key_text()}, {}):
            settings = {"redis_namespace": namespace, **other}
            service = LiveService(
                tiny_model, redis_server.url, tmp_path / f"bad{len(other)}", settings, ready_timeout_s=60
            )
            with pytest.raises(AssertionError) as failed:
                service.__enter__()
            message = str(failed.value)
            assert "voxgate serve exited" in message
            if other:
                assert "is not the key that encrypts the voiceprints" in message
            else:
                assert "are encrypted" in message
                assert "set VOXGATE_VOICEPRINT_KEY" in message


def test_a_store_with_another_key_refuses_at_start_up(redis_server: RedisProcess, tiny_model: Path) -> None:
    namespace = f"enc-{time.monotonic_ns()}"
    first = settings_for(
        redis_server.url, tiny_model, redis_namespace=namespace, voiceprint_key=new_key_text()
    )
    with TestClient(create_app(first)):
        pass
    second = first.model_copy(
        update={
            "voiceprint_key": settings_for(
                redis_server.url, tiny_model, voiceprint_key=new_key_text()
            ).voiceprint_key
        }
    )
    with pytest.raises(VaultError), TestClient(create_app(second)):
        pass


def test_encryption_turned_on_later_then_rotated_with_reencrypt(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    plain = settings_for(redis_server.url, tiny_model)
    env = {"REDIS_URL": redis_server.url, "VOXGATE_REDIS_NAMESPACE": plain.redis_namespace}
    with TestClient(create_app(plain)) as client:
        for i, sid in enumerate(("a1", "a2", "a3")):
            client.post("/enroll", data={"speaker_id": sid}, files=[wav_part(SPEECH["librispeech_1998"][i])])
        before = {sid: client.get(f"/speakers/{sid}").json() for sid in ("a1", "a2", "a3")}
    assert not any(f[b"sum"].startswith(SEALED_MAGIC) for f in speaker_hashes(plain).values())

    first_key = new_key_text()
    run = run_voxgate("reencrypt", "--batch", "2", env={**env, "VOXGATE_VOICEPRINT_KEY": first_key})
    assert run.returncode == 0, run.stderr
    assert "3 sealed" in run.stdout
    assert all(f[b"sum"].startswith(SEALED_MAGIC) for f in speaker_hashes(plain).values())
    again = run_voxgate("reencrypt", env={**env, "VOXGATE_VOICEPRINT_KEY": first_key})
    assert "0 sealed" in again.stdout  # resumable: nothing left to do

    second_key = new_key_text()
    refused = run_voxgate("reencrypt", env={**env, "VOXGATE_VOICEPRINT_KEY": second_key})
    assert refused.returncode == 1
    assert "VOXGATE_OLD_VOICEPRINT_KEY" in refused.stderr
    rotated = run_voxgate(
        "reencrypt",
        env={**env, "VOXGATE_VOICEPRINT_KEY": second_key, "VOXGATE_OLD_VOICEPRINT_KEY": first_key},
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "1 re-wrapped" in rotated.stderr

    after = plain.model_copy(
        update={
            "voiceprint_key": settings_for(
                redis_server.url, tiny_model, voiceprint_key=second_key
            ).voiceprint_key
        }
    )
    with TestClient(create_app(after)) as client:
        for sid, record in before.items():
            got = client.get(f"/speakers/{sid}").json()
            assert got["utterances"] == record["utterances"]
        assert (
            client.post(
                "/verify", data={"speaker_id": "a1"}, files=[wav_part(SPEECH["librispeech_1998"][0])]
            ).json()["score"]
            > 0.99
        )
    old = plain.model_copy(
        update={
            "voiceprint_key": settings_for(
                redis_server.url, tiny_model, voiceprint_key=first_key
            ).voiceprint_key
        }
    )
    with pytest.raises(VaultError), TestClient(create_app(old)):
        pass


def test_a_replica_still_on_the_old_key_keeps_serving_after_a_rotation(
    redis_server: RedisProcess, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Until it is restarted with the new key: the rotation re-wraps the tenant's data key, which stays
    # the same key, and this replica opened it before. (Every read re-reads the wrapped keys here.)
    monkeypatch.setattr(vault_module, "DATA_KEY_CACHE_S", 0.0)
    first, second = new_key_text(), new_key_text()
    settings = settings_for(redis_server.url, tiny_model, voiceprint_key=first, tenant="rotating")
    env = {"REDIS_URL": redis_server.url, "VOXGATE_REDIS_NAMESPACE": settings.redis_namespace}
    with TestClient(create_app(settings)) as client:
        client.post("/enroll", data={"speaker_id": "r1"}, files=[wav_part(SPEECH["vctk_p225"][0])])
        rotated = run_voxgate(
            "reencrypt", env={**env, "VOXGATE_VOICEPRINT_KEY": second, "VOXGATE_OLD_VOICEPRINT_KEY": first}
        )
        assert rotated.returncode == 0, rotated.stderr
        assert client.get("/speakers/r1").status_code == 200
        verified = client.post("/verify", data={"speaker_id": "r1"}, files=[wav_part(SPEECH["vctk_p225"][0])])
        assert verified.status_code == 200
        assert verified.json()["score"] > 0.99
        enrolled = client.post("/enroll", data={"speaker_id": "r2"}, files=[wav_part(SPEECH["vctk_p226"][0])])
        assert enrolled.status_code == 200
    restarted = settings.model_copy(
        update={
            "voiceprint_key": settings_for(redis_server.url, tiny_model, voiceprint_key=second).voiceprint_key
        }
    )
    with TestClient(create_app(restarted)) as client:  # and the new key reads what it wrote
        assert client.get("/speakers/r2").status_code == 200


def test_erasing_a_tenant_deletes_its_data_keys_and_everything_else(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    settings = settings_for(redis_server.url, tiny_model, voiceprint_key=new_key_text(), tenant="doomed")
    env = {"REDIS_URL": redis_server.url, "VOXGATE_REDIS_NAMESPACE": settings.redis_namespace}
    with TestClient(create_app(settings)) as client:
        client.post("/enroll", data={"speaker_id": "x"}, files=[wav_part(SPEECH["vctk_p226"][0])])
        assert client.get("/speakers/x").status_code == 200
        raw = redis.Redis.from_url(redis_server.url)
        assert raw.exists(f"{settings.redis_namespace}:doomed:datakeys")
        assert run_voxgate("tenants", "erase", "doomed", env=env).returncode == 1  # needs --yes
        erased = run_voxgate("tenants", "erase", "doomed", "--yes", env=env)
        assert erased.returncode == 0, erased.stderr
        assert "data keys deleted" in erased.stdout
        # Nothing is left but the record that the erasure happened.
        assert list(raw.scan_iter(match=f"{settings.redis_namespace}:doomed:*")) == [
            f"{settings.redis_namespace}:doomed:audit".encode()
        ]
        (entry,) = raw.xrange(f"{settings.redis_namespace}:doomed:audit")
        assert entry[1][b"action"] == b"tenant_erase"
        raw.close()
        assert client.get("/speakers/x").status_code == 404
        deadline = time.monotonic() + 10
        while client.post("/identify", files=[wav_part(SPEECH["vctk_p226"][0])]).json()["candidates"]:
            assert time.monotonic() < deadline, "the erased tenant's index rows outlived it"
            time.sleep(0.1)


# --- retention ------------------------------------------------------------------------------------------
def test_voiceprints_expire_unless_enrolled_into_or_verified(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    settings = settings_for(redis_server.url, tiny_model, retention_days=2.0 / 86400)  # two seconds
    set_threshold_policy(settings, settings.tenant, floor=-1.0)  # identify below takes any threshold
    with TestClient(create_app(settings)) as client:
        client.post("/enroll", data={"speaker_id": "kept"}, files=[wav_part(SPEECH["vctk_p225"][0])])
        client.post("/enroll", data={"speaker_id": "dropped"}, files=[wav_part(SPEECH["vctk_p226"][0])])
        record = client.get("/speakers/kept").json()
        assert record["expires_at"] == pytest.approx(record["updated_at"] + 2.0, abs=0.01)
        time.sleep(1.2)
        v = client.post(
            "/verify", data={"speaker_id": "kept"}, files=[wav_part(SPEECH["vctk_p225"][0])]
        ).json()
        assert v["match"] is True  # a successful verification starts the retention again
        assert client.get("/speakers/kept").json()["expires_at"] > record["expires_at"] + 1.0
        time.sleep(1.2)
        assert client.get("/speakers/dropped").status_code == 404  # expired: gone at once for reads
        assert client.get("/speakers/kept").status_code == 200
        # ... and for identification and the list, though its index row waits for the sweeper
        found = client.post(
            "/identify", data={"threshold": "-1"}, files=[wav_part(SPEECH["vctk_p226"][1])]
        ).json()
        assert [c["speaker_id"] for c in found["candidates"]] == ["kept"]
        only = client.post(
            "/identify",
            data={"candidates": "dropped", "threshold": "-1"},
            files=[wav_part(SPEECH["vctk_p226"][1])],
        ).json()
        assert only["candidates"] == []
        assert only["speaker_id"] is None
        assert (found["searched"], only["searched"]) == (1, 0)
        page = client.get("/speakers").json()
        assert [s["speaker_id"] for s in page["items"]] == ["kept"]
        assert page["total"] == 1

        async def sweep() -> int:
            client_ = redis_client(redis_server.url)
            from app.store.keys import KeySchema
            from app.store.redis_store import RedisVoiceprintStore

            store = RedisVoiceprintStore(
                client_,
                KeySchema(settings.redis_namespace, settings.tenant, "-"),
                8,
                owns_client=True,
                retention_s=2.0,
            )
            try:
                return await RetentionSweeper(store).sweep()
            finally:
                await store.close()

        assert asyncio.run(sweep()) == 1
        page = client.get("/speakers").json()
        assert [s["speaker_id"] for s in page["items"]] == ["kept"]
        assert page["total"] == 1


@pytest.mark.parametrize("sealed", [False, True])
def test_enrolling_into_an_expired_voiceprint_starts_it_afresh(
    redis_server: RedisProcess, tiny_model: Path, sealed: bool
) -> None:
    # Gone for reads, not yet swept: nothing of what expired may be added to.
    key = {"voiceprint_key": new_key_text()} if sealed else {}
    settings = settings_for(
        redis_server.url, tiny_model, retention_days=1.0 / 86400, tenant=f"afresh-{sealed}", **key
    )
    with TestClient(create_app(settings)) as client:
        first = client.post("/enroll", data={"speaker_id": "gone"}, files=[wav_part(SPEECH["vctk_p226"][0])])
        assert first.json()["utterances"] == 1
        time.sleep(1.2)
        anew = client.post("/enroll", data={"speaker_id": "gone"}, files=[wav_part(SPEECH["vctk_p225"][1])])
        assert (anew.json()["created"], anew.json()["utterances"]) == (True, 1)
        v = client.post(
            "/verify", data={"speaker_id": "gone"}, files=[wav_part(SPEECH["vctk_p225"][1])]
        ).json()
        assert v["score"] > 0.99  # only the new recording in it


def test_no_retention_means_no_expiry(redis_server: RedisProcess, tiny_model: Path) -> None:
    settings = settings_for(redis_server.url, tiny_model, retention_days=0)
    with TestClient(create_app(settings)) as client:
        client.post("/enroll", data={"speaker_id": "forever"}, files=[wav_part(SPEECH["vctk_p225"][0])])
        assert client.get("/speakers/forever").json()["expires_at"] is None


def test_kek_fingerprint_names_the_key_without_revealing_it() -> None:
    text = new_key_text()
    kek = KeyEncryptionKey.from_text(text)
    assert kek.fingerprint not in text
    assert KeyEncryptionKey.from_text(text).fingerprint == kek.fingerprint
    assert KeyEncryptionKey.from_text(new_key_text()).fingerprint != kek.fingerprint


def test_a_malformed_voiceprint_key_is_an_invalid_setting_not_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.core.settings_errors import InvalidSettings, load_settings

    for bad in ("zz", "ab" * 31, "not base64 at all!"):
        monkeypatch.setenv("VOXGATE_VOICEPRINT_KEY", bad)
        with pytest.raises(InvalidSettings) as refused:
            load_settings()
        assert "VOXGATE_VOICEPRINT_KEY" in str(refused.value)
        assert bad not in str(refused.value)
