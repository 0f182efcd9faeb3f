"""Secrets as a deployment delivers them: the voiceprint key and the Redis password from files (Compose
secrets, Kubernetes Secret volumes), an empty key refused instead of meaning "no encryption", a loud
warning when encryption is off on a public address, a password-protected Redis, and a Redis at its
memory limit (noeviction) - against real redis-servers, the real app and a real `voxgate serve`."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from app.api.factory import create_app
from app.core.crypto import sealed_version
from app.core.settings import url_with_password, url_without_password
from app.core.settings_errors import InvalidSettings, load_settings
from tests.support.data import speech_files, wav_part
from tests.support.redis_server import OwnRedis, RedisProcess, settings_for
from tests.support.service import LiveService, run_voxgate

SPEECH = speech_files()
KEY = "2f" * 32  # a valid 256-bit key (64 hex digits)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("REDIS_URL", "VOXGATE_REDIS_URL", "VOXGATE_VOICEPRINT_KEY", "VOXGATE_VOICEPRINT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("VOXGATE_REDIS_PASSWORD_FILE", raising=False)
    return monkeypatch


# --- settings ---------------------------------------------------------------------------------------------
def test_an_empty_voiceprint_key_is_refused_not_taken_for_no_encryption(
    clean_env: pytest.MonkeyPatch,
) -> None:
    for empty in ("", "  "):
        clean_env.setenv("VOXGATE_VOICEPRINT_KEY", empty)
        with pytest.raises(InvalidSettings) as refused:
            load_settings()
        (line,) = str(refused.value).splitlines()
        assert line.startswith("VOXGATE_VOICEPRINT_KEY: ")
        assert "empty" in line
        assert "unset the variable" in line
    clean_env.delenv("VOXGATE_VOICEPRINT_KEY")
    assert load_settings().voiceprint_key is None  # unset is the one way to say "no encryption"


def test_the_voiceprint_key_from_a_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "voiceprint_key"
    key_file.write_text(KEY + "\n")  # as `echo` and most secret tools write it
    clean_env.setenv("VOXGATE_VOICEPRINT_KEY_FILE", str(key_file))
    settings = load_settings()
    assert settings.voiceprint_key is not None
    assert settings.voiceprint_key.get_secret_value() == KEY

    clean_env.setenv("VOXGATE_VOICEPRINT_KEY", "3e" * 32)  # another key: which one is meant?
    with pytest.raises(InvalidSettings, match="not both"):
        load_settings()
    clean_env.delenv("VOXGATE_VOICEPRINT_KEY")
    for content, reason in (("", "the file is empty"), ("\n", "the file is empty"), ("abc", "32 bytes")):
        key_file.write_text(content)
        with pytest.raises(InvalidSettings) as refused:
            load_settings()
        (line,) = str(refused.value).splitlines()
        assert line.startswith(f"VOXGATE_VOICEPRINT_KEY_FILE={key_file}: ")
        assert reason in line
    key_file.write_text("ab" * 31 + "zz")  # malformed: the error must not show the text
    with pytest.raises(InvalidSettings) as refused:
        load_settings()
    assert "ab" * 31 not in str(refused.value)
    clean_env.setenv("VOXGATE_VOICEPRINT_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(InvalidSettings, match="cannot read the file"):
        load_settings()


def test_the_redis_password_file_goes_into_the_url(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    password_file = tmp_path / "redis_password"
    password_file.write_text("s3cret/with:odd@chars\n")
    clean_env.setenv("VOXGATE_REDIS_PASSWORD_FILE", str(password_file))
    with pytest.raises(InvalidSettings, match="needs REDIS_URL"):
        load_settings()  # the embedded redis-server has no password
    clean_env.setenv("REDIS_URL", "redis://redis:6379/0")
    url = load_settings().redis_url
    assert url == "redis://:s3cret%2Fwith%3Aodd%40chars@redis:6379/0"
    assert redis.Redis.from_url(url).connection_pool.connection_kwargs["password"] == "s3cret/with:odd@chars"
    clean_env.setenv("REDIS_URL", "rediss://default:other@redis:6380/1")
    with pytest.raises(InvalidSettings, match="names a password already"):
        load_settings()
    assert url_with_password("redis://app@redis:6379/0", "pw") == "redis://app:pw@redis:6379/0"
    assert url_without_password(url) == "redis://redis:6379/0"
    assert url_without_password("redis://app:pw@redis:6379/0") == "redis://app@redis:6379/0"


# --- the warning ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "key", "warned"), [("0.0.0.0", None, True), ("0.0.0.0", KEY, False), ("127.0.0.1", None, False)]
)
def test_encryption_off_on_a_public_address_is_a_loud_warning(
    redis_server: RedisProcess,
    tiny_model: Path,
    caplog: pytest.LogCaptureFixture,
    host: str,
    key: str | None,
    warned: bool,
) -> None:
    settings = settings_for(redis_server.url, tiny_model, host=host, auth="required", voiceprint_key=key)
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as c:
        assert c.get("/healthz").status_code == 200
    warnings = [r for r in caplog.records if "ENCRYPTION AT REST IS OFF" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert warnings[0].levelno == logging.WARNING
        assert f"OFF on {host}" in warnings[0].getMessage()


# --- a password-protected Redis, for real ------------------------------------------------------------------
def _environments(pid: int) -> list[bytes]:
    """The environment of ``pid`` and of every process below it (Linux /proc)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            found.append(Path(f"/proc/{current}/environ").read_bytes())
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pending += [int(child) for child in children]
    return found


