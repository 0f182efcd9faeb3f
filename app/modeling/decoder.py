"""NeMo's ``SpeakerDecoder``: pooling over the valid frames, embedding layers, classifier.

Pooling modes: ``attention`` (ECAPA-style attentive statistics, TitaNet/ECAPA), ``xvector`` (mean and
unbiased std, SpeakerNet) and ``tap`` (mean). The embedding is the output of the last embedding layer
before its activation, exactly what NeMo's ``forward`` returns as ``embs`` (not L2-normalised).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.modeling.conv_asr import masked
from app.modeling.ecapa import TDNNModule

POOL_EPS = 1e-10  # NeMo: clamp before the square root of the variance


class AttentivePoolLayer(nn.Module):
    """Attentive statistics pooling (NeMo ``AttentivePoolLayer``): [B, C, T] -> [B, 2C, 1]."""

    def __init__(self, inp_filters: int, attention_channels: int = 128) -> None:
        super().__init__()
        self.feat_in = 2 * inp_filters
        self.attention_layer = nn.Sequential(
            TDNNModule(inp_filters * 3, attention_channels, kernel_size=1, dilation=1),
            nn.Tanh(),
            nn.Conv1d(attention_channels, inp_filters, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, valid_mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        # Statistics and softmax in float32 whatever the network's precision (sums over many frames).
        x = masked(x, valid_mask)
        x32 = x.to(torch.float32)
        weights = torch.where(valid_mask, 1.0 / count, torch.zeros_like(count))  # [B, 1, T]
        mean, std = _weighted_stats(x32, weights)
        scores = self._attention_scores(x, torch.cat([mean, std], dim=1).to(x.dtype)).to(torch.float32)
        if x.dtype == torch.float32:
            # Adding a [B, 1, T] row of 0 / -inf is cheaper in ONNX Runtime than a Where over [B, C, T];
            # float32 scores are finite (a 1x1 convolution of tanh outputs), so no inf - inf.
            no_frame = torch.full((), float("-inf"), device=x.device)
            scores = scores + torch.where(valid_mask, torch.zeros((), device=x.device), no_frame)
        else:
            scores = scores.masked_fill(~valid_mask, float("-inf"))
        alpha = F.softmax(scores, dim=2)
        mu, sigma = _weighted_stats(x32, alpha)
        return torch.cat([mu, sigma], dim=1).unsqueeze(2)

    def _attention_scores(self, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """``attention_layer(cat([x, mean, std] repeated over time)))`` without building that input.

        NeMo feeds the 1x1 TDNN convolution the statistics copied to every frame; their part of the
        convolution is the same for every frame, so it is computed once per item ([B, 2C] -> [B, A, 1])
        and added: a third of the arithmetic, and no [B, 3C, T] concatenation.
        """
        tdnn, tanh, conv = self.attention_layer
        assert isinstance(tdnn, TDNNModule)
        weight, bias = tdnn.conv_layer.weight, tdnn.conv_layer.bias
        channels = x.shape[1]
        per_frame = F.conv1d(x, weight[:, :channels])
        per_item = F.conv1d(stats.unsqueeze(2), weight[:, channels:], bias)
        hidden = tdnn.bn(tdnn.activation(per_frame + per_item))
        scores: torch.Tensor = conv(tanh(hidden))
        return scores


def _weighted_stats(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NeMo ``get_statistics_with_mask``: weighted mean and (biased) std over time."""
    mean = torch.sum(weights * x, dim=2)
    var = torch.sum(weights * (x - mean.unsqueeze(2)).pow(2), dim=2)
    return mean, torch.sqrt(var.clamp(min=POOL_EPS))


