"""The same recording enrolled twice no longer counts twice: refused (409 duplicate_audio, nothing stored)
or warned (VOXGATE_DUPLICATE_ENROLLMENT=warn), whatever container carries the audio, within one request
too, for plain and encrypted voiceprints - the real app on a real redis-server."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.factory import create_app
from tests.support.data import speech_files, wav_part
from tests.support.redis_server import RedisProcess, redis_snapshot, settings_for

SPEECH = speech_files()["vctk_p225"]


def flac_part(path: Path) -> tuple[str, tuple[str, bytes, str]]:
    """The recording as it is stored (FLAC): the same samples as its WAV (``wav_part``)."""
    return ("audio", (path.name, path.read_bytes(), "audio/flac"))


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "encrypted"])
def test_a_recording_already_enrolled_is_refused(
    redis_server: RedisProcess, tiny_model: Path, sealed: bool
) -> None:
    key = secrets.token_hex(32) if sealed else None
    settings = settings_for(redis_server.url, tiny_model, voiceprint_key=key)
    url, ns = settings.redis_url or "", settings.redis_namespace
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        first = c.post("/enroll", data={"speaker_id": "alice"}, files=[wav_part(SPEECH[0])])
        assert (first.status_code, first.json()["warnings"]) == (200, [])
        before = redis_snapshot(url, ns)
        for files in (
            [flac_part(SPEECH[0])],  # the same audio in another container
            [wav_part(SPEECH[1]), flac_part(SPEECH[0])],  # among new ones: nothing of the request is stored
            [wav_part(SPEECH[1]), flac_part(SPEECH[1])],  # twice in one request
        ):
            r = c.post("/enroll", data={"speaker_id": "alice"}, files=files)
            assert r.status_code == 409, r.text
            problem = r.json()
            assert problem["code"] == "duplicate_audio"
            assert problem["files"] == [files[-1][1][0]]
            assert redis_snapshot(url, ns) == before
        added = c.post(
            "/enroll", data={"speaker_id": "alice"}, files=[wav_part(SPEECH[1]), wav_part(SPEECH[2])]
        )
        assert (added.status_code, added.json()["utterances"]) == (200, 3)
        # Another speaker may hold the same recording (a shared prompt, a mistake): not this rule's business.
        assert c.post("/enroll", data={"speaker_id": "bob"}, files=[wav_part(SPEECH[0])]).status_code == 200
        # A speaker deleted and enrolled again starts afresh.
        assert c.delete("/speakers/alice").status_code == 200
        assert c.post("/enroll", data={"speaker_id": "alice"}, files=[wav_part(SPEECH[0])]).status_code == 200
        assert c.get("/speakers/alice").json()["utterances"] == 1


def test_warn_counts_it_again_and_says_so(redis_server: RedisProcess, tiny_model: Path) -> None:
    settings = settings_for(redis_server.url, tiny_model, duplicate_enrollment="warn")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.post("/enroll", data={"speaker_id": "alice"}, files=[wav_part(SPEECH[0])])
        again = c.post(
            "/enroll", data={"speaker_id": "alice"}, files=[flac_part(SPEECH[0]), wav_part(SPEECH[1])]
        )
        assert again.status_code == 200
        body = again.json()
        assert body["utterances"] == 3
        assert [(w["code"], w["file"]) for w in body["warnings"]] == [("duplicate_audio", SPEECH[0].name)]


def test_the_same_audio_twice_in_one_request_is_refused_before_any_inference(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    settings = settings_for(redis_server.url, tiny_model)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        engine = c.app_state["voxgate"].engine  # type: ignore[attr-defined]
        batches = engine.batches_run
        r = c.post("/enroll", data={"speaker_id": "carol"}, files=[wav_part(SPEECH[3]), flac_part(SPEECH[3])])
        assert r.status_code == 409, r.text
        assert r.json()["files"] == [SPEECH[3].name]
        assert engine.queue_depth() == 0
        assert engine.batches_run == batches  # nothing was embedded for it
