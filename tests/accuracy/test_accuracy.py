"""Accuracy features with real speech, the trained default model and a real service (issue 12).

- `voxgate cohort build` and `voxgate calibrate` on a copy of models/default: the manifest gets the
  threshold, the LLR calibration and the cohort with their provenance; the model key does not change.
- `voxgate eval` gives the same scores (and so the same EER) as HTTP /verify of the same pairs against a
  running `voxgate serve`, which uses the calibrated threshold by default and returns the LLR.
- Noise, tones, hum, music and silence are refused as no_speech on every endpoint; nothing is stored.
- With VOXGATE_UNLIKE_VOICEPRINT=refuse an enrollment recording unlike the voiceprint is a 409.
- AS-Norm with a tiny cohort: the service's scores are `voxgate eval --asnorm`'s.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from app.accuracy.metrics import eer
from app.accuracy.trials import read_trials
from app.api.factory import create_app
from app.core.settings import Settings
from app.engine.manifest import load_manifest
from app.speakers.policy import Policy
from tests.support.data import (
    DEFAULT_MODEL_DIR,
    REPO_ROOT,
    SAMPLE_RATE,
    SPEECH_DIR,
    encode,
    non_speech_signals,
    speech_files,
    wav_bytes,
)
from tests.support.redis_server import RedisProcess, redis_snapshot, settings_for
from tests.support.service import LiveService

SPEECH = speech_files()
TRIAL_SPEAKERS = ("librispeech_1688", "librispeech_2033", "vctk_p225")
COHORT_SPEAKERS = ("librispeech_1998", "librispeech_3080", "librispeech_533", "vctk_p226")
FILES_PER_SPEAKER = 4


def voxgate(*args: str, settings: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")} | (settings or {})
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return done


def ok_json(*args: str) -> dict[str, Any]:
    done = voxgate(*args, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def trials_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every pair of 4 recordings of 3 speakers: 18 same-speaker and 48 different-speaker trials."""
    files = [f"{s}/{p.name}" for s in TRIAL_SPEAKERS for p in SPEECH[s][:FILES_PER_SPEAKER]]
    lines = [
        f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}" for a, b in itertools.combinations(files, 2)
    ]
    path = tmp_path_factory.mktemp("trials") / "trials.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, trials_file: Path) -> Path:
    """A copy of models/default with a 4-speaker cohort and cosine + AS-Norm calibrations (EER)."""
    out = tmp_path_factory.mktemp("model") / "default"
    shutil.copytree(DEFAULT_MODEL_DIR, out)
    cohort_root = tmp_path_factory.mktemp("cohort")
    for speaker in COHORT_SPEAKERS:
        (cohort_root / speaker).symlink_to(SPEECH_DIR / speaker)
    ok_json("cohort", "build", "--root", str(cohort_root), "--model", str(out), "--top-n", "3")
    ok_json(
        "calibrate", "--trials", str(trials_file), "--root", str(SPEECH_DIR), "--model", str(out), "--eer"
    )
    ok_json(
        "calibrate",
        "--trials",
        str(trials_file),
        "--root",
        str(SPEECH_DIR),
        "--model",
        str(out),
        "--eer",
        "--asnorm",
    )
    return out


