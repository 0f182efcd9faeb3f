"""Everything the test modules share (issue 10: test modules import this module, never each other or
conftest; conftest.py holds only fixtures and hooks).

- where the data lives (``tests/data``, part of the repository) and the check that it is all there;
- the real speech (``tests/data/speech``: FLAC, with WAV bytes made in memory for tests that need them);
- the NeMo conformance fixtures (``tests/data/nemo``): checkpoints, NeMo's reference outputs, audio;
- small real ONNX graphs with the VoxGate interface, and a deterministic FakeBackend for batching tests;
- settings with private Redis namespaces, Redis snapshots, a redis-server process a test can restart;
- the Dockerfile / Compose / Kustomize helpers used by test_deploy.py and test_readme.py.

Nothing here reads data at import time: a missing data file must reach ``check_test_data()`` (run by
conftest before collection) and give one message, not an import error in every module.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import redis
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper

from app.manifest import GRAPH_FILE, ModelManifest, sha256_file, write_manifest
from app.settings import Settings

# --- where things are ---------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = REPO_ROOT / "tests" / "data"
SPEECH_DIR = TEST_DATA / "speech"
NEMO_FIXTURES = TEST_DATA / "nemo"
EXAMPLES_AUDIO = REPO_ROOT / "examples" / "audio"
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "default"
DEPLOY = REPO_ROOT / "deploy"
# Every data file the tests read (tests/data and examples/audio), with its sha256, relative to REPO_ROOT.
DATA_CHECKSUMS = TEST_DATA / "SHA256SUMS"
SPEECH_SUFFIX = ".flac"
SAMPLE_RATE = 16000


# --- is the data there? ---------------------------------------------------------------------------------
def checksum_entries(listing: Path = DATA_CHECKSUMS) -> list[tuple[str, str]]:
    """(sha256, path relative to the repository root) for every line of a ``sha256sum`` listing."""
    entries = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, _, name = line.partition("  ")
            entries.append((digest, name))
    return entries


def check_test_data(root: Path = REPO_ROOT) -> list[str]:
    """What is missing or damaged among the data files the tests read (empty: all there and intact)."""
    listing = root / DATA_CHECKSUMS.relative_to(REPO_ROOT)
    if not listing.is_file():
        data = root / TEST_DATA.relative_to(REPO_ROOT)
        return [f"{data if not data.is_dir() else listing} is missing"]
    problems = []
    for digest, name in checksum_entries(listing):
        path = root / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{path} is damaged (sha256 differs from {listing.name})")
    return problems


def missing_data_message(problems: list[str], root: Path = REPO_ROOT) -> str:
    shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
    return (
        f"VoxGate test data incomplete ({len(problems)} problem(s)): "
        + "; ".join(shown)
        + f". The test data is part of the repository (tests/data, examples/audio): re-clone it, or restore"
        f" the files with `git -C {root} checkout -- tests/data examples/audio`."
    )


# --- real speech ----------------------------------------------------------------------------------------
def speech_paths() -> list[Path]:
    """Every recording of the speech set, sorted (``SPEAKER/UTTERANCE.flac``)."""
    return sorted(SPEECH_DIR.glob(f"*/*{SPEECH_SUFFIX}"))


def speech_files() -> dict[str, list[Path]]:
    """The recordings of each speaker, by speaker label (the folder name)."""
    return {d.name: sorted(d.glob(f"*{SPEECH_SUFFIX}")) for d in sorted(SPEECH_DIR.iterdir()) if d.is_dir()}


# --- the int8 export the tests share (conftest: ``titanet_small_int8``) ----------------------------------
# TitaNet-S (the full-size architecture, random weights) quantised on four speakers: the default split
# holds out vctk_p225 for the gate and calibrates on the other three. The rest it never hears: the
# self-check probe's readers (1688, 1998) and vctk_p226, one corpus each way.
INT8_EXPORT_SPEAKERS = ("librispeech_2033", "librispeech_3080", "librispeech_533", "vctk_p225")
INT8_GATE_SPEAKERS = ["vctk_p225"]
INT8_UNSEEN_SPEAKERS = ("librispeech_1688", "librispeech_1998", "vctk_p226")
# Recordings per speaker the export uses (keeps the suite quick: 12 calibrate, 4 gate).
INT8_RECORDINGS_PER_SPEAKER = 4


def speaker_folders(speakers: tuple[str, ...] | list[str], dst: Path, per_speaker: int | None = None) -> Path:
    """A copy of the given speakers' recordings (the first ``per_speaker`` of each) in speaker folders."""
    for speaker in speakers:
        (dst / speaker).mkdir(parents=True)
        for path in speech_files()[speaker][:per_speaker]:
            shutil.copyfile(path, dst / speaker / path.name)
    return dst


