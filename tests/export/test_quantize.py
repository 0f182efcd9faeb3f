"""int8 export (``voxgate export --precision int8``): the accuracy gate on held-out speakers in every
recording condition, the same embeddings with and without VNNI, fusion, batch invariance, the manifest,
CLI errors.

Real NeMo graphs (TitaNet-S with random weights, the reduced fixtures), the repository's real speech,
real ONNX Runtime sessions. No test assumes the CPU has VNNI or lacks it: the only int8 arithmetic
compared across kernels runs the AVX2 kernels under QEMU (``qemu-x86_64 -cpu Haswell``), skipped where
QEMU is not installed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.audio.conditions import AS_RECORDED, CONDITION_NAMES, TELEPHONE, derive
from app.cli.main import main
from app.engine.backend import OnnxBackend
from app.engine.manifest import QuantizationInfo, load_manifest
from app.export.quantize import (
    U8S8,
    QuantizationError,
    Recording,
    calibration_inputs,
    fold_batchnorm_into_pointwise_convs,
    inline_initializer_identities,
    load_recordings,
    quantize_graph,
    split_calibration,
    this_host,
)
from bench.int8_check import cosines, embed_graphs, qemu_binary
from bench.int8_check import main as int8_check
from tests.support.data import (
    INT8_EXPORT_SPEAKERS,
    INT8_GATE_SPEAKERS,
    INT8_RECORDINGS_PER_SPEAKER,
    INT8_UNSEEN_SPEAKERS,
    SPEECH_DIR,
    nemo_path,
    speaker_folders,
)

TITANET = "titanet-large-reduced"
SR = 16000


def _optimized_op_counts(graph: Path, tmp_path: Path) -> collections.Counter[str]:
    """Operator counts of the graph as ONNX Runtime's CPU provider runs it (after fusions)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def _embed(bundle: Path, waves: list[np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = [
        session.run(None, {"audio": w[None], "lengths": np.array([w.size], dtype=np.int64)})[0][0]
        for w in waves
    ]
    return np.stack(rows).astype(np.float64)


def _per_speaker(
    recordings: list[Recording], speakers: tuple[str, ...] | list[str], n: int
) -> list[Recording]:
    return [r for s in speakers for r in [r for r in recordings if r.speaker == s][:n]]


@pytest.fixture(scope="module")
def recordings() -> list[Recording]:
    """Every recording of the repository's speech set, labelled with its speaker."""
    return load_recordings(SPEECH_DIR)


