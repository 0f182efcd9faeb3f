"""The test data that lives in the repository (tests/data, examples/audio) and tests/support/'s access to
it: the FLAC copies hold exactly the samples of the original WAVs, the NeMo waveforms derived from them are
the ones NeMo read, and a missing or damaged data file stops pytest with one message before collection."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.support.data import (
    DATA_CHECKSUMS,
    EXAMPLES_AUDIO,
    MODELS,
    NEMO_FIXTURES,
    REPO_ROOT,
    SPEECH_DIR,
    TEST_DATA,
    UTTERANCES,
    audio,
    check_test_data,
    checksum_entries,
    nemo_manifest,
    speech_files,
    speech_paths,
    wav_bytes,
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_every_data_file_is_listed_with_its_checksum() -> None:
    listed = {name for _, name in checksum_entries()}
    on_disk = {
        p.relative_to(REPO_ROOT).as_posix()
        for root in (TEST_DATA, EXAMPLES_AUDIO)
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("README.md", DATA_CHECKSUMS.name)
    }
    assert listed == on_disk
    assert check_test_data() == []


def test_speech_set_is_complete_and_lossless() -> None:
    by_speaker = speech_files()
    assert len(by_speaker) == 7
    assert sum(len(files) for files in by_speaker.values()) == len(speech_paths()) == 55
    with (SPEECH_DIR / "files.tsv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert sorted(SPEECH_DIR / row["path"] for row in rows) == speech_paths()
    for row in rows:
        path = SPEECH_DIR / row["path"]
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
        assert abs(info.frames / 16000 - float(row["duration_s"])) <= 0.0005  # files.tsv: 3 decimals
        # Encoded back as 16-bit WAV, the samples give the original WAV byte for byte.
        assert _sha256(wav_bytes(path)) == row["wav_sha256"], path


def test_trials_name_existing_recordings() -> None:
    trials = [line.split() for line in (SPEECH_DIR / "trials.txt").read_text().splitlines() if line]
    assert len(trials) == 378
    assert {label for label, _, _ in trials} == {"0", "1"}
    named = {name for _, a, b in trials for name in (a, b)}
    assert {SPEECH_DIR / name for name in named} <= set(speech_paths())
    for label, a, b in trials:
        assert (a.split("/")[0] == b.split("/")[0]) == (label == "1")


def test_nemo_fixture_models_and_audio_are_nemos() -> None:
    manifest = nemo_manifest()
    assert tuple(sorted(manifest["models"])) == MODELS
    by_id = {entry["id"]: entry for entry in manifest["audio"]}
    assert tuple(sorted(by_id)) == UTTERANCES
    for utt in UTTERANCES:
        wave = audio(utt)
        assert wave.dtype == np.float32
        assert wave.size == by_id[utt]["num_samples"]
        flac = NEMO_FIXTURES / "audio" / f"{utt}.flac"
        assert _sha256(wav_bytes(flac)) == by_id[utt]["wav_sha256"]  # the WAV NeMo read, exactly
        int16, _ = sf.read(flac, dtype="int16")
        np.testing.assert_array_equal(wave.astype(np.float64) * 32768, int16)
    files = {entry["file"]: entry for entry in manifest["files"]}
    for model in MODELS:
        nemo = f"{model}/{model}.nemo"
        assert _sha256((NEMO_FIXTURES / nemo).read_bytes()) == manifest["models"][model]["nemo"]["sha256"]
        for npy in (NEMO_FIXTURES / model).glob("*.npy"):
            assert npy.stat().st_size == files[npy.relative_to(NEMO_FIXTURES).as_posix()]["bytes"]


def test_examples_are_copies_of_the_speech_set() -> None:
    examples = sorted(EXAMPLES_AUDIO.glob("*.flac"))
    assert len(examples) == 6
    originals = {p.name: p for p in speech_paths()}
    for example in examples:
        assert example.read_bytes() == originals[example.name].read_bytes()


# --- a repository without its data ------------------------------------------------------------------------
def _checkout_without_data(tmp_path: Path, drop: str | None) -> Path:
    """The test tree and pyproject.toml in a new folder; tests/data linked file by file, except ``drop``
    (all of it when None)."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(
        REPO_ROOT / "tests", root / "tests", ignore=shutil.ignore_patterns("data", "__pycache__", "*.pyc")
    )
    if drop is not None:
        for data_root in (TEST_DATA, EXAMPLES_AUDIO):
            for path in data_root.rglob("*"):
                rel = path.relative_to(REPO_ROOT)
                if path.is_file() and rel.as_posix() != drop:
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / rel).symlink_to(path)
    return root


def _pytest(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    "drop",
    [None, "tests/data/nemo/titanet-large-reduced/utt1.emb.npy", "examples/audio/p225_003.flac"],
    ids=["no-data-at-all", "one-nemo-reference", "one-example"],
)
def test_missing_data_stops_pytest_with_one_message(tmp_path: Path, drop: str | None) -> None:
    root = _checkout_without_data(tmp_path, drop)
    result = _pytest(root)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "error collecting" not in output.lower()
    assert "Traceback" not in output
    messages = [line for line in output.splitlines() if "VoxGate test data incomplete" in line]
    assert len(messages) == 1, output
    missing = root / (drop or "tests/data")
    assert f"{missing} is missing" in messages[0]
    assert "re-clone" in messages[0]


def test_damaged_data_file_is_named(tmp_path: Path) -> None:
    damaged = "tests/data/speech/trials.txt"
    root = _checkout_without_data(tmp_path, damaged)
    (root / damaged).write_text((SPEECH_DIR / "trials.txt").read_text().replace("\n", "\r\n"))
    problems = check_test_data(root)
    assert problems == [f"{root / damaged} is damaged (sha256 differs from SHA256SUMS)"]
