"""NeMo's ``ECAPAEncoder`` (TDNN + SE-TDNN blocks, no Res2Net), with NeMo's parameter names.

NeMo's ECAPA convolutions are not masked: an utterance's output depends on the zero frames after it.
Alone, NeMo pads each utterance's features to a multiple of 16 frames, and the convolutions' own zero
padding starts right after that. To give every item of a padded batch exactly that result, the input of
each convolution wider than one frame is zeroed from the item's own padded length on; inside that length
the padded frames carry the same non-zero activations they carry when the utterance is alone.
Squeeze-excitation averages over the valid frames, as in NeMo. ``frames_as_width``: as in
``app.modeling.conv_asr`` (2-D convolutions of unit height for ONNX Runtime's NCHWc kernels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from app.modeling.conv_asr import apply_layer, batch_norm, conv, frames_mask, masked, same_padding


class TDNNModule(nn.Module):
    """Conv1d -> ReLU -> BatchNorm1d (NeMo ``TDNNModule``)."""

    def __init__(self, inp_filters: int, out_filters: int, kernel_size: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_layer = nn.Conv1d(
            inp_filters,
            out_filters,
            kernel_size=kernel_size,
            dilation=dilation,
            padding=same_padding(kernel_size, 1, dilation),
        )
        self.activation = nn.ReLU()
        self.bn = nn.BatchNorm1d(out_filters)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        if pad_mask is not None and self.kernel_size > 1:
            x = masked(x, pad_mask)
        return batch_norm(self.bn, self.activation(conv(self.conv_layer, x)))


class MaskedSEModule(nn.Module):
    """SE over the valid frames: Conv1d -> ReLU -> BN -> Conv1d -> Sigmoid, scaling every frame."""

    def __init__(self, inp_filters: int, se_filters: int, out_filters: int) -> None:
        super().__init__()
        self.se_layer = nn.Sequential(
            nn.Conv1d(inp_filters, se_filters, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(se_filters),
            nn.Conv1d(se_filters, out_filters, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor, valid_mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        # Mean in float32: a sum over thousands of frames can overflow fp16.
        pooled = masked(x, valid_mask).to(torch.float32).sum(dim=-1, keepdim=True) / count
        scale = pooled.to(x.dtype)
        for layer in self.se_layer:
            scale = apply_layer(layer, scale)
        return scale * x


class TDNNSEModule(nn.Module):
    """1x1 TDNN -> grouped dilated conv -> ReLU -> BN -> 1x1 TDNN -> SE, plus the input (residual)."""

    def __init__(
        self,
        inp_filters: int,
        out_filters: int,
        group_scale: int = 8,
        se_channels: int = 128,
        kernel_size: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        group_conv = nn.Conv1d(
            out_filters,
            out_filters,
            kernel_size=kernel_size,
            dilation=dilation,
            padding=same_padding(kernel_size, 1, dilation),
            groups=group_scale,
        )
        self.group_tdnn_block = nn.Sequential(
            TDNNModule(inp_filters, out_filters, kernel_size=1, dilation=1),
            group_conv,
            nn.ReLU(),
            nn.BatchNorm1d(out_filters),
            TDNNModule(out_filters, out_filters, kernel_size=1, dilation=1),
        )
        self.se_layer = MaskedSEModule(out_filters, se_channels, out_filters)

    def forward(
        self, x: torch.Tensor, valid_mask: torch.Tensor, pad_mask: torch.Tensor, count: torch.Tensor
    ) -> torch.Tensor:
        tdnn_in, group_conv, relu, bn, tdnn_out = self.group_tdnn_block
        assert isinstance(group_conv, nn.Conv1d)
        assert isinstance(bn, nn.BatchNorm1d)
        out = tdnn_in(x)
        if self.kernel_size > 1:
            out = masked(out, pad_mask)
        out = tdnn_out(batch_norm(bn, relu(conv(group_conv, out))))
        scaled: torch.Tensor = self.se_layer(out, valid_mask, count)
        return scaled + x


class ECAPAEncoder(nn.Module):
    def __init__(
        self,
        feat_in: int,
        filters: Sequence[int],
        kernel_sizes: Sequence[int],
        dilations: Sequence[int],
        scale: int = 8,
    ) -> None:
        super().__init__()
        if not len(filters) == len(kernel_sizes) == len(dilations) or len(filters) < 3:
            raise ValueError("ECAPA filters/kernel_sizes/dilations must have the same length (>= 3)")
        self.layers = nn.ModuleList([TDNNModule(feat_in, filters[0], kernel_sizes[0], dilations[0])])
        for i in range(len(filters) - 2):
            self.layers.append(
                TDNNSEModule(
                    filters[i],
                    filters[i + 1],
                    group_scale=scale,
                    se_channels=128,  # fixed in NeMo's ECAPAEncoder
                    kernel_size=kernel_sizes[i + 1],
                    dilation=dilations[i + 1],
                )
            )
        self.feature_agg = TDNNModule(filters[-1], filters[-1], kernel_sizes[-1], dilations[-1])
        self.feat_out = int(filters[-1])
        self.frames_as_width = False  # see the module docstring

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ECAPAEncoder:
        return cls(
            int(cfg["feat_in"]),
            [int(v) for v in cfg["filters"]],
            [int(v) for v in cfg["kernel_sizes"]],
            [int(v) for v in cfg["dilations"]],
            scale=int(cfg.get("scale", 8)),
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, padded_lengths: torch.Tensor) -> torch.Tensor:
        """``lengths``: valid frames; ``padded_lengths``: frames the utterance would have alone."""
        if self.frames_as_width:
            x = x.unsqueeze(2)
        valid_mask = frames_mask(lengths, x.shape[-1], x)
        pad_mask = frames_mask(padded_lengths, x.shape[-1], x)
        count = torch.clamp(lengths, min=1).to(torch.float32).view(-1, *([1] * (x.dim() - 1)))
        outputs = []
        first = self.layers[0]
        assert isinstance(first, TDNNModule)
        x = first(x, pad_mask)
        for layer in self.layers[1:]:
            x = layer(x, valid_mask, pad_mask, count)
            outputs.append(x)
        out: torch.Tensor = self.feature_agg(torch.cat(outputs, dim=1), pad_mask)
        return out[:, :, 0] if self.frames_as_width else out  # select: see ConvASREncoder.forward