@pytest.fixture(scope="module")
def evaluation(model: Path, trials_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("eval")
    result = ok_json(
        "eval",
        "--trials",
        str(trials_file),
        "--root",
        str(SPEECH_DIR),
        "--model",
        str(model),
        "--asnorm",
        "--scores",
        str(folder / "scores.tsv"),
        "--plot",
        str(folder / "det.png"),
    )
    rows = [line.split("\t") for line in (folder / "scores.tsv").read_text().splitlines()]
    result["rows"] = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    return result


@pytest.fixture(scope="module")
def live(
    model: Path, redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    settings = {"unlike_voiceprint": "refuse", "calibrated_scores": "true"}
    with LiveService(model, redis_server.url, tmp_path_factory.mktemp("live"), settings) as service:
        yield service


def namespace(service: LiveService) -> str:
    return service.env["VOXGATE_REDIS_NAMESPACE"]


def part(path: Path, field: str = "audio") -> tuple[str, tuple[str, bytes, str]]:
    return (field, (path.with_suffix(".wav").name, wav_bytes(path), "audio/wav"))


# --- calibrate and cohort build ---------------------------------------------------------------------------
def test_calibration_is_written_with_provenance_and_keeps_the_model_key(
    model: Path, trials_file: Path, evaluation: dict[str, Any]
) -> None:
    original = load_manifest(DEFAULT_MODEL_DIR)
    manifest = load_manifest(model)
    assert manifest.model_key() == original.model_key()  # calibration changes no embedding
    assert manifest.graph_sha256 == original.graph_sha256
    cosine = manifest.calibration["cosine"]
    assert cosine.threshold == pytest.approx(evaluation["scores"]["cosine"]["eer_threshold"], abs=1e-6)
    assert manifest.default_threshold == cosine.threshold  # the service's default
    assert "voxgate calibrate (eer)" in manifest.threshold_source
    assert (cosine.target, cosine.target_trials, cosine.nontarget_trials) == ("eer", 18, 48)
    assert cosine.trials_file == str(trials_file)
    assert len(cosine.trials_sha256) == 64
    assert cosine.created.endswith("+00:00")
    assert cosine.llr_scale > 0
    assert manifest.cohort is not None
    assert (manifest.cohort.speakers, manifest.cohort.recordings, manifest.cohort.top_n) == (4, 31, 3)
    asnorm = manifest.calibration["asnorm"]
    assert asnorm.cohort_sha256 == manifest.cohort.sha256
    # Two runs batch the files differently (timing): embeddings agree within float noise (1e-4 is the batch
    # invariance tolerance), which AS-Norm's scale (scores near 3) turns into about 1e-6 on a threshold.
    assert asnorm.threshold == pytest.approx(evaluation["scores"]["asnorm"]["eer_threshold"], abs=1e-5)


def test_eval_reports_both_score_types_and_draws_the_det_plot(evaluation: dict[str, Any]) -> None:
    assert evaluation["trials"] == {"total": 66, "scored": 66, "target": 18, "nontarget": 48, "skipped": 0}
    assert evaluation["files"]["refused"] == {}
    assert set(evaluation["scores"]) == {"cosine", "asnorm"}
    assert evaluation["cohort"] == {"speakers": 4, "top_n": 3}
    for figures in evaluation["scores"].values():
        assert set(figures["min_dcf"]) == {"0.01", "0.05"}
        assert set(figures["frr_at_far"]) == {"0.01", "0.001"}
        assert figures["threshold"]["source"].startswith("voxgate calibrate (eer")
    plot = Path(evaluation["plot"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(evaluation["rows"]) == 66


def test_eval_counts_refused_files(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    speech = SPEECH["vctk_p225"]
    (root / "a.flac").write_bytes(speech[0].read_bytes())
    (root / "b.flac").write_bytes(speech[1].read_bytes())
    (root / "c.flac").write_bytes(SPEECH["vctk_p226"][0].read_bytes())
    (root / "noise.wav").write_bytes(encode(non_speech_signals()["white_noise"]))
    (root / "text.wav").write_text("not audio")
    (root / "short.wav").write_bytes(encode(sf.read(speech[2], dtype="float32")[0][16000:24000]))
    trials = root / "trials.txt"
    trials.write_text(
        "1 a.flac b.flac\n0 a.flac c.flac\n1 a.flac noise.wav\n0 c.flac text.wav\n1 b.flac short.wav\n"
        "0 b.flac missing.wav\n"
    )
    result = ok_json("eval", "--trials", str(trials), "--model", str(model))
    assert result["files"]["refused"] == {
        "no_speech": 1,
        "not_enough_speech": 1,
        "unreadable": 1,
        "unsupported_media_type": 1,
    }
    assert result["trials"]["skipped"] == 4
    assert result["trials"]["scored"] == 2


def test_a_file_over_the_upload_limit_is_refused_unread(model: Path, tmp_path: Path) -> None:
    # As the service would refuse it: not read whole (files are read 32 at a time).
    root = tmp_path / "root"
    root.mkdir()
    speech = (SPEECH["vctk_p225"][0], SPEECH["vctk_p225"][1], SPEECH["vctk_p226"][0])
    for name, path in zip(("a.flac", "b.flac", "c.flac"), speech, strict=True):
        (root / name).write_bytes(path.read_bytes())
    (root / "big.wav").write_bytes(encode(np.zeros(16000 * 30, dtype=np.float32)))  # 960 KB
    (root / "trials.txt").write_text("1 a.flac b.flac\n0 a.flac c.flac\n0 a.flac big.wav\n")
    done = voxgate(
        "eval",
        "--trials",
        str(root / "trials.txt"),
        "--model",
        str(model),
        "--json",
        settings={"VOXGATE_MAX_UPLOAD_BYTES": "500000"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["files"]["refused"] == {"audio_too_large": 1}


@pytest.mark.parametrize(
    "args",
    [
        ("calibrate", "--target-far", "nan"),
        ("calibrate", "--target-far", "-1"),
        ("calibrate", "--target-far", "1"),
        ("calibrate", "--target-far", "inf"),
        ("calibrate", "--eer", "--min-speech", "-1"),
        ("eval", "--min-speech", "nan"),
        ("eval", "--scores", "/no/such/folder/s.tsv"),
        ("eval", "--plot", "/proc/x.png"),
        ("cohort", "build", "--top-n", "0"),
        ("cohort", "build", "--min-files", "-5"),
    ],
)
def test_meaningless_options_are_refused_before_any_work(args: tuple[str, ...], tmp_path: Path) -> None:
    # A target FAR of nan or 2 once wrote a threshold that accepts everyone (exit 0).
    where = ["--root", str(tmp_path), "--model", str(tmp_path)]
    trials = [] if args[0] == "cohort" else ["--trials", str(tmp_path / "t.txt")]
    done = voxgate(*args, *where, *trials)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("voxgate")


def test_calibrate_refuses_a_manifest_it_cannot_write_before_embedding(model: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    shutil.copytree(model, locked)
    (locked / "manifest.json").chmod(0o444)
    locked.chmod(0o555)
    try:
        done = voxgate("calibrate", "--trials", str(tmp_path / "none.txt"), "--model", str(locked), "--eer")
    finally:
        locked.chmod(0o755)
    if os.geteuid() == 0:
        pytest.skip("root can write anything")
    assert done.returncode == 2
    assert done.stderr.strip() == f"voxgate: cannot write {locked / 'manifest.json'} (permissions)"


# --- the same numbers through HTTP -----------------------------------------------------------------------
def test_eval_gives_the_scores_of_http_verify(
    live: LiveService, model: Path, trials_file: Path, evaluation: dict[str, Any]
) -> None:
    manifest = load_manifest(model)
    cosine = manifest.calibration["cosine"]
    by_pair = {(r["a"], r["b"]): r for r in evaluation["rows"]}
    http_scores, labels = [], []
    with httpx.Client(base_url=live.url, timeout=60) as client:
        for trial in read_trials(trials_file):
            files = [part(SPEECH_DIR / trial.b), part(SPEECH_DIR / trial.a, "reference")]
            r = client.post("/verify", files=files)
            assert r.status_code == 200, r.text
            answer = r.json()
            row = by_pair[(trial.a, trial.b)]
            assert answer["score"] == pytest.approx(float(row["cosine"]), abs=1e-4)
            assert answer["score_type"] == "cosine"
            assert answer["threshold"] == pytest.approx(cosine.threshold)  # calibrated, used by default
            assert answer["llr"] == pytest.approx(
                cosine.llr_scale * answer["score"] + cosine.llr_offset, abs=1e-9
            )
            assert answer["match"] == (answer["score"] >= answer["threshold"])
            assert answer["model"] == manifest.model_key()
            http_scores.append(answer["score"])
            labels.append(trial.target)
    s, lab = np.array(http_scores), np.array(labels)
    value, threshold = eer(s[lab], s[~lab])
    assert value == pytest.approx(evaluation["scores"]["cosine"]["eer"], abs=1e-9)
    assert threshold == pytest.approx(evaluation["scores"]["cosine"]["eer_threshold"], abs=1e-4)


# --- speech refusals -------------------------------------------------------------------------------------
def test_non_speech_is_refused_on_every_endpoint_and_nothing_is_stored(live: LiveService) -> None:
    speech = SPEECH["librispeech_1998"]
    with httpx.Client(base_url=live.url, timeout=60) as client:
        r = client.post("/enroll", data={"speaker_id": "known"}, files=[part(speech[0]), part(speech[1])])
        assert r.status_code == 200, r.text
        before = redis_snapshot(live.env["REDIS_URL"], namespace(live))
        for name, signal in non_speech_signals().items():
            noise = ("audio", (f"{name}.wav", encode(signal), "audio/wav"))
            as_reference = ("reference", (f"{name}.wav", encode(signal), "audio/wav"))
            requests = {
                "enroll new": ("/enroll", {"speaker_id": "nobody"}, [noise]),
                "enroll existing": ("/enroll", {"speaker_id": "known"}, [part(speech[2]), noise]),
                "verify speaker": ("/verify", {"speaker_id": "known"}, [noise]),
                "verify probe": ("/verify", {}, [noise, part(speech[3], "reference")]),
                "verify reference": ("/verify", {}, [part(speech[3]), as_reference]),
                "identify": ("/identify", {}, [noise]),
            }
            for what, (path, data, files) in requests.items():
                r = client.post(path, data=data, files=files)
                assert r.status_code == 422, f"{name}, {what}: {r.status_code} {r.text}"
                body = r.json()
                assert body["code"] == "no_speech", f"{name}, {what}: {body}"
                assert body["file"] == f"{name}.wav"
        assert redis_snapshot(live.env["REDIS_URL"], namespace(live)) == before


def test_mostly_noise_counts_only_its_speech(live: LiveService) -> None:
    rng = np.random.default_rng(7)
    wave, _ = sf.read(SPEECH["vctk_p226"][0], dtype="float32")
    speech = wave[SAMPLE_RATE : SAMPLE_RATE + int(2.5 * SAMPLE_RATE)]
    noise = [(0.02 * rng.standard_normal(4 * SAMPLE_RATE)).astype(np.float32) for _ in range(2)]
    mixed = np.concatenate([noise[0], speech, noise[1]])
    with httpx.Client(base_url=live.url, timeout=60) as client:
        r = client.post(
            "/enroll", data={"speaker_id": "noisy"}, files=[("audio", ("m.wav", encode(mixed), "audio/wav"))]
        )
    assert r.status_code == 200, r.text
    assert 1.5 < r.json()["speech_seconds"] < 3.0  # the 2.5 s of speech, not 10.5 s of energy


def test_an_unlike_enrollment_recording_is_refused(live: LiveService) -> None:
    alice = SPEECH["librispeech_1688"]
    other = SPEECH["vctk_p226"][1]
    with httpx.Client(base_url=live.url, timeout=60) as client:
        r = client.post("/enroll", data={"speaker_id": "alice"}, files=[part(alice[4]), part(alice[5])])
        assert r.status_code == 200, r.text
        before = redis_snapshot(live.env["REDIS_URL"], namespace(live))
        r = client.post("/enroll", data={"speaker_id": "alice"}, files=[part(alice[6]), part(other)])
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["code"] == "unlike_voiceprint"
        assert body["file"] == other.with_suffix(".wav").name
        assert body["cosine"] < body["unlike_voiceprint_threshold"]
        # A new speaker whose recordings disagree with each other: the same, before anything exists.
        r = client.post("/enroll", data={"speaker_id": "mixed"}, files=[part(alice[6]), part(other)])
        assert r.status_code == 409, r.text
        assert redis_snapshot(live.env["REDIS_URL"], namespace(live)) == before
        r = client.post("/enroll", data={"speaker_id": "alice"}, files=[part(alice[6])])
        assert r.status_code == 200, r.text
        assert r.json()["warnings"] == []


# --- AS-Norm ----------------------------------------------------------------------------------------------
@pytest.fixture
def asnorm_client(model: Path, redis_server: RedisProcess) -> Iterator[TestClient]:
    settings = settings_for(redis_server.url, model, score_normalization="asnorm")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_the_service_scores_asnorm_as_eval_does(
    asnorm_client: TestClient, model: Path, evaluation: dict[str, Any]
) -> None:
    threshold = load_manifest(model).calibration["asnorm"].threshold
    for row in evaluation["rows"][:6]:
        files = [part(SPEECH_DIR / row["b"]), part(SPEECH_DIR / row["a"], "reference")]
        r = asnorm_client.post("/verify", files=files)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["score_type"] == "asnorm"
        assert answer["score"] == pytest.approx(float(row["asnorm"]), abs=1e-3)
        assert answer["threshold"] == pytest.approx(threshold)
        assert answer["llr"] is None
    first, second = SPEECH["librispeech_2033"], SPEECH["vctk_p225"]
    for speaker, files in (("s2033", first), ("p225", second)):
        r = asnorm_client.post("/enroll", data={"speaker_id": speaker}, files=[part(f) for f in files[4:7]])
        assert r.status_code == 200, r.text
    r = asnorm_client.post("/identify", files=[part(first[7])])
    answer = r.json()
    assert answer["score_type"] == "asnorm"
    assert answer["speaker_id"] == "s2033"
    assert [c["speaker_id"] for c in answer["candidates"]] == ["s2033", "p225"]
    assert answer["candidates"][0]["score"] > answer["candidates"][1]["score"]


def test_asnorm_needs_a_cohort_and_its_threshold(model: Path, redis_server: RedisProcess) -> None:
    plain = load_manifest(DEFAULT_MODEL_DIR)
    settings = Settings(redis_url=redis_server.url, model_dir=DEFAULT_MODEL_DIR, score_normalization="asnorm")
    with pytest.raises(ValueError, match="no cohort"):
        Policy.from_settings(settings, plain, DEFAULT_MODEL_DIR)
    calibrated = load_manifest(model)
    without_threshold = calibrated.model_copy(update={"calibration": {}})
    with pytest.raises(ValueError, match="AS-Norm threshold"):
        Policy.from_settings(settings.model_copy(update={"model_dir": model}), without_threshold, model)
    explicit = settings.model_copy(update={"model_dir": model, "threshold": 1.5})
    assert Policy.from_settings(explicit, without_threshold, model).threshold == 1.5
    with pytest.raises(ValueError, match="calibration"):
        Policy.from_settings(
            Settings(redis_url=redis_server.url, calibrated_scores=True), plain, DEFAULT_MODEL_DIR
        )


def test_dropping_non_speech_changes_the_model_key_and_nothing_else_does(model: Path) -> None:
    plain = load_manifest(DEFAULT_MODEL_DIR)
    calibrated = load_manifest(model)  # calibration and cohort: same embeddings, same key
    assert calibrated.model_key() == plain.model_key()
    trimmed = plain.model_copy(update={"drop_non_speech": True})  # other embeddings: own namespace
    assert trimmed.model_key() == plain.model_key() + "+speech"