@functools.lru_cache(maxsize=128)
def wav_bytes(path: Path) -> bytes:
    """A 16-bit recording as a 16-bit PCM WAV file in memory (for tests that send or cut WAV bytes).

    For the speech set this is the original WAV byte for byte (its sha256 is in files.tsv, checked by
    tests/test_support.py).
    """
    samples, rate = sf.read(path, dtype="int16")
    return encode(samples, rate, "WAV", "PCM_16")


def wav_name(path: Path) -> str:
    return path.with_suffix(".wav").name


def wav_part(path: Path, field: str = "audio") -> tuple[str, tuple[str, bytes, str]]:
    """A multipart file part holding the recording as WAV, as the tests have always sent it."""
    return (field, (wav_name(path), wav_bytes(path), "audio/wav"))


def short_speech(seconds: float, path: Path | None = None) -> np.ndarray:
    """``seconds`` of the loudest stretch of a real recording, padded with 1 s of silence each side.

    Default recording: the first of speaker vctk_p225.
    """
    data, _ = sf.read(path or speech_files()["vctk_p225"][0], dtype="float32")
    n = int(seconds * 16000)
    energy = np.convolve(data**2, np.ones(n), mode="valid")
    start = int(np.argmax(energy))
    pad = np.zeros(16000, dtype=np.float32)
    return np.concatenate([pad, data[start : start + n], pad])


def encode(
    samples: np.ndarray, sample_rate: int = 16000, fmt: str = "WAV", subtype: str | None = None
) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


# --- NeMo conformance fixtures --------------------------------------------------------------------------
# The models of tests/data/nemo/manifest.json (sorted); tests/test_support.py checks the list against it.
MODELS = ("SpeakerNet_verification_3x2x256-reduced", "ecapa_tdnn-reduced", "titanet-large-reduced")
UTTERANCES = ("utt1", "utt2", "utt3", "utt4")


@functools.lru_cache(maxsize=1)
def _nemo_manifest_text() -> str:
    return (NEMO_FIXTURES / "manifest.json").read_text(encoding="utf-8")


def nemo_manifest() -> dict[str, Any]:
    """The fixtures' manifest.json (a fresh copy each call: callers may change it)."""
    result: dict[str, Any] = json.loads(_nemo_manifest_text())
    return result


def nemo_path(model: str) -> Path:
    return NEMO_FIXTURES / model / f"{model}.nemo"


def audio(utt: str) -> npt.NDArray[np.float32]:
    """The float32 waveform of a fixture utterance as NeMo reads it: int16 / 32768 (exact in float32).

    The fixture set's ``audio/<utt>.f32.npy`` held exactly this; it is derived from the FLAC instead.
    """
    samples, rate = sf.read(NEMO_FIXTURES / "audio" / f"{utt}.flac", dtype="int16")
    assert rate == SAMPLE_RATE
    return samples.astype(np.float32) / np.float32(32768)


def reference(model: str, name: str) -> np.ndarray:
    """NeMo's own output ``name`` (e.g. ``utt1.emb``, ``batch4.emb``) for a fixture model."""
    return np.load(NEMO_FIXTURES / model / f"{name}.npy")


# --- small real ONNX graphs (API tests) --------------------------------------------------------------
TINY_DIM = 8


