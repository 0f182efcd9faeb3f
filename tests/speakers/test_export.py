"""A data-subject export: everything held about one speaker except the voiceprint itself (records under
every model with their metadata, lockout state, every audit event naming it), from the API
(`GET /speakers/{id}/export`, scope `export`) and the command line (`voxgate speakers export`) alike,
with encrypted voiceprints - the real app on a real redis-server."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from fastapi.testclient import TestClient

from app.access.scopes import Scope
from app.api.factory import create_app
from tests.support.access import audit_events, bearer, new_key
from tests.support.data import speech_files, wav_part
from tests.support.redis_server import RedisProcess, settings_for
from tests.support.service import run_voxgate

SPEECH = speech_files()["librispeech_1688"]


def test_everything_held_about_a_speaker_but_the_voiceprint(
    redis_server: RedisProcess, tiny_model: Path
) -> None:
    kek = secrets.token_hex(32)
    settings = settings_for(
        redis_server.url, tiny_model, auth="required", rate_limit_rps=0.0, voiceprint_key=kek
    )
    env = {"REDIS_URL": settings.redis_url or "", "VOXGATE_REDIS_NAMESPACE": settings.redis_namespace,
           "VOXGATE_VOICEPRINT_KEY": kek}  # fmt: skip
    _, client_key = new_key(settings, "acme")
    office_id, office = new_key(settings, "acme", scopes=frozenset({Scope.EXPORT}))
    _, other_tenant = new_key(settings, "globex")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        h = bearer(client_key)
        meta = '{"customer": "C-1234"}'
        enrolled = c.post(
            "/enroll", headers=h, data={"speaker_id": "alice", "metadata": meta}, files=[wav_part(SPEECH[0])]
        )
        assert enrolled.status_code == 200
        assert (
            c.post("/enroll", headers=h, data={"speaker_id": "bob"}, files=[wav_part(SPEECH[3])]).status_code
            == 200
        )
        c.post("/verify", headers=h, data={"speaker_id": "alice"}, files=[wav_part(SPEECH[0])])
        c.post(
            "/verify", headers=h, data={"speaker_id": "alice", "threshold": "1"}, files=[wav_part(SPEECH[2])]
        )
        c.post("/identify", headers=h, data={"candidates": "alice"}, files=[wav_part(SPEECH[0])])

        r = c.get("/speakers/alice/export", headers=bearer(office))
        assert r.status_code == 200, r.text
        export = r.json()
        assert (export["speaker_id"], export["tenant"]) == ("alice", "acme")
        (record,) = export["voiceprints"]
        assert record["metadata"] == {"customer": "C-1234"}  # opened: sealed at rest
        assert (record["utterances"], record["recordings_fingerprinted"]) == (1, 1)
        assert record["expires_at"] is not None
        assert (export["locked_until"], export["recent_failed_verifications"]) == (None, 1)
        history = [(e["action"], e["outcome"], e["match"]) for e in export["audit_events"]]
        assert history == [
            ("enroll", "ok", None),
            ("verify", "ok", True),
            ("verify", "ok", False),
            ("identify", "ok", True),
        ]
        assert "recordings added" in export["audit_events"][0]["detail"]
        # Nothing of the voiceprint: no sum, no digest, no other speaker.
        assert not {"sum", "clips"} & set(record)
        assert "bob" not in r.text

        # Other tenants have no such speaker; nobody is 404; the exports are audited.
        assert c.get("/speakers/alice/export", headers=bearer(other_tenant)).status_code == 404
        assert c.get("/speakers/nobody/export", headers=bearer(office)).json()["code"] == "speaker_not_found"
        exports = [e for e in audit_events(settings, "acme") if e.action == "export"]
        assert [(e.speaker_id, e.outcome, e.key_id) for e in exports] == [
            ("alice", "ok", office_id),
            ("nobody", "speaker_not_found", office_id),
        ]

        # After deletion the voiceprint is gone; what the trail keeps about the speaker is still held.
        assert c.delete("/speakers/alice", headers=h).status_code == 200
        after = c.get("/speakers/alice/export", headers=bearer(office)).json()
        assert after["voiceprints"] == []
        assert [e["action"] for e in after["audit_events"]][-2:] == ["export", "delete"]

    cli = run_voxgate("speakers", "export", "--tenant", "acme", "alice", env=env)
    assert cli.returncode == 0, cli.stderr
    # The same, and the API's last export of it.
    shown = [e["action"] for e in json.loads(cli.stdout)["audit_events"]]
    assert shown == [e["action"] for e in after["audit_events"]] + ["export"]
    for args in (
        ("--tenant", "acme", "never-named"),
        ("--tenant", "acme-typo", "alice"),
        ("--tenant", "acme", "x y"),
    ):
        refused = run_voxgate("speakers", "export", *args, env=env)
        assert refused.returncode == 1, args
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
