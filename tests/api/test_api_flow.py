"""The API's happy paths, its documents and its multi-replica behaviour (full lifespan, real Redis,
real engine on a small real ONNX graph; speaker accuracy is tested with the trained model in
test_api_e2e.py)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.factory import create_app
from app.core.settings import Settings
from tests.support.data import speech_files, wav_bytes, wav_part
from tests.support.models import TINY_DIM, build_tiny_model
from tests.support.redis_server import RedisProcess, redis_snapshot, set_threshold_policy, settings_for

SPEECH = speech_files()


@pytest.fixture
def settings(redis_server: RedisProcess, tiny_model: Path) -> Settings:
    return settings_for(redis_server.url, tiny_model)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_the_start_up_heap_is_left_out_of_full_collections_while_serving(settings: Settings) -> None:
    # A full pass of the cyclic collector holds the GIL, hence the event loop: what start-up built
    # (modules, the app, the model) is frozen while the app serves, and unfrozen when it stops.
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(settings)) as c:
        frozen = gc.get_freeze_count()
        assert c.get("/healthz").status_code == 200
    assert frozen > 50_000
    assert gc.get_freeze_count() == 0


def test_enroll_get_list_delete(client: TestClient, settings: Settings) -> None:
    files = SPEECH["librispeech_1688"]
    r = client.post(
        "/enroll", data={"speaker_id": "alice", "metadata": '{"dept": "sales"}'}, files=[wav_part(files[0])]
    )
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["created"] is True
    assert first["utterances"] == 1
    assert first["added_utterances"] == 1
    assert 1.0 < first["speech_seconds"] < 8.0
    assert first["enrolled"] is False
    assert first["remaining_speech_seconds"] == pytest.approx(8.0 - first["speech_seconds"], abs=1e-3)
    assert first["model"].startswith("tiny-test@")

    r = client.post("/enroll", data={"speaker_id": "alice"}, files=[wav_part(f) for f in files[1:4]])
    second = r.json()
    assert second["created"] is False
    assert second["utterances"] == 4
    assert second["speech_seconds"] > first["speech_seconds"]
    assert second["enrolled"] is True
    assert second["remaining_speech_seconds"] == 0.0

    client.post("/enroll", data={"speaker_id": "bob"}, files=[wav_part(SPEECH["vctk_p226"][0])])
    client.post("/enroll", data={"speaker_id": "carol"}, files=[wav_part(SPEECH["vctk_p225"][0])])

    speaker = client.get("/speakers/alice").json()
    assert speaker["utterances"] == 4
    assert speaker["metadata"] == {"dept": "sales"}
    assert speaker["enrolled"] is True
    assert speaker["created_at"] <= speaker["updated_at"]

    page1 = client.get("/speakers", params={"limit": 2}).json()
    assert [s["speaker_id"] for s in page1["items"]] == ["alice", "bob"]
    assert page1["total"] == 3
    page2 = client.get("/speakers", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    assert [s["speaker_id"] for s in page2["items"]] == ["carol"]
    assert page2["next_cursor"] is None

    r = client.delete("/speakers/alice")
    assert r.status_code == 200
    assert r.json()["deleted_models"] == [speaker["model"]]
    assert client.get("/speakers/alice").status_code == 404
    keys = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
    assert not [k for k in keys if b"alice" in k]
    identify = client.post("/identify", files=[wav_part(files[0])], data={"top_k": "10"}).json()
    assert "alice" not in [c["speaker_id"] for c in identify["candidates"]]


def test_verify_and_identify_shapes(client: TestClient, settings: Settings) -> None:
    # Any threshold a request asks for, here: this tests the answers' shapes (tests/access the floor).
    set_threshold_policy(settings, settings.tenant, floor=-1.0)
    p225 = SPEECH["vctk_p225"]
    client.post("/enroll", data={"speaker_id": "p225"}, files=[wav_part(p225[0]), wav_part(p225[1])])
    client.post("/enroll", data={"speaker_id": "p226"}, files=[wav_part(SPEECH["vctk_p226"][0])])

    v = client.post(
        "/verify", data={"speaker_id": "p225", "threshold": "-1"}, files=[wav_part(p225[2])]
    ).json()
    assert v["speaker_id"] == "p225"
    assert v["score_type"] == "cosine"
    assert -1.0 <= v["score"] <= 1.0
    assert v["threshold"] == -1.0
    assert v["threshold_source"] == "request"
    assert v["match"] is True
    assert v["warnings"] == []  # two VCTK recordings hold more than 8 s of speech
    partial = client.post("/verify", data={"speaker_id": "p226"}, files=[wav_part(p225[2])]).json()
    assert partial["warnings"][0]["code"] == "not_fully_enrolled"
    assert (partial["threshold"], partial["threshold_source"]) == (0.5, "model")  # the tiny model's

    pair = client.post(
        "/verify",
        files=[wav_part(p225[2]), ("reference", ("ref.wav", wav_bytes(p225[3]), "audio/wav"))],
        data={"threshold": "1.0"},
    ).json()
    assert pair["speaker_id"] is None
    assert pair["reference"] == "ref.wav"
    assert pair["match"] is (pair["score"] >= 1.0)

    ident = client.post("/identify", files=[wav_part(p225[2])], data={"top_k": "1", "threshold": "-1"}).json()
    assert len(ident["candidates"]) == 1
    assert ident["speaker_id"] == ident["candidates"][0]["speaker_id"]
    assert ident["searched"] == 2
    # The answer says when the speaker it names is not fully enrolled, as /verify does of that voiceprint.
    warned = {"p225": [], "p226": ["not_fully_enrolled"]}[ident["speaker_id"]]
    assert [w["code"] for w in ident["warnings"]] == warned
    weak = client.post(
        "/identify", files=[wav_part(SPEECH["vctk_p226"][1])], data={"candidates": "p226", "threshold": "-1"}
    ).json()
    assert weak["speaker_id"] == "p226"
    assert [w["code"] for w in weak["warnings"]] == ["not_fully_enrolled"]
    nobody = client.post("/identify", files=[wav_part(p225[2])], data={"threshold": "1.0"}).json()
    assert nobody["speaker_id"] is None
    assert nobody["score"] is None
    scores = [c["score"] for c in nobody["candidates"]]
    assert scores == sorted(scores, reverse=True)
    restricted = client.post(
        "/identify", files=[wav_part(p225[2])], data={"candidates": ["p226", "ghost"], "threshold": "-1"}
    ).json()
    assert [c["speaker_id"] for c in restricted["candidates"]] == ["p226"]
    assert restricted["searched"] == 1
    assert restricted["warnings"][0]["code"] == "unknown_candidates"


def test_health_ready_metrics_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["provider"] == "CPUExecutionProvider"
    assert body["precision"] == "fp32"  # models/default
    assert all(body["checks"].values())

    client.post("/identify", files=[wav_part(SPEECH["vctk_p225"][0])])
    metrics = client.get("/metrics").text
    assert 'voxgate_http_requests_total{method="POST",route="/identify",status="200"}' in metrics
    assert "voxgate_engine_batch_size" in metrics

    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) >= {"/enroll", "/verify", "/identify", "/speakers", "/speakers/{speaker_id}",
                                  "/healthz", "/readyz", "/metrics"}  # fmt: skip
    enroll_body = spec["paths"]["/enroll"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert enroll_body == {"$ref": "#/components/schemas/EnrollForm"}
    assert spec["components"]["schemas"]["EnrollForm"]["properties"]["audio"]["items"]["format"] == "binary"
    assert spec["paths"]["/verify"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert client.get("/docs").status_code == 200


def test_other_model_does_not_see_enrollments(
    redis_server: RedisProcess, tiny_model: Path, tmp_path: Path, settings: Settings
) -> None:
    other_model = build_tiny_model(tmp_path / "other", name="tiny-other")
    other_settings = settings.model_copy(update={"model_dir": other_model})
    with TestClient(create_app(settings)) as first:
        assert (
            first.post(
                "/enroll", data={"speaker_id": "dora"}, files=[wav_part(SPEECH["vctk_p225"][0])]
            ).status_code
            == 200
        )
    with TestClient(create_app(other_settings), raise_server_exceptions=False) as second:
        r = second.get("/speakers/dora")
        assert r.status_code == 404
        assert r.json()["other_models"][0].startswith("tiny-test@")
        assert "other model" in r.json()["detail"]
        assert second.get("/speakers").json()["total"] == 0
        ident = second.post("/identify", files=[wav_part(SPEECH["vctk_p225"][0])]).json()
        assert ident["candidates"] == []
        assert (
            second.post(
                "/verify", data={"speaker_id": "dora"}, files=[wav_part(SPEECH["vctk_p225"][0])]
            ).status_code
            == 404
        )
        # erasure covers every model
        assert second.delete("/speakers/dora").json()["deleted_models"][0].startswith("tiny-test@")
    with TestClient(create_app(settings), raise_server_exceptions=False) as first:
        assert first.get("/speakers/dora").status_code == 404


def test_two_replicas_see_each_others_enrollments(settings: Settings) -> None:
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        assert (
            a.post(
                "/enroll", data={"speaker_id": "eve"}, files=[wav_part(SPEECH["vctk_p225"][0])]
            ).status_code
            == 200
        )
        assert (
            b.post(
                "/enroll", data={"speaker_id": "finn"}, files=[wav_part(SPEECH["vctk_p226"][0])]
            ).status_code
            == 200
        )

        def indexed(client: TestClient) -> set[str]:
            r = client.post("/identify", files=[wav_part(SPEECH["vctk_p225"][1])], data={"top_k": "10"})
            return {c["speaker_id"] for c in r.json()["candidates"]}

        # sync interval 0.05 s: both must see both within one second
        for _ in range(20):
            if indexed(a) == indexed(b) == {"eve", "finn"}:
                break
            threading.Event().wait(0.05)
        assert indexed(a) == {"eve", "finn"}
        assert indexed(b) == {"eve", "finn"}
        b.delete("/speakers/eve")
        for _ in range(20):
            if indexed(a) == {"finn"}:
                break
            threading.Event().wait(0.05)
        assert indexed(a) == {"finn"}


def test_tiny_dim_is_what_the_store_keeps(client: TestClient, settings: Settings) -> None:
    client.post("/enroll", data={"speaker_id": "gil"}, files=[wav_part(SPEECH["vctk_p225"][0])])
    snapshot = redis_snapshot(settings.redis_url or "", settings.redis_namespace)
    assert any(k.endswith(b":spk:gil") for k in snapshot)
    import redis

    r = redis.Redis.from_url(settings.redis_url or "")
    try:
        key = next(k for k in snapshot if k.endswith(b":spk:gil"))
        assert len(r.hget(key, "sum") or b"") == 4 * TINY_DIM
    finally:
        r.close()


def test_fifty_concurrent_enrollments_through_the_api(settings: Settings) -> None:
    # The same recording 50 times at once: counted 50 times where duplicates are only warned of ...
    files = SPEECH["librispeech_533"]
    warned = settings.model_copy(update={"duplicate_enrollment": "warn"})
    with TestClient(create_app(warned), raise_server_exceptions=False) as client:
        single = client.post("/enroll", data={"speaker_id": "solo"}, files=[wav_part(files[0])]).json()
        answers = _enroll_at_once(client, "crowd", files[0], 50)
        assert [r.status_code for r in answers] == [200] * 50
        assert sorted(len(r.json()["warnings"]) for r in answers) == [0] + [1] * 49
        _check_crowd(client, files[0], single)
    # ... and once (the first to reach Redis, on any replica) where they are refused.
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answers = _enroll_at_once(client, "refused", files[0], 20)
        assert sorted(r.status_code for r in answers) == [200] + [409] * 19
        assert {r.json()["code"] for r in answers if r.status_code == 409} == {"duplicate_audio"}
        assert client.get("/speakers/refused").json()["utterances"] == 1


def _enroll_at_once(client: TestClient, speaker_id: str, path: Path, n: int) -> list[Any]:
    answers: list[Any] = []

    def enroll() -> None:
        answers.append(client.post("/enroll", data={"speaker_id": speaker_id}, files=[wav_part(path)]))

    threads = [threading.Thread(target=enroll) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def _check_crowd(client: TestClient, path: Path, single: dict[str, Any]) -> None:
    files = [path]
    crowd = client.get("/speakers/crowd").json()
    assert crowd["utterances"] == 50
    assert crowd["speech_seconds"] == pytest.approx(50 * single["speech_seconds"], abs=1e-3)
    # the same recording 50 times: the voiceprint points where the single one does
    v = client.post("/verify", data={"speaker_id": "crowd"}, files=[wav_part(files[0])]).json()
    w = client.post("/verify", data={"speaker_id": "solo"}, files=[wav_part(files[0])]).json()
    assert v["score"] == pytest.approx(w["score"], abs=1e-5)
