"""`voxgate embed`: one JSON line per file, decoded like the service decodes uploads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from app.engine.manifest import load_manifest
from tests.support.data import REPO_ROOT, speech_files, wav_bytes, wav_name
from tests.support.models import build_tiny_model, default_model_dir

SPEECH = speech_files()


def run_embed(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VOXGATE_WARMUP": "false", "VOXGATE_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "embed", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_embed_default_model(tmp_path: Path) -> None:
    same_a_flac, same_b = SPEECH["vctk_p225"][:2]
    other = SPEECH["librispeech_2033"][0]
    same_a = tmp_path / wav_name(same_a_flac)  # one input as 16-bit WAV, the others FLAC
    same_a.write_bytes(wav_bytes(same_a_flac))
    # The same recording as FLAC at 44.1 kHz stereo: decoding normalises it to (almost) the same input.
    data, _ = sf.read(same_a, dtype="float32")
    import soxr

    flac = tmp_path / "same_a.flac"
    up = soxr.resample(data, 16000, 44100)
    sf.write(flac, np.stack([up, up], axis=1), 44100, format="FLAC")
    result = run_embed(str(same_a), str(same_b), str(other), str(flac))  # no --model: models/default
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(same_a), str(same_b), str(other), str(flac)]
    dim = load_manifest(default_model_dir()).embedding_dim
    vectors = np.array([line["embedding"] for line in lines], dtype=np.float32)
    assert vectors.shape == (4, dim)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]
    assert unit[0] @ unit[3] > 0.99


def test_embed_reports_bad_files_and_goes_on(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny")
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 20)
    good = SPEECH["vctk_p226"][0]
    result = run_embed("--model", str(model), str(text), str(good), str(tmp_path / "missing.wav"))
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(good)]
    assert len(lines[0]["embedding"]) == 8
    errors = [json.loads(line) for line in result.stderr.splitlines() if line.startswith('{"file"')]
    assert [e["error"]["code"] for e in errors] == ["unsupported_media_type", "unreadable"]