def build_tiny_model(model_dir: Path, name: str = "tiny-test") -> Path:
    """A small real ONNX graph with the VoxGate interface: audio [B, T], lengths [B] -> embedding [B, 8].

    The embedding is an affine map of a few loudness statistics — useless for speakers, but a real
    graph that ONNX Runtime loads and runs, so the service path is exercised without the big model.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, TINY_DIM)).astype(np.float32)
    bias = rng.standard_normal(TINY_DIM).astype(np.float32)
    nodes = [
        helper.make_node("Abs", ["audio"], ["abs"]),
        helper.make_node("ReduceMean", ["abs"], ["mean_abs"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["audio", "audio"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["mean_sq"], axes=[1], keepdims=1),
        helper.make_node("Cast", ["lengths"], ["len_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["len_f", "one_axis"], ["len_col"]),
        helper.make_node("Mul", ["len_col", "tiny_scale"], ["len_scaled"]),
        helper.make_node("Concat", ["mean_abs", "mean_sq", "len_scaled"], ["feats"], axis=1),
        helper.make_node("MatMul", ["feats", "weight"], ["proj"]),
        helper.make_node("Add", ["proj", "bias"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", TINY_DIM])],
        initializer=[
            helper.make_tensor("weight", TensorProto.FLOAT, [3, TINY_DIM], weight.flatten().tolist()),
            helper.make_tensor("bias", TensorProto.FLOAT, [TINY_DIM], bias.tolist()),
            helper.make_tensor("one_axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("tiny_scale", TensorProto.FLOAT, [], [1e-7]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    graph_path = model_dir / "model.onnx"
    onnx.save(model, graph_path)
    write_manifest(
        model_dir,
        ModelManifest(
            name=name,
            architecture="tiny-test",
            source="tests/support.py (random init)",
            graph_sha256=sha256_file(graph_path),
            embedding_dim=TINY_DIM,
            opset=17,
            default_threshold=0.5,
            threshold_source="arbitrary (test graph)",
            min_speech_seconds=0.5,
            exporter="onnx.helper",
        ),
    )
    return model_dir


def default_model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        raise FileNotFoundError(
            f"default model missing at {DEFAULT_MODEL_DIR} (it is part of the repository: re-clone)"
        )
    return DEFAULT_MODEL_DIR


def settings_for(redis_url: str, model_dir: Path, **overrides: Any) -> Settings:
    """Settings with a private Redis namespace, so tests never see each other's keys."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_namespace": f"test-{uuid.uuid4().hex[:10]}",
        "model_dir": model_dir,
        "warmup": False,
        "intra_op_threads": 1,
        "index_sync_interval_s": 0.05,
        # Without warm-up the engine has no measured throughput: tests of other things should not be
        # refused by admission's cautious first estimate (tests/test_admission.py sets its own).
        "max_queue_wait_s": 60.0,
    }
    values.update(overrides)
    return Settings(**values)