@pytest.mark.parametrize("workers", ["0", "2"], ids=["one process", "two workers"])
def test_a_served_process_reads_its_secrets_from_files(
    tmp_path: Path, tiny_model: Path, workers: str
) -> None:
    password = "pw-" + "7" * 40
    protected = OwnRedis(tmp_path / "redis", password=password)
    (tmp_path / "redis").mkdir()
    protected.start()
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "redis_password").write_text(password + "\n")
    (secrets / "voiceprint_key").write_text(KEY + "\n")
    files = {
        "redis_password_file": str(secrets / "redis_password"),
        "voiceprint_key_file": str(secrets / "voiceprint_key"),
    }
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=protected.port).ping()  # nobody gets in without it
        settings = {**files, "host": "127.0.0.1", "workers": workers}
        with LiveService(tiny_model, protected.url, tmp_path / "serve", settings) as svc:
            assert "password" not in svc.env["REDIS_URL"]
            environments = _environments(svc.pid)
            assert len(environments) >= (4 if workers == "2" else 1)  # supervisor, inference, 2 workers
            for environment in environments:  # the secrets stay in their files, in every process
                assert password.encode() not in environment
                assert KEY.encode() not in environment
            enrolled = httpx.post(
                f"{svc.url}/enroll", data={"speaker_id": "s"}, files=[wav_part(SPEECH["vctk_p225"][0])]
            )
            assert enrolled.status_code == 200, enrolled.text
            namespace = svc.env["VOXGATE_REDIS_NAMESPACE"]
            env = {
                "REDIS_URL": protected.url,
                "VOXGATE_REDIS_NAMESPACE": namespace,
                "VOXGATE_REDIS_PASSWORD_FILE": files["redis_password_file"],
            }
            created = run_voxgate("keys", "create", "--tenant", "acme", env=env)  # admin commands alike
            assert created.returncode == 0, created.stderr
            without = run_voxgate("keys", "list", env={**env, "VOXGATE_REDIS_PASSWORD_FILE": ""})
            assert without.returncode == 1
            assert "refused the connection's credentials" in without.stderr
            assert "VOXGATE_REDIS_PASSWORD_FILE" in without.stderr
        client = protected.client()
        (sum_key,) = list(client.scan_iter(match=f"{namespace}:*:spk:s"))
        assert sealed_version(client.hget(sum_key, "sum") or b"") is not None  # encrypted with the file's key
        assert password not in svc.log
        assert KEY not in svc.log
        client.close()
    finally:
        protected.stop()


def test_a_redis_at_its_memory_limit_refuses_writes_with_507_and_keeps_reads(
    tmp_path: Path, tiny_model: Path
) -> None:
    own = OwnRedis(tmp_path, "--maxmemory-policy", "noeviction")
    own.start()
    try:
        settings = settings_for(own.url, tiny_model)
        with TestClient(create_app(settings)) as c:
            assert c.post(
                "/enroll", data={"speaker_id": "a"}, files=[wav_part(SPEECH["vctk_p225"][0])]
            ).is_success
            raw = own.client()
            raw.config_set("maxmemory", int(raw.info("memory")["used_memory"]) + 1024)
            full = c.post("/enroll", data={"speaker_id": "b"}, files=[wav_part(SPEECH["vctk_p226"][0])])
            assert full.status_code == 507
            assert full.json()["code"] == "store_full"
            assert c.get("/speakers/a").status_code == 200  # reads go on
            assert c.get("/speakers/b").status_code == 404  # nothing of the refused enrollment
            raw.config_set("maxmemory", 0)
            assert c.post(
                "/enroll", data={"speaker_id": "b"}, files=[wav_part(SPEECH["vctk_p226"][0])]
            ).is_success
            raw.close()
    finally:
        own.stop()
