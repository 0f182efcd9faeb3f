"""NeMo's log-mel front end (``AudioToMelSpectrogramPreprocessor`` in eval mode) in exportable torch.

Same numbers as NeMo's ``FilterbankFeatures`` (no dither at inference), but built only from operators that
ONNX Runtime runs on CPU and CUDA: the STFT is a strided Conv1d against a fixed DFT basis with the window
folded in (``torch.stft`` exports to the ONNX STFT op, which the CUDA provider lacks).

Steps, as NeMo does them: pre-emphasis (then samples past the true length zeroed), centred STFT with
constant zero padding, power spectrum, slaney mel filterbank, ``log(x + 2^-24)``, per-feature
normalisation over the valid frames (unbiased std + 1e-5), frames past ``samples // hop`` set to the pad
value, time padded to a multiple of ``pad_to`` frames.

Module and buffer names (``featurizer.window``, ``featurizer.fb``) are NeMo's, so the buffers stored in a
checkpoint load with ``strict=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# NeMo: features.CONSTANT, added to the per-feature std.
NORMALIZE_STD_EPS = 1e-5

_WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
    "bartlett": torch.bartlett_window,
}


class FrontEndConfigError(ValueError):
    """A preprocessor setting this front end does not implement."""


@dataclass(frozen=True)
class FeatureSettings:
    """The effective settings of NeMo's AudioToMelSpectrogramPreprocessor (defaults are NeMo's)."""

    sample_rate: int = 16000
    win_length: int = 320
    hop_length: int = 160
    n_fft: int = 512
    n_mels: int = 64
    window: str = "hann"
    preemph: float | None = 0.97
    normalize: str | None = "per_feature"
    log: bool = True
    log_zero_guard_type: str = "add"
    log_zero_guard_value: float = 2.0**-24
    pad_to: int = 16
    pad_value: float = 0.0
    mag_power: float = 2.0
    lowfreq: float = 0.0
    highfreq: float | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FeatureSettings:
        """Read a NeMo ``preprocessor`` config section, refusing what would change the numbers silently."""
        target = str(cfg.get("_target_", "AudioToMelSpectrogramPreprocessor"))
        if not target.endswith("AudioToMelSpectrogramPreprocessor"):
            raise FrontEndConfigError(f"unsupported preprocessor {target}")
        if cfg.get("use_torchaudio", False):
            raise FrontEndConfigError("use_torchaudio=True (FilterbankFeaturesTA) is not supported")
        if int(cfg.get("frame_splicing", 1)) != 1:
            raise FrontEndConfigError("frame_splicing != 1 is not supported")
        if cfg.get("exact_pad", False):
            raise FrontEndConfigError("exact_pad=True is not supported")
        if float(cfg.get("nb_augmentation_prob", 0.0)) != 0.0:
            raise FrontEndConfigError("nb_augmentation_prob is a training-only option")
        if str(cfg.get("mel_norm", "slaney")) != "slaney":
            raise FrontEndConfigError("only mel_norm='slaney' is supported")
        sample_rate = int(cfg.get("sample_rate", 16000))
        win_length = cfg.get("n_window_size")
        if win_length is None:
            win_length = int(float(cfg.get("window_size", 0.02)) * sample_rate)
        hop_length = cfg.get("n_window_stride")
        if hop_length is None:
            hop_length = int(float(cfg.get("window_stride", 0.01)) * sample_rate)
        n_fft = cfg.get("n_fft") or 2 ** math.ceil(math.log2(int(win_length)))
        window = str(cfg.get("window", "hann"))
        if window not in _WINDOWS:
            raise FrontEndConfigError(f"unsupported window {window!r}")
        normalize = cfg.get("normalize", "per_feature")
        if normalize not in ("per_feature", "all_features", None, False, ""):
            raise FrontEndConfigError(f"unsupported normalize={normalize!r}")
        guard = cfg.get("log_zero_guard_value", 2.0**-24)
        if isinstance(guard, str):
            # NeMo's "tiny"/"eps" are looked up for the (float32) dtype of the spectrum.
            info = torch.finfo(torch.float32)
            guard = {"tiny": info.tiny, "eps": info.eps}.get(guard)
            if guard is None:
                raise FrontEndConfigError(f"unsupported log_zero_guard_value {cfg['log_zero_guard_value']!r}")
        guard_type = str(cfg.get("log_zero_guard_type", "add"))
        if guard_type not in ("add", "clamp"):
            raise FrontEndConfigError(f"unsupported log_zero_guard_type {guard_type!r}")
        pad_to = cfg.get("pad_to", 16)
        if not isinstance(pad_to, int) or pad_to < 0:
            raise FrontEndConfigError(f"unsupported pad_to={pad_to!r} (only a frame count is supported)")
        preemph = cfg.get("preemph", 0.97)
        highfreq = cfg.get("highfreq")
        return cls(
            sample_rate=sample_rate,
            win_length=int(win_length),
            hop_length=int(hop_length),
            n_fft=int(n_fft),
            n_mels=int(cfg.get("features", 64)),
            window=window,
            preemph=None if preemph is None else float(preemph),
            normalize=str(normalize) if normalize else None,
            log=bool(cfg.get("log", True)),
            log_zero_guard_type=guard_type,
            log_zero_guard_value=float(guard),
            pad_to=int(pad_to),
            pad_value=float(cfg.get("pad_value", 0.0)),
            mag_power=float(cfg.get("mag_power", 2.0)),
            lowfreq=float(cfg.get("lowfreq", 0.0) or 0.0),
            highfreq=None if highfreq is None else float(highfreq),
        )

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def feature_lengths(self, num_samples: int) -> int:
        """Valid frames for ``num_samples`` samples (NeMo ``get_seq_len``, centred STFT)."""
        return (num_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length

    def padded_frames(self, num_samples: int) -> int:
        """Frames NeMo produces for one utterance of ``num_samples`` samples alone (STFT + pad_to)."""
        frames = num_samples // self.hop_length + 1
        if self.pad_to > 0:
            frames = -(-frames // self.pad_to) * self.pad_to
        return frames


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    mels = hz / f_sp
    above = hz >= min_log_hz
    mels[above] = min_log_mel + np.log(hz[above] / min_log_hz) / logstep
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    hz = f_sp * mels
    above = mels >= min_log_mel
    hz[above] = min_log_hz * np.exp(logstep * (mels[above] - min_log_mel))
    return hz


def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular mel filters on the Slaney mel scale, area-normalised ("slaney"): [n_mels, n_fft//2+1].

    Computed in float64 and returned as float32, as librosa.filters.mel (which NeMo uses) does.
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_edges = np.linspace(
        _hz_to_mel_slaney(np.array([fmin], dtype=np.float64))[0],
        _hz_to_mel_slaney(np.array([fmax], dtype=np.float64))[0],
        n_mels + 2,
    )
    hz_edges = _mel_to_hz_slaney(mel_edges)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
    return weights.astype(np.float32)


def dft_table(n_fft: int, win_length: int) -> np.ndarray:
    """cos/sin rows of the real DFT over the ``win_length`` window samples: [2 * n_freqs, win_length].

    The window sits centred in the n_fft frame (torch.stft pads it); the offset only changes the phase,
    which a power spectrum does not see, so the basis starts at the window's first sample.
    """
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)[:, None]
    n = np.arange(win_length, dtype=np.float64)[None, :]
    angle = 2.0 * np.pi * ((k * n) % n_fft) / n_fft  # reduce k*n first: exact angles for large k*n
    return np.concatenate([np.cos(angle), -np.sin(angle)], axis=0)


class Features(NamedTuple):
    feats: torch.Tensor  # [B, n_mels, T] float32, T a multiple of pad_to
    lengths: torch.Tensor  # [B] int64: valid frames
    padded_lengths: torch.Tensor  # [B] int64: frames NeMo would give each utterance alone


class MelFilterbankFeatures(nn.Module):
    """NeMo ``FilterbankFeatures`` (eval mode) with the STFT done as a convolution."""

    window: torch.Tensor
    fb: torch.Tensor
    dft_table: torch.Tensor
    stft_basis: torch.Tensor

    def __init__(self, settings: FeatureSettings) -> None:
        super().__init__()
        s = settings
        if s.win_length > s.n_fft:
            raise FrontEndConfigError(f"window {s.win_length} longer than n_fft {s.n_fft}")
        self.settings = s
        # Persistent, as in NeMo's state_dict; a checkpoint's own copies replace these on load.
        self.register_buffer("window", _WINDOWS[s.window](s.win_length, periodic=False, dtype=torch.float32))
        fb = slaney_mel_filterbank(s.sample_rate, s.n_fft, s.n_mels, s.lowfreq, s.highfreq)
        self.register_buffer("fb", torch.from_numpy(fb).unsqueeze(0))
        self.register_buffer(
            "dft_table", torch.from_numpy(dft_table(s.n_fft, s.win_length)), persistent=False
        )
        self.register_buffer("stft_basis", self._make_basis(), persistent=False)

    def _make_basis(self) -> torch.Tensor:
        # float64 product, rounded once: the conv kernel is window * DFT row.
        basis = self.dft_table.to(torch.float64) * self.window.to(torch.float64)[None, :]
        return basis.to(torch.float32).unsqueeze(1)  # [2F, 1, win_length]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.stft_basis = self._make_basis().to(self.window.device)  # the loaded window may differ

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> Features:
        s = self.settings
        audio = audio.to(torch.float32)
        num_samples = audio.shape[1]
        sample_index = torch.arange(num_samples, device=audio.device)
        valid_samples = sample_index.unsqueeze(0) < lengths.unsqueeze(1)
        x = audio
        if s.preemph is not None:
            x = torch.cat([x[:, :1], x[:, 1:] - s.preemph * x[:, :-1]], dim=1)
        x = torch.where(valid_samples, x, torch.zeros_like(x))

        # Centred STFT: frame t covers samples [t*hop - n_fft/2, t*hop + n_fft/2); the window occupies the
        # middle win_length of them. Zero padding gives exactly num_samples // hop + 1 frames.
        half = s.n_fft // 2
        left = half - (s.n_fft - s.win_length) // 2
        x = F.pad(x.unsqueeze(1), (left, s.win_length - left))  # -> num_samples // hop + 1 frames
        spec = F.conv1d(x, self.stft_basis, stride=s.hop_length)
        real, imag = spec[:, : s.n_freqs], spec[:, s.n_freqs :]
        power = real * real + imag * imag
        if s.mag_power != 2.0:
            power = torch.sqrt(power).pow(s.mag_power)
        mel = torch.matmul(self.fb, power)
        if s.log:
            if s.log_zero_guard_type == "add":
                mel = torch.log(mel + s.log_zero_guard_value)
            else:
                mel = torch.log(torch.clamp(mel, min=s.log_zero_guard_value))

        feat_lengths = torch.div(lengths + 2 * half - s.n_fft, s.hop_length, rounding_mode="trunc")
        feat_lengths = torch.clamp(feat_lengths, min=0)
        frame_index = torch.arange(mel.shape[2], device=mel.device)
        valid = (frame_index.unsqueeze(0) < feat_lengths.unsqueeze(1)).unsqueeze(1)  # [B, 1, T]
        if s.normalize == "per_feature":
            mel = _normalize_per_feature(mel, valid, feat_lengths)
        elif s.normalize == "all_features":
            mel = _normalize_all_features(mel, valid, feat_lengths)
        mel = torch.where(valid, mel, torch.full_like(mel, s.pad_value))
        if s.pad_to > 0:
            pad_amount = (s.pad_to - mel.shape[2] % s.pad_to) % s.pad_to
            mel = F.pad(mel, (0, pad_amount), value=s.pad_value)
            own_frames = torch.div(lengths, s.hop_length, rounding_mode="trunc") + 1
            padded_lengths = torch.div(own_frames + s.pad_to - 1, s.pad_to, rounding_mode="trunc") * s.pad_to
        else:
            padded_lengths = torch.div(lengths, s.hop_length, rounding_mode="trunc") + 1
        return Features(mel, feat_lengths, padded_lengths)


def _normalize_per_feature(x: torch.Tensor, valid: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
    count = n_valid.to(x.dtype).unsqueeze(1)  # [B, 1]
    zero = torch.zeros_like(x)
    mean = torch.where(valid, x, zero).sum(dim=2) / torch.clamp(count, min=1.0)
    centred = torch.where(valid, x - mean.unsqueeze(2), zero)
    # NeMo divides by (n - 1) and turns the 0/0 of a single frame into 0; clamping gives the same 0.
    var = (centred * centred).sum(dim=2) / torch.clamp(count - 1.0, min=1.0)
    std = torch.sqrt(var) + NORMALIZE_STD_EPS
    return (x - mean.unsqueeze(2)) / std.unsqueeze(2)


def _normalize_all_features(x: torch.Tensor, valid: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
    count = n_valid.to(x.dtype) * x.shape[1]  # [B]
    zero = torch.zeros_like(x)
    mean = torch.where(valid, x, zero).sum(dim=(1, 2)) / torch.clamp(count, min=1.0)
    centred = torch.where(valid, x - mean.view(-1, 1, 1), zero)
    std = torch.sqrt((centred * centred).sum(dim=(1, 2)) / torch.clamp(count - 1.0, min=1.0))
    std = std + NORMALIZE_STD_EPS
    return (x - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


class AudioToMelPreprocessor(nn.Module):
    """Holds the featurizer under NeMo's name (``preprocessor.featurizer.*`` in the state_dict)."""

    def __init__(self, settings: FeatureSettings) -> None:
        super().__init__()
        self.featurizer = MelFilterbankFeatures(settings)

    @property
    def settings(self) -> FeatureSettings:
        return self.featurizer.settings

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> Features:
        result: Features = self.featurizer(audio, lengths)
        return result