def redis_snapshot(redis_url: str, namespace: str) -> dict[bytes, bytes | None]:
    """Every stored-data key of the namespace with its serialised value: equal snapshots = nothing
    changed. The audit streams and rate-limit buckets are left out: a refused request is *meant* to
    leave an audit event and to spend a token."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = sorted(client.scan_iter(match=f"{namespace}:*"))
        return {
            key: client.dump(key) for key in keys if not key.endswith(b":audit") and b":ratelimit:" not in key
        }
    finally:
        client.close()


# --- small real ONNX graphs and a fake backend (engine tests) -----------------------------------------
# The graphs are built with the ``onnx`` helper API and run in real ONNX Runtime sessions. The
# FakeBackend exists only for unit tests of pure batching logic (what got batched with what, when).
TOY_DIM = 16
_KERNEL = 32
_CHANNELS = 8


def _const(name: str, value: npt.ArrayLike, dtype: type = np.float32) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
    )


def stats_graph(
    dim: int = TOY_DIM,
    *,
    input_names: tuple[str, str] = ("audio", "lengths"),
    output_name: str = "embedding",
    lengths_type: int = TensorProto.INT64,
    seed: int = 0,
) -> onnx.ModelProto:
    """Length-masked statistics of the audio projected to ``dim``: a padding-invariant toy speaker model.

    Features per utterance (valid samples only): mean, mean square, mean |x|, and the mean energy of
    8 random FIR filters (a Conv over the waveform, masked to windows that lie inside the utterance).
    """
    rng = np.random.default_rng(seed)
    audio, lengths = input_names
    conv_w = rng.standard_normal((_CHANNELS, 1, _KERNEL)).astype(np.float32) / np.sqrt(_KERNEL)
    proj = rng.standard_normal((3 + _CHANNELS, dim)).astype(np.float32)
    nodes = [
        _const("zero", 0, np.int64),
        _const("one", 1, np.int64),
        _const("ax0", [0], np.int64),
        _const("ax1", [1], np.int64),
        _const("ax2", [2], np.int64),
        _const("kstart", [_KERNEL - 1], np.int64),
        _const("big", [2**62], np.int64),
        _const("kminus1", float(_KERNEL - 1)),
        _const("eps", 1e-6),
        _const("conv_w", conv_w),
        _const("proj", proj),
        helper.make_node("Cast", [lengths], ["len64"], to=TensorProto.INT64),
        helper.make_node("Shape", [audio], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["n"], axis=0),
        helper.make_node("Range", ["zero", "n", "one"], ["t"]),
        helper.make_node("Unsqueeze", ["t", "ax0"], ["t_row"]),
        helper.make_node("Unsqueeze", ["len64", "ax1"], ["len_col"]),
        helper.make_node("Less", ["t_row", "len_col"], ["mask_b"]),
        helper.make_node("Cast", ["mask_b"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["len_col"], ["lenf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [audio, "mask"], ["x"]),
        helper.make_node("ReduceSum", ["x", "ax1"], ["s1"], keepdims=1),
        helper.make_node("Mul", ["x", "x"], ["x2"]),
        helper.make_node("ReduceSum", ["x2", "ax1"], ["s2"], keepdims=1),
        helper.make_node("Abs", ["x"], ["xa"]),
        helper.make_node("ReduceSum", ["xa", "ax1"], ["sa"], keepdims=1),
        helper.make_node("Div", ["s1", "lenf"], ["f_mean"]),
        helper.make_node("Div", ["s2", "lenf"], ["f_sq"]),
        helper.make_node("Div", ["sa", "lenf"], ["f_abs"]),
        # Filter-bank energies over windows fully inside the utterance.
        helper.make_node("Unsqueeze", ["x", "ax1"], ["x3"]),
        helper.make_node("Conv", ["x3", "conv_w"], ["y"]),
        helper.make_node("Mul", ["y", "y"], ["y2"]),
        helper.make_node("Slice", ["mask", "kstart", "big", "ax1"], ["mask_c"]),
        helper.make_node("Unsqueeze", ["mask_c", "ax1"], ["mask_c3"]),
        helper.make_node("Mul", ["y2", "mask_c3"], ["y2m"]),
        helper.make_node("ReduceSum", ["y2m", "ax2"], ["e_sum"], keepdims=0),
        helper.make_node("Sub", ["lenf", "kminus1"], ["n_windows"]),
        helper.make_node("Div", ["e_sum", "n_windows"], ["f_energy"]),
        helper.make_node("Add", ["f_energy", "eps"], ["f_energy_eps"]),
        helper.make_node("Log", ["f_energy_eps"], ["f_log"]),
        helper.make_node("Concat", ["f_mean", "f_sq", "f_abs", "f_log"], ["feats"], axis=1),
        helper.make_node("MatMul", ["feats", "proj"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "voxgate-toy-stats",
        [
            helper.make_tensor_value_info(audio, TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info(lengths, lengths_type, ["batch"]),
        ],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", dim])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model_dir(
    out: Path,
    model: onnx.ModelProto | None = None,
    *,
    dim: int = TOY_DIM,
    segment_seconds: float | None = 3.0,
    overlap_seconds: float = 0.5,
) -> ModelManifest:
    """Write ``model.onnx`` + ``manifest.json`` (manifest dim ``dim``, possibly a lie on purpose)."""
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model if model is not None else stats_graph(dim), str(out / GRAPH_FILE))
    manifest = ModelManifest(
        name="toy-stats",
        architecture="toy",
        source="tests/support.py",
        graph_sha256=sha256_file(out / GRAPH_FILE),
        embedding_dim=dim,
        opset=17,
        default_threshold=0.5,
        threshold_source="made up for tests",
        min_speech_seconds=0.5,
        segment_seconds=segment_seconds,
        segment_overlap_seconds=overlap_seconds,
        exporter="tests",
    )
    write_manifest(out, manifest)
    return manifest


def toy_waveform(seconds: float, seed: int) -> npt.NDArray[np.float32]:
    """A 'voice': a few harmonics with a syllable-like envelope plus noise, different per seed."""
    rng = np.random.default_rng(seed)
    n = max(1, int(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(90, 250)
    voice = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 5))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t)) ** 2
    wave = 0.2 * voice * envelope + 0.005 * rng.standard_normal(n)
    return np.asarray(wave, dtype=np.float32)


class FakeBackend:
    """Deterministic stand-in for batching-logic unit tests.

    The embedding of a row depends only on that row's valid samples: [mean, length in s, first sample].
    Every batch is recorded; ``gate`` (when set up) holds the first batch until released, so tests can
    pile work up behind a busy worker; ``fail_when`` makes a batch raise.
    """

    dim = 3
    provider = "FakeExecutionProvider"
    measured_samples_per_s = None  # a fake's speed says nothing: the engine keeps its cautious guess

    def __init__(self, *, hold_first: bool = False, bucket_step: int = 1) -> None:
        self.batches: list[list[int]] = []  # true lengths of each batch
        self.padded: list[int] = []
        self.warmups = 0
        self.bucket_step = bucket_step
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not hold_first:
            self.gate.set()
        self.fail_when: Callable[[npt.NDArray[np.int64]], BaseException | None] | None = None
        self._lock = threading.Lock()

    def bucket(self, n_samples: int) -> int:
        step = self.bucket_step
        return max(step, -(-n_samples // step) * step)

    def embed(
        self, audio: npt.NDArray[np.float32], lengths: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        self.entered.set()
        self.gate.wait(timeout=30)
        with self._lock:
            self.batches.append([int(n) for n in lengths])
            self.padded.append(int(audio.shape[1]))
        if self.fail_when is not None:
            error = self.fail_when(lengths)
            if error is not None:
                raise error
        out = np.empty((audio.shape[0], self.dim), dtype=np.float32)
        for i, n in enumerate(lengths):
            row = audio[i, : int(n)]
            out[i] = (float(row.mean()), int(n) / SAMPLE_RATE, float(row[0]))
        return out

    def warmup(self, *, max_batch_size: int, max_samples: int, max_batch_samples: int) -> int:
        self.warmups += 1
        return 0


def fake_manifest(segment_seconds: float | None = None, overlap_seconds: float = 0.0) -> ModelManifest:
    return ModelManifest(
        name="fake",
        architecture="fake",
        source="tests",
        graph_sha256="0" * 64,
        embedding_dim=FakeBackend.dim,
        opset=17,
        default_threshold=0.5,
        threshold_source="tests",
        min_speech_seconds=0.5,
        segment_seconds=segment_seconds,
        segment_overlap_seconds=overlap_seconds,
        exporter="tests",
    )


# --- redis-server processes -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """The session's private redis-server (started by the ``redis_server`` fixture in conftest.py)."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc
        self.url = f"redis://127.0.0.1:{port}/0"