def _eval_batch_norm(x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics")
    out = (x - bn.running_mean) * torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        out = out * bn.weight + bn.bias
    return out


class StatsPoolLayer(nn.Module):
    """Mean (``tap``) or mean + unbiased std (``xvector``) over the valid frames: [B, C, T] -> [B, C or 2C].

    Computed in float32 whatever the network's precision.
    """

    def __init__(self, feat_in: int, pool_mode: str = "xvector") -> None:
        super().__init__()
        self.pool_mode = pool_mode
        self.feat_in = feat_in * 2 if pool_mode == "xvector" else feat_in

    def forward(self, x: torch.Tensor, valid_mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        x = masked(x, valid_mask).to(torch.float32)
        n = count.view(-1, 1)
        mean = x.sum(dim=2) / n
        if self.pool_mode != "xvector":
            return mean
        centred = masked(x - mean.unsqueeze(2), valid_mask)
        var = centred.pow(2).sum(dim=2) / (
            n - 1.0
        )  # unbiased, as NeMo (a 1-frame input gives inf/NaN there too)
        return torch.cat([mean, torch.sqrt(var.clamp(min=POOL_EPS))], dim=1)


class SpeakerDecoder(nn.Module):
    def __init__(
        self,
        feat_in: int,
        num_classes: int,
        emb_sizes: int | list[int] = 256,
        pool_mode: str = "xvector",
        angular: bool = False,
        attention_channels: int = 128,
    ) -> None:
        super().__init__()
        self.angular = angular
        self.pool_mode = pool_mode.lower()
        sizes = [emb_sizes] if isinstance(emb_sizes, int) else list(emb_sizes)
        self._pooling: AttentivePoolLayer | StatsPoolLayer
        if self.pool_mode in ("xvector", "tap"):
            self._pooling = StatsPoolLayer(feat_in, self.pool_mode)
            affine = "linear"
        elif self.pool_mode == "attention":
            self._pooling = AttentivePoolLayer(feat_in, attention_channels)
            affine = "conv"
        else:
            raise ValueError(f"unsupported pool_mode {pool_mode!r}")
        shapes = [self._pooling.feat_in, *[int(s) for s in sizes]]
        layers = []
        for shape_in, shape_out in itertools.pairwise(shapes):
            if affine == "conv":
                layer = nn.Sequential(nn.BatchNorm1d(shape_in), nn.Conv1d(shape_in, shape_out, kernel_size=1))
            else:
                # NeMo passes learn_mean=False: a BatchNorm without affine parameters.
                layer = nn.Sequential(
                    nn.Linear(shape_in, shape_out), nn.BatchNorm1d(shape_out, affine=False), nn.ReLU()
                )
            layers.append(layer)
        self.emb_layers = nn.ModuleList(layers)
        self.final = nn.Linear(shapes[-1], num_classes, bias=not angular)
        self.emb_dim = shapes[-1]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SpeakerDecoder:
        return cls(
            int(cfg["feat_in"]),
            int(cfg["num_classes"]),
            emb_sizes=cfg.get("emb_sizes", 256),
            pool_mode=str(cfg.get("pool_mode", "xvector")),
            angular=bool(cfg.get("angular", False)),
            attention_channels=int(cfg.get("attention_channels", 128)),
        )

    def forward(self, encoded: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output [B, C, T] and valid lengths -> (logits [B, classes], embedding [B, D])."""
        frames = torch.arange(encoded.shape[2], device=encoded.device)
        valid_mask = (frames.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1)
        count = torch.clamp(lengths, min=1).to(torch.float32).view(-1, 1, 1)
        pooled = self._pooling(encoded, valid_mask, count).to(self.final.weight.dtype)
        emb = pooled
        for layer in self.emb_layers:
            first, second, *rest = layer.children()
            if isinstance(first, nn.Linear) and isinstance(second, nn.BatchNorm1d):
                # Linear -> BN(affine=False) -> ReLU; NeMo's embedding (emb_id = 2) is taken before the ReLU.
                # The eval-mode BN is written out: the ONNX exporter cannot export a BatchNorm whose
                # channel count it failed to infer through the dynamic-shape pooling.
                emb = _eval_batch_norm(first(pooled), second)
                pooled = rest[0](emb)
            else:
                emb = pooled = layer(pooled)
        pooled = pooled.squeeze(-1) if pooled.dim() == 3 else pooled
        emb = emb.squeeze(-1) if emb.dim() == 3 else emb
        logits = self.final(F.normalize(pooled, p=2.0, dim=1) if self.angular else pooled)
        return logits, emb

    def embedding(self, encoded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.forward(encoded, lengths)[1]
