"""NeMo's ``ConvASREncoder`` (Jasper/QuartzNet blocks) as used by TitaNet and SpeakerNet.

Parameter names follow NeMo (``encoder.<i>.mconv.<j>.conv.weight``, ``...res.0.1.running_mean``, ...),
including the parameter-free modules (activation, dropout) that take up indices in ``mconv``.

Masking: like NeMo's ``MaskedConv1d`` with ``use_mask=True``, every convolution sees its input with the
frames past the true length zeroed, and squeeze-excitation averages over the valid frames only. NeMo's
own ONNX export turns these masks off; here they stay in the graph, so a padded batch gives each item
the embedding it has alone. Only operators that mix time steps need the zeros (kernels wider than one
frame, the SE average): a 1x1 convolution, BatchNorm or activation maps each frame on its own, so the
mask NeMo applies before a 1x1 convolution cannot change a valid frame and is left out of the graph
(the padded frames then hold other values, which every later time-mixing operator masks again). The
last block keeps every mask, so the encoder output equals NeMo's on the padded frames too.

Layout: eagerly the encoders run on [B, C, T] like NeMo. With ``frames_as_width`` set (the ONNX exporter
sets it) they run on [B, C, 1, T] and every Conv1d becomes a 2-D convolution of unit height, with the
same weights and the same arithmetic: ONNX Runtime's CPU provider has blocked-layout (NCHWc) AVX-512
kernels only for 2-D convolutions, about 10-15 % faster on these graphs than its 1-D path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "hardtanh": lambda: nn.Hardtanh(0.0, 20.0),
    "selu": nn.SELU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "gelu": lambda: nn.GELU(),
}

BATCH_NORM_EPS = 1e-3  # NeMo JasperBlock's BatchNorm1d(eps=1e-3)


class EncoderConfigError(ValueError):
    """An encoder option this implementation does not support."""


def same_padding(kernel_size: int, stride: int, dilation: int) -> int:
    if stride > 1 and dilation > 1:
        raise EncoderConfigError("only stride OR dilation may be greater than 1")
    return (dilation * (kernel_size - 1)) // 2


def scaled_kernel_size(kernel_size: int, factor: float) -> int:
    """NeMo's ``compute_new_kernel_size``: scale, then round an even size up to odd."""
    size = max(int(kernel_size * factor), 1)
    return size + 1 if size % 2 == 0 else size


def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the frames where ``mask`` ([B, 1, T] bool) is False.

    float32: a multiply by the 0/1 mask (ONNX Runtime's CPU ``Mul`` is about 4x faster than its
    ``Where``); float32 activations of these models stay finite, so no NaN can arise. Other dtypes:
    ``where``, so that a padded frame that overflowed to inf in fp16 cannot become NaN (inf * 0).
    """
    if x.dtype == torch.float32:
        return x * mask.to(x.dtype)
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def conv(layer: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for [B, C, T]; for [B, C, 1, T] the same convolution as a 2-D one of unit height."""
    if x.dim() == 3:
        out: torch.Tensor = layer(x)
        return out
    padding = layer.padding
    assert not isinstance(padding, str), "string padding is not used by these models"
    return F.conv2d(
        x,
        layer.weight.unsqueeze(2),
        layer.bias,
        stride=(1, layer.stride[0]),
        padding=(0, padding[0]),
        dilation=(1, layer.dilation[0]),
        groups=layer.groups,
    )


