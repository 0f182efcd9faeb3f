"""Our PyTorch model and its ONNX export against NVIDIA NeMo's own outputs (tests/data/nemo).

Every model in ``tests/data/nemo/manifest.json`` is checked: strict checkpoint import, log-mel features,
encoder output, embeddings and logits in torch, and embeddings of the exported graph in ONNX Runtime.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from app.export.nemo_export import export_nemo_checkpoint
from app.modeling.features import slaney_mel_filterbank
from app.modeling.nemo_archive import (
    NemoArchiveError,
    load_config,
    load_nemo_archive,
    parse_config_text,
    resolve_interpolations,
)
from app.modeling.speaker_model import (
    ModelConfigError,
    SpeakerModel,
    architecture_name,
    build_speaker_model,
    load_nemo_model,
)
from tests.support.data import MODELS, NEMO_FIXTURES, UTTERANCES, audio, nemo_manifest, nemo_path, reference

EMB_TOL = 1e-4
FEATS_TOL = 1e-3


@pytest.fixture(scope="module", params=MODELS)
def model_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def speaker_model(model_name: str) -> SpeakerModel:
    return load_nemo_model(nemo_path(model_name)).model


def _run(model: SpeakerModel, utt: str) -> tuple[np.ndarray, np.ndarray]:
    x = audio(utt)
    with torch.no_grad():
        logits, emb = model.logits_and_embedding(torch.from_numpy(x)[None], torch.tensor([len(x)]))
    return logits.numpy(), emb.numpy()


def test_state_dict_matches_nemo_exactly(model_name: str, speaker_model: SpeakerModel) -> None:
    listed = nemo_manifest()["models"][model_name]["state_dict"]
    ours = {key: list(value.shape) for key, value in speaker_model.state_dict().items()}
    assert ours == {key: value["shape"] for key, value in listed.items()}


def test_reshaped_or_extra_key_is_refused(tmp_path: Path) -> None:
    archive = load_nemo_archive(nemo_path(MODELS[0]))
    model = build_speaker_model(archive.config)
    state = dict(archive.state_dict)
    state["decoder.final.weight"] = state["decoder.final.weight"][:-1]
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(state, strict=True)
    state = dict(archive.state_dict, **{"decoder.extra": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict(state, strict=True)


def test_checkpoint_filterbank_is_slaney_and_ours_matches(speaker_model: SpeakerModel) -> None:
    s = speaker_model.feature_settings
    ours = slaney_mel_filterbank(s.sample_rate, s.n_fft, s.n_mels)
    from_librosa = librosa.filters.mel(
        sr=s.sample_rate, n_fft=s.n_fft, n_mels=s.n_mels, fmin=0.0, norm="slaney"
    )
    checkpoint = speaker_model.preprocessor.featurizer.fb[0].numpy()
    np.testing.assert_allclose(ours, from_librosa, atol=1e-7)
    np.testing.assert_allclose(ours, checkpoint, atol=1e-7)


@pytest.mark.parametrize("utt", UTTERANCES)
def test_features_match_nemo(model_name: str, speaker_model: SpeakerModel, utt: str) -> None:
    x = audio(utt)
    with torch.no_grad():
        feats = speaker_model.features(torch.from_numpy(x)[None], torch.tensor([len(x)]))
    ref = reference(model_name, f"{utt}.feats")
    assert feats.feats.shape == ref.shape
    assert int(feats.lengths[0]) == len(x) // 160
    assert int(feats.padded_lengths[0]) == ref.shape[2]
    assert np.abs(feats.feats.numpy() - ref).max() < FEATS_TOL


def test_encoder_matches_nemo_on_nemo_features(model_name: str, speaker_model: SpeakerModel) -> None:
    feats = torch.from_numpy(reference(model_name, "utt1.feats"))
    n_valid = len(audio("utt1")) // 160
    with torch.no_grad():
        encoded = speaker_model.encode(feats, torch.tensor([n_valid]), torch.tensor([feats.shape[2]]))
    # All frames, the padded ones included: NeMo does not mask the encoder output.
    assert np.abs(encoded.numpy() - reference(model_name, "utt1.enc")).max() < EMB_TOL


@pytest.mark.parametrize("utt", UTTERANCES)
def test_torch_embeddings_and_logits_match_nemo(
    model_name: str, speaker_model: SpeakerModel, utt: str
) -> None:
    logits, emb = _run(speaker_model, utt)
    assert np.abs(emb - reference(model_name, f"{utt}.emb")).max() < EMB_TOL
    assert np.abs(logits - reference(model_name, f"{utt}.logits")).max() < EMB_TOL


def test_onnx_embeddings_match_nemo(model_name: str, tmp_path: Path) -> None:
    export_nemo_checkpoint(nemo_path(model_name), tmp_path, precision="fp32", name=None)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for utt in UTTERANCES:
        x = audio(utt)
        (emb,) = session.run(None, {"audio": x[None], "lengths": np.array([len(x)], dtype=np.int64)})
        assert np.abs(emb - reference(model_name, f"{utt}.emb")).max() < EMB_TOL, utt


def test_architecture_names_of_fixture_models() -> None:
    names = {m: architecture_name(load_nemo_archive(nemo_path(m)).config) for m in MODELS}
    assert names == {
        "SpeakerNet_verification_3x2x256-reduced": "speakernet",
        "ecapa_tdnn-reduced": "ecapa_tdnn",
        "titanet-large-reduced": "titanet",  # width 128: none of the paper's S/M/L sizes
    }


# --- configs and interpolation ----------------------------------------------------------------------


def test_resolver_handles_nested_typed_and_embedded_references() -> None:
    cfg = {
        "model": {
            "sample_rate": 16000,
            "defaults": {"filters": 512, "kernel": [3, 5]},
            "a": "${model.defaults.filters}",
            "b": "${model.a}",
            "c": "rate=${model.sample_rate}Hz",
            "d": "${model.defaults.kernel}",
        },
        "name": "x",
        "e": "${name}",
    }
    resolved = resolve_interpolations(cfg)
    assert resolved["model"]["a"] == 512
    assert resolved["model"]["b"] == 512
    assert resolved["model"]["c"] == "rate=16000Hz"
    assert resolved["model"]["d"] == [3, 5]
    assert resolved["e"] == "x"
    assert cfg["model"]["a"] == "${model.defaults.filters}"  # the input is left alone


def test_resolver_accepts_root_relative_references_in_a_model_section() -> None:
    # A .nemo stores only the model section; references written from the training root still resolve.
    text = "sample_rate: 8000\nencoder: {feat_in: '${model.sample_rate}'}\ndecoder: {feat_in: 1}\n"
    assert parse_config_text(text)["encoder"]["feat_in"] == 8000


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"a": "${missing.key}"}, "unresolvable"),
        ({"a": "${b}", "b": "${a}"}, "circular"),
        ({"a": "${oc.env:HOME}"}, "resolver"),
    ],
)
def test_resolver_errors(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(NemoArchiveError, match=message):
        resolve_interpolations(cfg)


@pytest.mark.parametrize(
    ("config_file", "arch", "params_without_classifier", "emb_dim"),
    [
        ("titanet-large.yaml", "titanet-large", 22_122_288, 192),
        ("titanet-small.yaml", "titanet-small", 6_825_264, 192),
        ("ecapa_tdnn.yaml", "ecapa_tdnn", 20_916_928, 192),
        ("SpeakerNet_verification_3x2x256.yaml", "speakernet", 1_800_824, 256),
        ("SpeakerNet_recognition_3x2x512.yaml", "speakernet", 5_040_760, 512),
    ],
)
def test_official_configs_build(
    config_file: str, arch: str, params_without_classifier: int, emb_dim: int
) -> None:
    config = load_config(NEMO_FIXTURES / "configs" / config_file)
    assert "${" not in json.dumps(config)
    model = build_speaker_model(config)
    assert model.architecture == arch
    assert model.embedding_dim == emb_dim
    n_params = sum(p.numel() for p in model.parameters()) - model.decoder.final.weight.numel()
    if model.decoder.final.bias is not None:
        n_params -= model.decoder.final.bias.numel()
    assert n_params == params_without_classifier


def test_bad_archive_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.nemo"
    bogus.write_bytes(b"not a tar file")
    with pytest.raises(NemoArchiveError):
        load_nemo_archive(bogus)


def test_config_weight_mismatch_is_a_model_error(tmp_path: Path) -> None:
    archive = load_nemo_archive(nemo_path(MODELS[0]))
    state = {k: v for k, v in archive.state_dict.items() if not k.startswith("decoder.final")}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(yaml.safe_dump(archive.config))
    broken = tmp_path / "broken.nemo"
    with tarfile.open(broken, "w:") as tar:
        tar.add(config_file, arcname="./model_config.yaml")
        info = tarfile.TarInfo("./model_weights.ckpt")
        info.size = buffer.getbuffer().nbytes
        buffer.seek(0)
        tar.addfile(info, buffer)
    with pytest.raises(ModelConfigError, match="Missing key"):
        load_nemo_model(broken)