@pytest.fixture(scope="module")
def titanet_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reduced TitaNet fixture: small and random, so int8 costs it far more than a full-size graph."""
    out = tmp_path_factory.mktemp("fp32") / "bundle"
    assert main(["export", "--nemo", str(nemo_path(TITANET)), "--out", str(out)]) == 0
    return out


# --- what the export measured, and whether it holds -------------------------------------------------------
def test_int8_bundle_records_what_it_measured_and_holds_it(
    titanet_small_int8: Path, titanet_small_fp32: Path, recordings: list[Recording]
) -> None:
    manifest = load_manifest(titanet_small_int8)  # graph hash checked
    fp32 = load_manifest(titanet_small_fp32)
    info = manifest.quantization
    assert manifest.precision == "int8"
    assert info is not None
    assert manifest.model_key() != fp32.model_key()  # int8 enrollments live in their own namespace
    assert (manifest.name, manifest.embedding_dim, manifest.source) == (
        fp32.name,
        fp32.embedding_dim,
        fp32.source,
    )
    assert info.scheme == "u8s8-7bit"
    assert (info.heldout_split, info.heldout_speakers) == ("speaker", INT8_GATE_SPEAKERS)
    assert info.calibration_speakers == sorted(set(INT8_EXPORT_SPEAKERS) - set(INT8_GATE_SPEAKERS))
    held = _per_speaker(recordings, INT8_GATE_SPEAKERS, INT8_RECORDINGS_PER_SPEAKER)
    assert (info.heldout_recordings, info.calibration_recordings) == (
        len(held),
        3 * INT8_RECORDINGS_PER_SPEAKER,
    )
    assert info.min_cosine_gate == 0.995
    assert info.float32_nodes == []  # a full-size graph needs no float32 fallback
    assert list(info.min_cosine_by_condition) == list(CONDITION_NAMES)
    assert min(info.min_cosine_by_condition.values()) >= 0.995
    assert info.min_cosine_by_condition[AS_RECORDED] == info.min_cosine_to_fp32
    assert info.validated_on == this_host()
    assert info.validated_on is not None
    assert info.validated_on.onnxruntime == ort.__version__
    # Recompute on the held-out recordings with fresh sessions: the manifest's figures are the real ones.
    for condition in CONDITION_NAMES:
        waves = [derive(condition, r.wave) for r in held]
        values = cosines(_embed(titanet_small_int8, waves), _embed(titanet_small_fp32, waves))
        assert float(values.min()) == pytest.approx(info.min_cosine_by_condition[condition], abs=1e-6)
        if condition == AS_RECORDED:
            assert float(values.mean()) == pytest.approx(info.mean_cosine_to_fp32, abs=1e-6)
            assert float(values.min()) < 0.999999  # it really is a different (quantised) graph


def test_int8_graph_holds_on_speakers_and_conditions_the_export_never_saw(
    titanet_small_int8: Path, titanet_small_fp32: Path, recordings: list[Recording]
) -> None:
    """Gated on one held-out speaker, checked on three others (both corpora) in every condition, the
    telephone band included: cosine to float32 >= 0.99 for every recording."""
    unseen = _per_speaker(recordings, INT8_UNSEEN_SPEAKERS, INT8_RECORDINGS_PER_SPEAKER)
    assert len(unseen) == 12
    info = load_manifest(titanet_small_int8).quantization
    assert info is not None
    assert not {r.speaker for r in unseen} & {*info.calibration_speakers, *info.heldout_speakers}
    waves = [derive(condition, r.wave) for condition in CONDITION_NAMES for r in unseen]
    (reference, int8), _ = embed_graphs(
        [titanet_small_fp32 / "model.onnx", titanet_small_int8 / "model.onnx"], waves
    )
    values = cosines(int8, reference).reshape(len(CONDITION_NAMES), len(unseen))
    worst = dict(zip(CONDITION_NAMES, values.min(axis=1).tolist(), strict=True))
    assert min(worst.values()) >= 0.99, worst


def test_every_quantised_convolution_runs_as_an_int8_kernel(titanet_small_int8: Path, tmp_path: Path) -> None:
    """A QDQ group ORT cannot fuse runs as dequantise -> float Conv -> quantise: slower than float32."""
    info = load_manifest(titanet_small_int8).quantization
    assert info is not None
    counts = _optimized_op_counts(titanet_small_int8 / "model.onnx", tmp_path)
    assert counts["QLinearConv"] == info.quantized_nodes


def test_int8_embeddings_do_not_depend_on_the_batch(
    titanet_small_int8: Path, recordings: list[Recording]
) -> None:
    """Static activation scales: an utterance gets the same int8 embedding in any batch."""
    backend = OnnxBackend(titanet_small_int8, load_manifest(titanet_small_int8), providers=["cpu"])
    waves = [recordings[0].wave[:24000], recordings[5].wave[:56000], recordings[9].wave[:40000]]
    alone = [backend.embed(w[None], np.array([w.size], dtype=np.int64))[0] for w in waves]
    width = backend.bucket(max(w.size for w in waves))
    batch = np.zeros((len(waves), width), dtype=np.float32)
    for i, w in enumerate(waves):
        batch[i, : w.size] = w
    together = backend.embed(batch, np.array([w.size for w in waves], dtype=np.int64))
    for single, batched in zip(alone, together, strict=True):
        scale = float(np.abs(single).max())
        assert float(np.abs(single - batched).max()) <= 1e-4 * max(1.0, scale)


def _short(recordings: list[Recording], speakers: tuple[str, ...], n: int) -> list[Recording]:
    """The first ``n`` recordings of each speaker, cut to 3 s: quick sensitivity passes."""
    return [dataclasses.replace(r, wave=r.wave[: 3 * SR]) for r in _per_speaker(recordings, speakers, n)]


def test_sensitive_convolutions_stay_float_until_the_gate_is_met(
    titanet_fp32: Path, recordings: list[Recording], tmp_path: Path
) -> None:
    """The reduced TitaNet fixture in all-int8 misses a 0.99 gate in some condition; keeping its most
    sensitive convolutions in float32, one at a time, meets it in every condition."""
    calibration = [r.wave for r in _short(recordings, ("librispeech_1998", "librispeech_3080"), 3)]
    heldout = [r.wave for r in _short(recordings, ("vctk_p226",), 2)]
    all_int8 = quantize_graph(
        titanet_fp32 / "model.onnx", tmp_path / "all-int8.onnx", calibration, heldout, min_cosine=-1.0
    )
    assert (len(all_int8.quantized), all_int8.kept_float) == (25, [])
    assert all_int8.scores.worst < 0.99
    gated = quantize_graph(
        titanet_fp32 / "model.onnx", tmp_path / "gated.onnx", calibration, heldout, min_cosine=0.99
    )
    assert gated.kept_float
    assert len(gated.quantized) + len(gated.kept_float) == 25  # every encoder conv of TitaNet
    assert list(gated.scores.by_condition()) == list(CONDITION_NAMES)
    assert min(gated.scores.by_condition().values()) >= 0.99


def test_int8_needs_enough_calibration_audio(recordings: list[Recording]) -> None:
    with pytest.raises(QuantizationError, match="at least 4"):
        split_calibration(recordings[:3])
    with pytest.raises(QuantizationError, match="no usable held-out recordings"):
        split_calibration(recordings, [])


# --- which recordings calibrate, which measure ----------------------------------------------------------
def test_whole_speakers_are_held_out(recordings: list[Recording]) -> None:
    split = split_calibration(recordings)
    assert split.split == "speaker"
    # Seven speakers in name order; every fourth counting from the last: one of each corpus here.
    assert split.heldout_speakers == ["librispeech_2033", "vctk_p226"]
    assert not set(split.heldout_speakers) & set(split.calibration_speakers)
    assert len(split.calibration_speakers) == 5
    assert [r.name for r in split.heldout] == [
        r.name for r in recordings if r.speaker in split.heldout_speakers
    ]
    assert len(split.calibration) + len(split.heldout) == len(recordings) == 55


def test_without_speaker_folders_every_fourth_file_is_held_out_with_a_warning(
    recordings: list[Recording], caplog: pytest.LogCaptureFixture
) -> None:
    loose = [dataclasses.replace(r, speaker=None) for r in recordings[:10]]
    one_speaker = [r for r in recordings if r.speaker == "vctk_p225"]
    for given in (loose, one_speaker):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="app.export.quantize"):
            split = split_calibration(given)
        assert split.split == "file"
        assert [r.name for r in split.heldout] == [r.name for r in given[3::4]]
        assert len(split.calibration) == len(given) - len(split.heldout)
        assert "every fourth recording instead of whole speakers" in caplog.text


def test_heldout_audio_is_the_gate_and_every_calibration_speaker_calibrates(
    recordings: list[Recording], caplog: pytest.LogCaptureFixture
) -> None:
    libri = [r for r in recordings if r.speaker is not None and r.speaker.startswith("librispeech_")]
    vctk = [r for r in recordings if r.speaker is not None and r.speaker.startswith("vctk_")]
    with caplog.at_level(logging.WARNING, logger="app.export.quantize"):
        split = split_calibration(libri, vctk)
    assert split.split == "heldout-audio"
    assert (split.calibration, split.heldout) == (libri, vctk)
    assert split.heldout_speakers == ["vctk_p225", "vctk_p226"]
    assert not caplog.text
    with caplog.at_level(logging.WARNING, logger="app.export.quantize"):
        split_calibration(libri, [r for r in libri if r.speaker == "librispeech_533"])
    assert "librispeech_533 are in both" in caplog.text


def test_cli_gates_on_heldout_audio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calibration = speaker_folders(["librispeech_1998", "librispeech_3080"], tmp_path / "calib", per_speaker=2)
    heldout = speaker_folders(["vctk_p226"], tmp_path / "other-corpus", per_speaker=2)
    out = tmp_path / "int8"
    args = ["export", "--nemo", str(nemo_path(TITANET)), "--out", str(out), "--precision", "int8"]
    args += ["--calibration-audio", str(calibration), "--heldout-audio", str(heldout), "--min-cosine", "0.5"]
    assert main(args) == 0
    info = load_manifest(out).quantization
    assert info is not None
    assert (info.heldout_split, info.heldout_speakers, info.heldout_recordings) == (
        "heldout-audio",
        ["vctk_p226"],
        2,
    )
    assert (info.calibration_speakers, info.calibration_recordings) == (
        ["librispeech_1998", "librispeech_3080"],
        4,
    )
    printed = capsys.readouterr().out
    assert all(f"{condition} 0." in printed for condition in CONDITION_NAMES)  # the gate, per condition


def test_cli_refuses_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gate no int8 graph can meet: every condition is below it even with half the convolutions in
    float32. One line names them all, and the output folder is never created."""
    calibration = speaker_folders(["librispeech_1998", "librispeech_3080"], tmp_path / "calib", per_speaker=2)
    heldout = speaker_folders(["vctk_p226"], tmp_path / "other-corpus", per_speaker=1)
    out = tmp_path / "int8"
    args = ["export", "--nemo", str(nemo_path(TITANET)), "--out", str(out), "--precision", "int8"]
    args += ["--calibration-audio", str(calibration), "--heldout-audio", str(heldout), "--min-cosine", "1.0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("voxgate export:")]
    assert len(errors) == 1, err
    assert "not accurate enough" in errors[0]
    assert "nothing written" in errors[0]
    assert all(f"{condition} 0." in errors[0] for condition in CONDITION_NAMES)
    assert "Traceback" not in err
    assert not out.exists()


# --- the conditions calibration feeds -----------------------------------------------------------------------
def test_calibration_sees_every_recording_whole_in_every_condition(recordings: list[Recording]) -> None:
    waves = [r.wave for r in recordings[:2]]
    fed = list(calibration_inputs(waves))
    assert len(fed) == len(waves) * len(CONDITION_NAMES)
    expected = [derive(condition, wave) for wave in waves for condition in CONDITION_NAMES]
    for got, want in zip(fed, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert [w.size for w in fed[: len(CONDITION_NAMES)]] == [waves[0].size] * len(CONDITION_NAMES)  # not cut
    only = list(calibration_inputs(waves, (AS_RECORDED,)))
    assert len(only) == 2
    assert all(np.array_equal(a, b) for a, b in zip(only, waves, strict=True))


# --- the same embeddings on every x86-64 CPU ---------------------------------------------------------------
@pytest.mark.skipif(qemu_binary() is None, reason="qemu-x86_64 not installed (Debian: qemu-user)")
def test_int8_graph_gives_the_same_embeddings_on_emulated_avx2_kernels(
    titanet_small_int8: Path,
    titanet_small_fp32: Path,
    titanet_fp32: Path,
    recordings: list[Recording],
    tmp_path: Path,
) -> None:
    """The AVX2 kernels (no VNNI: u8 x s8 pairs summed in int16 with saturation), run under QEMU, give the
    exported 7-bit graph's embeddings exactly as this CPU's kernels do, whatever this CPU is, on a
    speaker the export never saw. A graph with 8-bit weights gives wrong embeddings
    there, which shows that the emulated kernels are the other ones. (Emulation is slow: one clip, as
    recorded and in the telephone band, whose activations reach furthest.)"""
    unseen = next(r.wave[: 2 * SR] for r in recordings if r.speaker == INT8_UNSEEN_SPEAKERS[-1])
    waves = [derive(condition, unseen) for condition in (AS_RECORDED, TELEPHONE)]
    saturating = quantize_graph(
        titanet_fp32 / "model.onnx",
        tmp_path / "u8s8.onnx",
        [r.wave for r in _short(recordings, INT8_EXPORT_SPEAKERS, 3)],
        waves[:1],
        min_cosine=-1.0,
        scheme=U8S8,
        calibration_conditions=(AS_RECORDED,),
    )
    assert saturating.kept_float == []
    exported = titanet_small_int8 / "model.onnx"
    (reference, native), _ = embed_graphs([titanet_small_fp32 / "model.onnx", exported], waves)
    (reduced_reference, native_u8s8), _ = embed_graphs(
        [titanet_fp32 / "model.onnx", tmp_path / "u8s8.onnx"], waves[:1]
    )
    (emulated,), features = embed_graphs([exported], waves, emulate_cpu="Haswell")
    (emulated_u8s8,), _ = embed_graphs([tmp_path / "u8s8.onnx"], waves[:1], emulate_cpu="Haswell")
    reported = {k for k in ("AVX2", "AVX512F", "AVX512BW", "AVX512VNNI") if features[k]}
    assert reported == {"AVX2"}, features
    # Integer sums are exact on both kernels; float kernels elsewhere in the graph (front end, decoder)
    # differ in the last bits (1 - cos ~ 1e-13 for float32 graphs), which can move a quantised value
    # across a rounding boundary now and then (1 - cos up to 7e-5 measured, ECAPA fixture): hence 1e-4.
    assert float(cosines(emulated, native).min()) >= 0.9999
    assert float(cosines(emulated, reference).min()) >= 0.99
    if _has_vnni():  # exact int32 sums natively: the 8-bit graph is right here, wrong on the AVX2 kernels
        assert float(cosines(native_u8s8, reduced_reference).min()) >= 0.99
    assert float(cosines(emulated_u8s8, reduced_reference).min()) < 0.95  # saturated: not the VNNI kernels


def _has_vnni() -> bool:
    from bench.int8_check import cpu_features

    return cpu_features().get("AVX512VNNI", False) or cpu_features().get("AVXVNNI", False)


def test_int8_check_reproduces_the_manifest_figures(
    titanet_small_int8: Path, titanet_small_fp32: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m bench.int8_check`` (natively here) measures what the export measured, and with
    ``--unseen`` measures the speakers the export never heard."""
    info = load_manifest(titanet_small_int8).quantization
    assert info is not None
    args = ["--fp32", str(titanet_small_fp32), "--int8", str(titanet_small_int8), "--speech", str(SPEECH_DIR)]
    args += ["--per-speaker", str(INT8_RECORDINGS_PER_SPEAKER)]
    assert int8_check(args) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if " | native | " in line]
    assert len(rows) == 1
    assert rows[0][2] == f"{info.heldout_recordings} of {', '.join(INT8_GATE_SPEAKERS)}"
    by_condition = [float(v) for v in rows[0][5].rstrip(" |").split(" / ")]
    assert by_condition == pytest.approx(list(info.min_cosine_by_condition.values()), abs=2e-6)
    assert int8_check([*args, "--unseen", "--seconds", "3"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if " | native | " in line]
    assert rows[0][2] == f"12 of {', '.join(INT8_UNSEEN_SPEAKERS)}"
    assert min(float(v) for v in rows[0][5].rstrip(" |").split(" / ")) >= 0.99
    # --join: the held-out speaker's recordings end to end, in whole clips of 10 s.
    held = _per_speaker(load_recordings(SPEECH_DIR), INT8_GATE_SPEAKERS, INT8_RECORDINGS_PER_SPEAKER)
    clips = sum(r.wave.size for r in held) // (10 * SR)
    assert clips >= 2
    assert int8_check([*args, "--join", "10"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if " | native | " in line]
    assert rows[0][2] == f"{clips} of {', '.join(INT8_GATE_SPEAKERS)}"


# --- the manifest ----------------------------------------------------------------------------------------
def test_validation_host_is_what_the_cpu_reports(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    flags = "flags\t\t: fpu sse4_1 avx avx2 fma avx512f avx512bw avx512_vnni\n"
    x86.write_text(
        f"processor\t: 0\nmodel name\t: Some CPU\n{flags}\nprocessor\t: 1\nmodel name\t: Some CPU\n{flags}"
    )
    host = this_host(x86)
    assert host.cpu_model == "Some CPU"
    assert host.cpu_flags == ["sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]
    assert host.onnxruntime == ort.__version__
    avx2_only = tmp_path / "avx2"
    avx2_only.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse4_1 avx avx2 fma\n")
    assert this_host(avx2_only).cpu_flags == ["sse4_1", "avx", "avx2", "fma"]
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    assert (this_host(arm).cpu_model, this_host(arm).cpu_flags) == (None, ["asimd", "asimddp", "i8mm"])
    assert this_host(tmp_path / "missing").cpu_flags == []


def test_manifests_written_before_the_validation_fields_still_load() -> None:
    old = {
        "method": "static post-training int8 (QDQ)",
        "quantized_nodes": 25,
        "float32_nodes": [],
        "calibration_recordings": 42,
        "heldout_recordings": 13,
        "min_cosine_to_fp32": 0.9969,
        "mean_cosine_to_fp32": 0.9983,
        "max_score_change": 0.014,
    }
    info = QuantizationInfo.model_validate_json(json.dumps(old))
    # What those exports did: 8-bit weights, every fourth file held out, host not recorded.
    assert (info.scheme, info.heldout_split, info.validated_on, info.heldout_speakers) == (
        "u8s8",
        "file",
        None,
        [],
    )


# --- CLI -------------------------------------------------------------------------------------------------
def test_cli_refuses_int8_without_calibration_or_for_the_lstm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], speech_dir: Path
) -> None:
    nemo = ["--nemo", str(nemo_path(TITANET))]
    out = ["--out", str(tmp_path / "x")]
    assert main(["export", *nemo, *out, "--precision", "int8"]) == 2
    assert "--calibration-audio" in capsys.readouterr().err
    assert main(["export", *nemo, *out, "--calibration-audio", str(speech_dir)]) == 2
    assert "only used with --precision int8" in capsys.readouterr().err
    pt = tmp_path / "pretrained.pt"
    pt.write_bytes(b"")
    args = ["export", "--resemblyzer", str(pt), *out, "--precision", "int8"]
    assert main([*args, "--calibration-audio", str(speech_dir)]) == 2
    assert "fp32 only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_reports_unusable_calibration_audio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "a.wav").write_bytes(b"RIFF not really a wav")
    (calib / "b.flac").write_bytes(b"")
    args = ["export", "--nemo", str(nemo_path(TITANET)), "--out", str(tmp_path / "x"), "--precision", "int8"]
    assert main([*args, "--calibration-audio", str(calib)]) == 1
    assert "at least 4 usable calibration recordings" in capsys.readouterr().err
    assert main([*args, "--calibration-audio", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_identity_initializers_are_inlined() -> None:
    """Pure graph rewrite: Identity(initializer) -> an initializer under the Identity's output name."""
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["w"], ["w_shared"], name="id"),
            helper.make_node("MatMul", ["x", "w_shared"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    before = _run(model, x)
    assert inline_initializer_identities(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_run(model, x), before)


def test_manifest_of_an_int8_bundle_is_plain_json(titanet_small_int8: Path) -> None:
    data = json.loads((titanet_small_int8 / "manifest.json").read_text())
    assert data["precision"] == "int8"
    assert set(data["quantization"]) >= {"method", "min_cosine_to_fp32", "max_score_change", "float32_nodes"}


def _bn_conv_model(kernel: int, pads: list[int]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    c_in, c_out = 4, 3
    inits = [
        numpy_helper.from_array(rng.uniform(0.5, 2.0, c_in).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=c_in).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=c_in).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.1, 3.0, c_in).astype(np.float32), "var"),
        numpy_helper.from_array(rng.normal(size=(c_out, c_in, 1, kernel)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=c_out).astype(np.float32), "b"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["n"], name="bn"),
            helper.make_node(
                "Conv", ["n", "w", "b"], ["y"], name="conv", kernel_shape=[1, kernel], pads=pads
            ),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c_in, 1, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_batchnorm_feeding_a_pointwise_conv_is_folded_exactly() -> None:
    model = _bn_conv_model(kernel=1, pads=[0, 0, 0, 0])
    x = np.random.default_rng(1).normal(size=(2, 4, 1, 7)).astype(np.float32)
    before = _run(model, x)
    assert fold_batchnorm_into_pointwise_convs(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Relu", "Conv"]
    assert {i.name for i in model.graph.initializer} == {"conv/bn_folded_weight", "conv/bn_folded_bias"}
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_batchnorm_before_a_padded_conv_is_left_alone() -> None:
    """Zero padding after BatchNorm is not BatchNorm of zero padding: folding would change the edges."""
    model = _bn_conv_model(kernel=3, pads=[0, 1, 0, 1])
    assert fold_batchnorm_into_pointwise_convs(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Relu", "BatchNormalization", "Conv"]
