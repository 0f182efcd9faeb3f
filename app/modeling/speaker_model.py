"""NeMo ``EncDecSpeakerLabelModel`` (inference path) built from its config, without NeMo.

``build_speaker_model(config)`` builds preprocessor, encoder and decoder under NeMo's module names, so a
checkpoint's state_dict loads with ``strict=True``. ``SpeakerModel.forward(audio, lengths)`` returns the
embedding NeMo's ``forward`` returns (not L2-normalised); ``logits_and_embedding`` also gives the logits.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.modeling.conv_asr import ConvASREncoder
from app.modeling.decoder import SpeakerDecoder
from app.modeling.ecapa import ECAPAEncoder
from app.modeling.features import AudioToMelPreprocessor, Features, FeatureSettings
from app.modeling.nemo_archive import NemoArchive, load_nemo_archive

# Channel width of TitaNet's middle blocks -> the TitaNet paper's size names.
TITANET_SIZES = {256: "titanet-small", 512: "titanet-medium", 1024: "titanet-large"}


class ModelConfigError(ValueError):
    """The config describes a model this package cannot build."""


def _class_name(section: Mapping[str, Any]) -> str:
    return str(section.get("_target_", "")).rsplit(".", 1)[-1]


def architecture_name(config: Mapping[str, Any]) -> str:
    """A short family name for the manifest: titanet-large/-medium/-small, ecapa_tdnn, speakernet."""
    encoder = _class_name(config["encoder"])
    if encoder == "ECAPAEncoder":
        return "ecapa_tdnn"
    if encoder == "ConvASREncoder":
        blocks = config["encoder"]["jasper"]
        if any(block.get("se", False) for block in blocks):
            width = int(blocks[1]["filters"]) if len(blocks) > 1 else int(blocks[0]["filters"])
            return TITANET_SIZES.get(width, "titanet")
        return "speakernet"
    raise ModelConfigError(f"unsupported encoder {config['encoder'].get('_target_')!r}")


def _is_angular(config: Mapping[str, Any]) -> bool:
    # NeMo sets decoder.angular when the loss target names an angular loss (a substring test).
    loss = config.get("loss") or {}
    return bool(config["decoder"].get("angular", False)) or "angular" in str(loss.get("_target_", ""))


class SpeakerModel(nn.Module):
    def __init__(
        self,
        preprocessor: AudioToMelPreprocessor,
        encoder: ConvASREncoder | ECAPAEncoder,
        decoder: SpeakerDecoder,
        architecture: str,
    ) -> None:
        super().__init__()
        self.preprocessor = preprocessor
        self.encoder = encoder
        self.decoder = decoder
        self.architecture = architecture

    @property
    def feature_settings(self) -> FeatureSettings:
        return self.preprocessor.settings

    @property
    def embedding_dim(self) -> int:
        return self.decoder.emb_dim

    def features(self, audio: torch.Tensor, lengths: torch.Tensor) -> Features:
        result: Features = self.preprocessor(audio, lengths)
        return result

    def encode(
        self, feats: torch.Tensor, lengths: torch.Tensor, padded_lengths: torch.Tensor
    ) -> torch.Tensor:
        encoded: torch.Tensor
        if isinstance(self.encoder, ECAPAEncoder):
            encoded = self.encoder(feats, lengths, padded_lengths)
        else:
            encoded = self.encoder(feats, lengths)
        return encoded

    def decode(self, encoded: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result: tuple[torch.Tensor, torch.Tensor] = self.decoder(encoded, lengths)
        return result

    def logits_and_embedding(
        self, audio: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(audio, lengths)
        encoded = self.encode(feats.feats, feats.lengths, feats.padded_lengths)
        return self.decode(encoded, feats.lengths)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """float32 audio [B, N] (zero-padded) and int64 lengths [B] -> embeddings [B, D]."""
        return self.logits_and_embedding(audio, lengths)[1]


def build_speaker_model(config: Mapping[str, Any]) -> SpeakerModel:
    """Build the (untrained) model a resolved NeMo ``model`` config describes."""
    for section in ("preprocessor", "encoder", "decoder"):
        if section not in config:
            raise ModelConfigError(f"config has no {section} section")
    architecture = architecture_name(config)
    preprocessor = AudioToMelPreprocessor(FeatureSettings.from_config(config["preprocessor"]))
    encoder: ConvASREncoder | ECAPAEncoder
    if _class_name(config["encoder"]) == "ECAPAEncoder":
        encoder = ECAPAEncoder.from_config(config["encoder"])
    else:
        encoder = ConvASREncoder.from_config(config["encoder"])
    decoder_cfg = dict(copy.deepcopy(config["decoder"]))
    decoder_cfg["angular"] = _is_angular(config)
    if _class_name(decoder_cfg) not in ("", "SpeakerDecoder"):
        raise ModelConfigError(f"unsupported decoder {decoder_cfg.get('_target_')!r}")
    decoder = SpeakerDecoder.from_config(decoder_cfg)
    if int(decoder_cfg["feat_in"]) != encoder.feat_out:
        raise ModelConfigError(
            f"decoder feat_in {decoder_cfg['feat_in']} != encoder output {encoder.feat_out}"
        )
    return SpeakerModel(preprocessor, encoder, decoder, architecture)


def init_like_nemo(model: SpeakerModel, seed: int = 0) -> None:
    """NeMo's initialisation (``init_weights``, xavier_uniform): for untrained benchmark models."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv1d | nn.Linear):
                fan_out = module.weight.shape[0] * (
                    module.weight[0][0].numel() if module.weight.dim() > 2 else 1
                )
                fan_in = module.weight[0].numel()
                bound = (6.0 / (fan_in + fan_out)) ** 0.5
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 2 * bound - bound)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm1d):
                module.reset_parameters()


@dataclass(frozen=True)
class LoadedNemoModel:
    model: SpeakerModel
    archive: NemoArchive


def load_nemo_model(path: Path) -> LoadedNemoModel:
    """Build the model a ``.nemo`` describes and load its weights strictly (no missing/extra/reshaped key)."""
    archive = load_nemo_archive(path)
    model = build_speaker_model(archive.config)
    try:
        model.load_state_dict(archive.state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelConfigError(f"{path}: checkpoint does not match its config: {exc}") from exc
    return LoadedNemoModel(model.eval(), archive)