class OwnRedis:
    """A redis-server this test can stop and restart on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(200):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


# --- shipping artefacts: Dockerfile, Compose, Kustomize --------------------------------------------------
def tool(name: str) -> str:
    """A command-line tool of the venv (dev extra) or PATH; the test is skipped without it."""
    venv_bin = Path(sys.executable).parent / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed (`make test` installs it with the dev extra)")
    return found


def clean_env() -> dict[str, str]:
    # Compose interpolates ${VAR} from the environment: test the files' own defaults, not this shell's.
    keep = ("PATH", "HOME", "TMPDIR", "LANG")
    return {k: v for k, v in os.environ.items() if k in keep}


def compose(
    files: tuple[str, ...], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [tool("docker-compose")]
    for f in files:
        cmd += ["-f", f]
    return subprocess.run(
        [*cmd, *args],
        cwd=REPO_ROOT,
        env={**clean_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def compose_config(
    files: tuple[str, ...], profile: str | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    args = ["--profile", profile] if profile else []
    result = compose(files, *args, "config", "--format", "json", env=env)
    assert result.returncode == 0, f"docker-compose config failed for {files}:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuations joined and comments dropped, grouped by stage."""
    logical: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, got {line!r}"
            key, _, value = rest.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(global_args, stages)


# The Kustomize overlays (a listing of the repository's own deploy/ tree, not test data).
OVERLAYS = sorted(p.parent for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))