def batch_norm(layer: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for [B, C, T]; eval-mode BatchNorm over [B, C, 1, T] (BatchNorm1d refuses 4-D)."""
    if x.dim() == 3 or layer.training:
        out: torch.Tensor = layer(x)
        return out
    return F.batch_norm(
        x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps
    )


def apply_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A parameter layer of these models, whichever layout ``x`` has (see the module docstring)."""
    if isinstance(layer, nn.Conv1d):
        return conv(layer, x)
    if isinstance(layer, nn.BatchNorm1d):
        return batch_norm(layer, x)
    out: torch.Tensor = layer(x)
    return out


def frames_mask(lengths: torch.Tensor, frames: int, like: torch.Tensor) -> torch.Tensor:
    """Bool mask of the frames before ``lengths``, shaped [B, 1, T] or [B, 1, 1, T] like ``like``."""
    positions = torch.arange(frames, device=lengths.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)
    return mask.view(mask.shape[0], *([1] * (like.dim() - 2)), frames)


class MaskedConv1d(nn.Module):
    """Conv1d whose input frames past the valid length are zeroed first (NeMo ``MaskedConv1d``).

    A 1-frame kernel skips the mask unless ``mask_pointwise`` is set: it cannot move a padded frame's
    value into a valid frame, it only changes what the padded frames of its output hold.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        use_mask: bool = True,
    ) -> None:
        super().__init__()
        self.use_mask = use_mask
        self.mask_pointwise = False
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.use_mask and (self.mask_pointwise or self.conv.kernel_size[0] > 1):
            x = masked(x, mask)
        return conv(self.conv, x)


class GroupShuffle(nn.Module):
    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.groups = groups
        self.channels_per_group = channels // groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, *rest = x.shape
        x = x.reshape(batch, self.groups, self.channels_per_group, *rest).transpose(1, 2)
        return x.reshape(batch, self.groups * self.channels_per_group, *rest)


class SqueezeExcite(nn.Module):
    """Global squeeze-excitation over the valid frames (NeMo ``SqueezeExcite``, inference path).

    In eval mode NeMo averages over the whole valid context whatever ``se_context_size`` says.
    The average is taken in float32 (as NeMo does under AMP): a sum over thousands of frames can
    overflow fp16.
    """

    def __init__(self, channels: int, reduction_ratio: int, activation: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction_ratio, bias=False),
            activation,
            nn.Linear(channels // reduction_ratio, channels, bias=False),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        x = masked(x, mask)
        pooled = x.to(torch.float32).sum(dim=tuple(range(2, x.dim()))) / count  # [B, C]
        scale = torch.sigmoid(self.fc(pooled.to(x.dtype)))
        return x * scale.view(*scale.shape, *([1] * (x.dim() - 2)))


class JasperBlock(nn.Module):
    """One Jasper/QuartzNet block: ``repeat`` x (conv, BN[, act, dropout]), optional SE, residual."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        repeat: int,
        kernel_size: int,
        stride: int,
        dilation: int,
        dropout: float,
        residual: bool,
        groups: int,
        separable: bool,
        residual_mode: str,
        activation: nn.Module,
        conv_mask: bool,
        se: bool,
        se_reduction_ratio: int,
    ) -> None:
        super().__init__()
        if stride != 1:
            raise EncoderConfigError("strided Jasper blocks are not supported (speaker models use stride 1)")
        if residual_mode not in ("add", "max"):
            raise EncoderConfigError(f"unsupported residual_mode {residual_mode!r}")
        self.residual_mode = residual_mode
        padding = same_padding(kernel_size, stride, dilation)
        mconv = nn.ModuleList()
        in_ch = inplanes
        for index in range(repeat):
            mconv.extend(
                self._conv_bn(in_ch, planes, kernel_size, dilation, padding, groups, separable, conv_mask)
            )
            if index < repeat - 1:
                mconv.extend([activation, nn.Dropout(p=dropout)])
            in_ch = planes
        if se:
            mconv.append(SqueezeExcite(planes, se_reduction_ratio, activation))
        self.mconv = mconv
        self.res: nn.ModuleList | None = None
        if residual:
            self.res = nn.ModuleList(
                [nn.ModuleList(self._conv_bn(inplanes, planes, 1, 1, 0, 1, False, conv_mask))]
            )
        self.mout = nn.Sequential(activation, nn.Dropout(p=dropout))

    @staticmethod
    def _conv_bn(
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        dilation: int,
        padding: int,
        groups: int,
        separable: bool,
        conv_mask: bool,
    ) -> list[nn.Module]:
        layers: list[nn.Module]
        if separable:
            layers = [
                MaskedConv1d(
                    in_ch,
                    in_ch,
                    kernel_size,
                    padding=padding,
                    dilation=dilation,
                    groups=in_ch,
                    use_mask=conv_mask,
                ),
                MaskedConv1d(in_ch, out_ch, 1, groups=groups, use_mask=conv_mask),
            ]
        else:
            layers = [
                MaskedConv1d(
                    in_ch,
                    out_ch,
                    kernel_size,
                    padding=padding,
                    dilation=dilation,
                    groups=groups,
                    use_mask=conv_mask,
                )
            ]
        layers.append(nn.BatchNorm1d(out_ch, eps=BATCH_NORM_EPS, momentum=0.1))
        if groups > 1:
            layers.append(GroupShuffle(groups, out_ch))
        return layers

    def forward(self, x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.mconv:
            if isinstance(layer, MaskedConv1d):
                out = layer(out, mask)
            elif isinstance(layer, SqueezeExcite):
                out = layer(out, mask, count)
            else:
                out = apply_layer(layer, out)
        if self.res is not None:
            for branch in self.res:
                res_out = x
                for res_layer in branch.children():
                    res_out = (
                        res_layer(res_out, mask)
                        if isinstance(res_layer, MaskedConv1d)
                        else apply_layer(res_layer, res_out)
                    )
                out = out + res_out if self.residual_mode == "add" else torch.maximum(out, res_out)
        result: torch.Tensor = self.mout(out)
        return result


def _first(value: Any) -> int:
    return int(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else int(value)


class ConvASREncoder(nn.Module):
    """NeMo ``ConvASREncoder`` built from its config section (``jasper`` list of block configs)."""

    def __init__(
        self,
        jasper: Sequence[Mapping[str, Any]],
        activation: str,
        feat_in: int,
        *,
        normalization_mode: str = "batch",
        residual_mode: str = "add",
        conv_mask: bool = True,
        frame_splicing: int = 1,
    ) -> None:
        super().__init__()
        self.frames_as_width = False  # see the module docstring (Layout)
        if normalization_mode != "batch":
            raise EncoderConfigError(f"unsupported normalization_mode {normalization_mode!r}")
        if activation not in ACTIVATIONS:
            raise EncoderConfigError(f"unsupported activation {activation!r}")
        # NeMo shares one activation instance across all blocks (it has no parameters).
        act = ACTIVATIONS[activation]()
        in_ch = feat_in * frame_splicing
        blocks = []
        for lcfg in jasper:
            for unsupported in ("residual_dense", "future_context"):
                if lcfg.get(unsupported, False) not in (False, -1, None):
                    raise EncoderConfigError(f"unsupported Jasper option {unsupported}")
            if int(lcfg.get("heads", -1)) != -1:
                raise EncoderConfigError("unsupported Jasper option heads")
            kernel = scaled_kernel_size(_first(lcfg["kernel"]), float(lcfg.get("kernel_size_factor", 1.0)))
            blocks.append(
                JasperBlock(
                    in_ch,
                    int(lcfg["filters"]),
                    repeat=int(lcfg["repeat"]),
                    kernel_size=kernel,
                    stride=_first(lcfg["stride"]),
                    dilation=_first(lcfg["dilation"]),
                    dropout=float(lcfg["dropout"]),
                    residual=bool(lcfg["residual"]),
                    groups=int(lcfg.get("groups", 1)),
                    separable=bool(lcfg.get("separable", False)),
                    residual_mode=str(lcfg.get("residual_mode", residual_mode)),
                    activation=act,
                    conv_mask=conv_mask,
                    se=bool(lcfg.get("se", False)),
                    se_reduction_ratio=int(lcfg.get("se_reduction_ratio", 8)),
                )
            )
            in_ch = int(lcfg["filters"])
        # NeMo's padded output frames: the last block masks like NeMo (see the module docstring).
        for module in blocks[-1].modules():
            if isinstance(module, MaskedConv1d):
                module.mask_pointwise = True
        self.feat_out = in_ch
        self.encoder = nn.Sequential(*blocks)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ConvASREncoder:
        return cls(
            cfg["jasper"],
            str(cfg["activation"]),
            int(cfg["feat_in"]),
            normalization_mode=str(cfg.get("normalization_mode", "batch")),
            residual_mode=str(cfg.get("residual_mode", "add")),
            conv_mask=bool(cfg.get("conv_mask", True)),
            frame_splicing=int(cfg.get("frame_splicing", 1)),
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, feat_in, T] features and valid lengths -> [B, feat_out, T] (padded frames not zeroed)."""
        if self.frames_as_width:
            x = x.unsqueeze(2)
        mask = frames_mask(lengths, x.shape[-1], x)
        count = torch.clamp(lengths, min=1).to(torch.float32).unsqueeze(1)
        for block in self.encoder:
            x = block(x, mask, count)
        # select, not squeeze: squeeze of a dimension the exporter cannot size becomes an ONNX If.
        return x[:, :, 0] if self.frames_as_width else x
