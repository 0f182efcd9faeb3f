"""Lockout after repeated failed verifications of one speaker, counted by two real `voxgate serve`
replicas sharing one real redis-server: the limit holds across replicas and under concurrent attempts
(exactly VOXGATE_LOCKOUT_FAILURES decisions, never more), the lock answers 423 speaker_locked with
Retry-After on both, ends after its back-off or with `voxgate lockout clear`, hides the speaker from
/identify, and is audited and counted in /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.access.lockout import Lockout, Outcome, Settled
from app.api.factory import create_app
from app.core.errors import SpeakerBusy, SpeakerLocked
from app.store.connection import Batch, redis_client
from tests.support.access import bearer
from tests.support.data import speech_files, wav_bytes, wav_part
from tests.support.models import build_tiny_model
from tests.support.redis_server import RedisProcess, settings_for
from tests.support.service import LiveService, run_voxgate

SPEECH = speech_files()["librispeech_1688"]
FAILURES = 5  # the default
LOCK_S = 4.0


@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveService, LiveService, dict[str, str], str]]:
    model = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    namespace = f"lockout-{os.getpid()}"
    common = {
        "auth": "required",
        "redis_namespace": namespace,
        "rate_limit_rps": "0",
        "lockout_s": str(LOCK_S),
    }
    one = LiveService(model, redis_server.url, tmp_path_factory.mktemp("replica1"), common)
    two = LiveService(model, redis_server.url, tmp_path_factory.mktemp("replica2"), common)
    one.env["VOXGATE_REDIS_NAMESPACE"] = two.env["VOXGATE_REDIS_NAMESPACE"] = namespace
    env = {
        "REDIS_URL": redis_server.url,
        "VOXGATE_REDIS_NAMESPACE": namespace,
        "VOXGATE_LOCKOUT_S": str(LOCK_S),
    }
    with one, two:
        created = run_voxgate("keys", "create", "--tenant", "acme", "--json", env=env)
        yield one, two, env, json.loads(created.stdout)["key"]


def _post(url: str, key: str, path: str, data: dict[str, str], audio: Path) -> httpx.Response:
    files = {"audio": (audio.with_suffix(".wav").name, wav_bytes(audio), "audio/wav")}
    return httpx.post(f"{url}{path}", headers=bearer(key), data=data, files=files, timeout=60)


def _fail(url: str, key: str, speaker: str) -> httpx.Response:
    # Another recording of the same voice, at the strictest threshold a request may ask for: no match.
    return _post(url, key, "/verify", {"speaker_id": speaker, "threshold": "1"}, SPEECH[2])


def _pass(url: str, key: str, speaker: str) -> httpx.Response:
    return _post(url, key, "/verify", {"speaker_id": speaker}, SPEECH[0])  # the enrolled recording


def _enroll(url: str, key: str, speaker: str) -> None:
    assert _post(url, key, "/enroll", {"speaker_id": speaker}, SPEECH[0]).status_code == 200


def _audit(env: dict[str, str], *args: str) -> list[dict[str, object]]:
    shown = run_voxgate("audit", "--tenant", "acme", "--json", *args, env=env)
    return [json.loads(line) for line in shown.stdout.splitlines()]


def test_failures_on_either_replica_lock_the_speaker_on_both(
    replicas: tuple[LiveService, LiveService, dict[str, str], str],
) -> None:
    one, two, env, key = replicas
    _enroll(one.url, key, "bob")
    for n in range(FAILURES):
        answer = _fail((one, two)[n % 2].url, key, "bob")
        assert (answer.status_code, answer.json()["match"]) == (200, False), answer.text
    for replica in (one, two):
        for attempt in (_fail, _pass):  # even the right voice: the speaker is locked
            refused = attempt(replica.url, key, "bob")
            assert refused.status_code == 423, refused.text
            assert refused.json()["code"] == "speaker_locked"
            assert 1 <= int(refused.headers["retry-after"]) <= LOCK_S
    # While locked, /identify does not find the speaker either.
    found = _post(two.url, key, "/identify", {"threshold": "0.9"}, SPEECH[0]).json()
    assert "bob" not in [c["speaker_id"] for c in found["candidates"]]
    listed = run_voxgate("lockout", "list", "--tenant", "acme", "--json", env=env)
    assert [entry["speaker_id"] for entry in json.loads(listed.stdout)] == ["bob"]
    # Audited: the failures, the lock (once), the refused attempts; counted by the replica that locked.
    events = _audit(env, "--speaker", "bob")
    assert [e["match"] for e in events if e["action"] == "verify" and e["outcome"] == "ok"] == [
        False
    ] * FAILURES
    (locked,) = [e for e in events if e["action"] == "lockout"]
    assert f"{FAILURES} failed verifications" in str(locked["detail"])
    assert len([e for e in events if e["outcome"] == "speaker_locked"]) == 4
    counted = 0.0
    for replica in (one, two):
        for line in httpx.get(f"{replica.url}/metrics").text.splitlines():
            if line.startswith("voxgate_speaker_lockouts_total "):
                counted += float(line.split()[1])
    assert counted == 1.0
    # The operator lifts it: at once, on both replicas.
    cleared = run_voxgate("lockout", "clear", "--tenant", "acme", "bob", env=env)
    assert cleared.returncode == 0, cleared.stderr
    assert "lock lifted" in cleared.stdout
    assert _pass(two.url, key, "bob").json()["match"] is True
    assert _audit(env, "--speaker", "bob")[-2]["action"] == "lockout_clear"


def test_a_match_forgets_the_failures_before_it(
    replicas: tuple[LiveService, LiveService, dict[str, str], str],
) -> None:
    one, two, _, key = replicas
    _enroll(one.url, key, "dora")
    for _ in range(2):
        assert [_fail(r.url, key, "dora").status_code for r in (one, two, one, two)] == [200] * (FAILURES - 1)
        assert _pass(two.url, key, "dora").json()["match"] is True


def test_concurrent_attempts_on_both_replicas_get_exactly_the_allowed_decisions(
    replicas: tuple[LiveService, LiveService, dict[str, str], str],
) -> None:
    one, two, _, key = replicas
    _enroll(two.url, key, "carol")
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda n: _fail((one, two)[n % 2].url, key, "carol"), range(12)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == FAILURES, [a.text for a in answers]
    # The rest: refused while attempts were under way (429 speaker_busy), or once they had failed (423).
    refused = {(a.status_code, a.json()["code"]) for a in answers if a.status_code != 200}
    assert refused <= {(423, "speaker_locked"), (429, "speaker_busy")}, refused
    assert all(a.json()["match"] is False for a in answers if a.status_code == 200)
    # The back-off ends by itself.
    time.sleep(LOCK_S + 0.5)
    assert _pass(one.url, key, "carol").json()["match"] is True


def test_concurrent_matching_attempts_never_lock_the_speaker(
    replicas: tuple[LiveService, LiveService, dict[str, str], str],
) -> None:
    """More verifications of one speaker at once than the lockout lets fail: those beyond it wait (429
    speaker_busy, retry soon), none is told the speaker is locked, and the speaker never is."""
    one, two, _, key = replicas
    _enroll(one.url, key, "erin")
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda n: _pass((one, two)[n % 2].url, key, "erin"), range(12)))
    assert {(a.status_code, a.json().get("code")) for a in answers if a.status_code != 200} <= {
        (429, "speaker_busy")
    }
    assert all(a.json()["match"] for a in answers if a.status_code == 200)
    assert _pass(two.url, key, "erin").json()["match"] is True


def test_lockout_commands_refuse_odd_input_in_one_line(
    replicas: tuple[LiveService, LiveService, dict[str, str], str],
) -> None:
    _, _, env, _ = replicas
    for args in (
        ("clear", "--tenant", "acme-typo", "bob"),
        ("clear", "--tenant", "acme", "no spaces"),
        ("list", "--tenant", "x y"),
    ):
        refused = run_voxgate("lockout", *args, env=env)
        assert refused.returncode == 1, args
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_attempts_under_way_count_until_settled_and_lapse_when_their_replica_died(
    redis_server: RedisProcess,
) -> None:
    """The reservation itself (the Lua scripts on a real Redis): attempts under way fill the allowance, so
    concurrent attempts get no more decisions than failures allowed; an attempt nobody settles stops
    counting after max_pending_s; one settled without a decision is given back."""

    async def scenario() -> None:
        client = redis_client(redis_server.url)
        lockout = Lockout(
            client, f"unit-{os.getpid()}", failures=3, window_s=60, lock_s=60, max_pending_s=1.0
        )

        async def begin(attempt: str) -> None:
            batch = Batch(client)
            lockout.queue_begin(batch, "acme", "eve", attempt)
            lockout.check_begun("eve", (await batch.run())[0])

        async def finish(attempt: str, outcome: Outcome) -> Settled:
            batch = Batch(client)
            lockout.queue_finish(batch, "acme", "eve", attempt, outcome)
            return lockout.settled("acme", (await batch.run())[0])

        try:
            for n in range(3):
                await begin(f"a{n}")
            with pytest.raises(SpeakerBusy) as busy:
                await begin("a3")
            assert busy.value.retry_after_s == 1.0  # not locked: attempts under way
            assert await finish("a0", "void") == Settled(0)  # no decision: given back
            await begin("a3")
            assert await finish("a1", "fail") == Settled(1)
            await asyncio.sleep(1.1)  # a2 and a3 were never settled (their replica died): they lapse
            await begin("a4")
            await begin("a5")
            assert (await finish("a4", "fail")).failures == 2
            locked = await finish("a5", "fail")
            assert locked.failures == 3
            assert locked.locked_until is not None
            with pytest.raises(SpeakerLocked) as refused:
                await begin("a6")
            assert 59 < refused.value.retry_after_s <= 60
            assert [s.speaker_id for s in await lockout.locked("acme")] == ["eve"]
            assert await lockout.clear("acme", "eve") is True
            await begin("a7")
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_without_a_lockout_failures_only_fail(redis_server: RedisProcess, tmp_path: Path) -> None:
    settings = settings_for(redis_server.url, build_tiny_model(tmp_path), lockout_failures=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.post("/enroll", data={"speaker_id": "eve"}, files=[wav_part(SPEECH[0])])
        for _ in range(FAILURES + 2):
            r = c.post("/verify", data={"speaker_id": "eve", "threshold": "1"}, files=[wav_part(SPEECH[2])])
            assert (r.status_code, r.json()["match"]) == (200, False)