# --- a real `voxgate serve` process ------------------------------------------------------------------------
class LiveService:
    """``voxgate serve`` in a subprocess on a free loopback port, with settings given as environment
    variables (``settings={"max_queue_wait_s": "0.5"}`` -> ``VOXGATE_MAX_QUEUE_WAIT_S=0.5``). Started by
    ``with``; waits for ``/readyz``; stopped (SIGTERM, then SIGKILL) on exit. ``log`` is its output."""

    def __init__(
        self,
        model_dir: Path,
        redis_url: str,
        workdir: Path,
        settings: dict[str, str] | None = None,
        ready_timeout_s: float = 240.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "serve.log"
        self.ready_timeout_s = ready_timeout_s
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "VOXGATE_MODEL_DIR": str(model_dir),
            "VOXGATE_PORT": str(self.port),
            "VOXGATE_REDIS_NAMESPACE": f"live-{uuid.uuid4().hex[:8]}",
            "VOXGATE_PROVIDERS": "cpu",
            "VOXGATE_DATA_DIR": str(workdir / "data"),
            "VOXGATE_LOG_LEVEL": "WARNING",
        }
        for name, value in (settings or {}).items():
            self.env[f"VOXGATE_{name.upper()}"] = value
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> LiveService:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"voxgate serve exited {self.proc.returncode}:\n{self.log[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"voxgate serve never became ready:\n{self.log[-3000:]}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait; the exit code (SIGKILL after ``timeout_s``)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def multipart_body(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type (files: field, filename, bytes)."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# --- non-speech signals (the VAD must find no speech in them) ---------------------------------------------
@functools.lru_cache(maxsize=4)
def non_speech_signals(seconds: float = 5.0) -> dict[str, npt.NDArray[np.float32]]:
    """Silence, noise, tones, hum and a synthetic piece of music (piano-like notes and a drum), at 16 kHz."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    pink = np.fft.irfft(spectrum, n)
    freqs = (220, 440, 880, 1760, 3520)
    tones = np.concatenate([np.sin(2 * np.pi * f * t[: n // len(freqs)]) for f in freqs])
    music = np.zeros(n)
    for i in range(int(seconds * 4)):
        start = int(i * SAMPLE_RATE / 4)
        d = t[: n - start]
        for semi in (0, 4, 7) if i % 4 == 0 else (12 + int(rng.integers(0, 12)),):
            f = 440 * 2 ** ((48 + semi - 69) / 12)
            note = sum(np.exp(-3 * k * d) * np.sin(2 * np.pi * f * k * d) / k for k in range(1, 7))
            music[start:] += note * np.exp(-2.5 * d)
        if i % 2 == 0:
            m = min(n - start, 800)
            music[start : start + m] += rng.standard_normal(m) * np.exp(-np.arange(m) / 200)
    signals = {
        "silence": np.zeros(n),
        "white_noise": 0.1 * rng.standard_normal(n),
        "loud_white_noise": 0.3 * rng.standard_normal(n),
        "pink_noise": 0.1 * pink / pink.std(),
        "steady_tones": 0.3 * np.pad(tones, (0, n - tones.size)),
        "hum": 0.2 * sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 8)),
        "music": 0.3 * music / np.abs(music).max(),
    }
    return {name: np.asarray(x, dtype=np.float32) for name, x in signals.items()}


def run_voxgate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The ``voxgate`` command line, run in the repository with ``env`` on top of this one's."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
