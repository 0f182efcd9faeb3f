"""Resemblyzer's GE2E speaker encoder as one exportable module: raw audio in, utterance embedding out.

``GE2EEmbedder.forward(audio [B, N] f32, lengths [B] i64) -> [B, 256] f32`` reproduces Resemblyzer 0.1.4's
``VoiceEncoder.embed_utterance(normalize_volume(wav, -30 dBFS, increase_only=True))`` for each row:

1. samples past ``lengths`` are zeroed (batch padding must not leak into frames or the volume);
2. volume normalisation as ``resemblyzer.audio.normalize_volume``: gain up to -30 dBFS RMS, never down.
   It matters here because the encoder sees *linear* mel power (Resemblyzer takes no log), so the input
   scale is the recording's loudness;
3. ``librosa.feature.melspectrogram`` (n_fft 400 = 25 ms, hop 160 = 10 ms, periodic Hann, centred with
   zero padding, power 2, 40 slaney mels, no log) as a strided Conv1d against a fixed DFT basis with the
   window folded in (the ONNX STFT op has no CUDA kernel in ONNX Runtime);
4. ``compute_partial_slices(rate=1.3, min_coverage=0.75)``: 160-frame windows every 77 frames. The window
   starts do not depend on the length, only how many are valid does, so the graph gathers the same windows
   for every row and masks per row;
5. LSTM(40, 256, 3 layers) over every window, last hidden state, Linear + ReLU, L2 norm; the mean of the
   valid windows, L2 norm.

Webrtcvad silence trimming (``trim_long_silences``) is not in the graph: see models/README.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from app.modeling.features import dft_table, slaney_mel_filterbank

# resemblyzer/hparams.py
SAMPLE_RATE = 16000
N_FFT = 400  # mel_window_length 25 ms
HOP = 160  # mel_window_step 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # partials_n_frames (1.6 s)
HIDDEN = 256
EMBEDDING_DIM = 256
NUM_LAYERS = 3
TARGET_DBFS = -30.0  # audio_norm_target_dBFS
# embed_utterance defaults
PARTIAL_RATE = 1.3
MIN_COVERAGE = 0.75
FRAME_STEP = round((SAMPLE_RATE / PARTIAL_RATE) / HOP)  # 77 frames between window starts
# Samples the last window needs to reach while it is still kept: it ends at most FRAME_STEP frames past the
# utterance's last frame, and a zeroed tail of one whole window covers that for every length.
TAIL_PAD = PARTIAL_FRAMES * HOP
# RMS floor for the volume gain: keeps digital silence finite (Resemblyzer itself would return NaN there).
MIN_RMS = 1e-6
NORM_EPS = 1e-12
TRAINING_ONLY_KEYS = frozenset({"similarity_weight", "similarity_bias"})


def window_counts(lengths: torch.Tensor) -> torch.Tensor:
    """How many partial windows ``compute_partial_slices`` keeps for utterances of ``lengths`` samples.

    Integer-exact transcription: n_frames = ceil((n + 1) / hop) = n // hop + 1; window starts
    0, 77, ... below max(1, n_frames - 160 + 77 + 1); the last window is dropped when it covers less than
    ``MIN_COVERAGE`` of its samples and it is not the only one.
    """
    # Operands are non-negative, so truncating division is floor division (and exports as a plain Div).
    lengths = torch.clamp(lengths, min=0)
    n_frames = torch.div(lengths, HOP, rounding_mode="trunc") + 1
    steps = torch.clamp(n_frames - PARTIAL_FRAMES + FRAME_STEP + 1, min=1)
    count = torch.div(steps + FRAME_STEP - 1, FRAME_STEP, rounding_mode="trunc")
    last_start = (count - 1) * FRAME_STEP * HOP
    # coverage < 0.75  <=>  (n - start) < 0.75 * 160 * 160 = 19200 samples (exact in integers)
    min_covered = int(MIN_COVERAGE * PARTIAL_FRAMES * HOP)
    drop = (lengths - last_start < min_covered) & (count > 1)
    return count - drop.to(count.dtype)


def mel_basis() -> np.ndarray:
    """``librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)``: slaney scale and norm, [40, 201].

    Computed without librosa, so exporting needs only the ``export`` extra; a test checks it against librosa.
    """
    return slaney_mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS)


def dft_kernel() -> np.ndarray:
    """[2 * (n_fft/2+1), 1, n_fft]: windowed cos rows then windowed -sin rows (real and imaginary parts)."""
    # librosa's get_window("hann", n_fft, fftbins=True): the periodic Hann window.
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    kernel = dft_table(N_FFT, N_FFT) * window
    return kernel[:, None, :].astype(np.float32)


class GE2EEmbedder(nn.Module):
    """Audio to Resemblyzer utterance embedding, batch- and padding-invariant (see module docstring)."""

    dft: torch.Tensor
    mel_fb: torch.Tensor
    window_offsets: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        # Names match Resemblyzer's VoiceEncoder, so its state dict loads as is.
        self.lstm = nn.LSTM(N_MELS, HIDDEN, NUM_LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING_DIM)
        self.register_buffer("dft", torch.from_numpy(dft_kernel()), persistent=False)
        # |X|^2 then mel in one matmul: [fb, fb] @ [re^2; im^2].
        fb = torch.from_numpy(mel_basis())
        self.register_buffer("mel_fb", torch.cat([fb, fb], dim=1), persistent=False)
        self.register_buffer("window_offsets", torch.arange(PARTIAL_FRAMES), persistent=False)

    def load_resemblyzer_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load ``pretrained.pt``'s ``model_state``: LSTM and linear weights, strictly.

        ``similarity_weight``/``similarity_bias`` are the GE2E loss's scale and offset, used only in training.
        """
        weights = {k: v for k, v in state.items() if k not in TRAINING_ONLY_KEYS}
        self.load_state_dict(weights, strict=True)

    def mel(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Volume-normalised linear mel power, [B, T, 40], with enough zero frames after every row."""
        # Dynamic arange over the sample axis (stays symbolic in the exported graph).
        positions = torch.cumsum(torch.ones_like(audio[:1], dtype=torch.int64), dim=1) - 1
        valid = positions < lengths[:, None]
        audio = torch.where(valid, audio, torch.zeros_like(audio))
        n = torch.clamp(lengths, min=1).to(audio.dtype)
        rms = torch.sqrt(torch.sum(audio * audio, dim=1) / n)
        gain = torch.clamp(10.0 ** (TARGET_DBFS / 20.0) / torch.clamp(rms, min=MIN_RMS), min=1.0)
        audio = audio * gain[:, None]
        # librosa center=True, pad_mode="constant": n_fft/2 zeros each side; plus the tail for last windows.
        padded = nn.functional.pad(audio[:, None, :], (N_FFT // 2, N_FFT // 2 + TAIL_PAD))
        spec = nn.functional.conv1d(padded, self.dft, stride=HOP)  # [B, 2 * 201, T]
        power = spec * spec
        mel = torch.matmul(self.mel_fb, power)  # [B, 40, T]
        return mel.transpose(1, 2)

    def partial_embeddings(self, windows: torch.Tensor) -> torch.Tensor:
        """VoiceEncoder.forward: [W, 160, 40] -> [W, 256], L2-normed."""
        _, (hidden, _) = self.lstm(windows)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / torch.clamp(torch.linalg.vector_norm(raw, dim=1, keepdim=True), min=NORM_EPS)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # A length past the padded width would ask for windows beyond the computed frames.
        width = torch.ones_like(audio[0], dtype=torch.int64).sum()  # N, symbolic in the trace; 0 for N = 0
        lengths = torch.clamp(torch.minimum(lengths, width), min=0)
        mel = self.mel(audio, lengths)
        counts = window_counts(lengths)  # [B]
        # Every row gets the batch's largest window count; rows with fewer mask the rest out.
        k = torch.max(counts)
        # A tensor end keeps the window count symbolic in the trace (an int would be baked in).
        starts = torch.arange(k, device=audio.device) * FRAME_STEP  # type: ignore[call-overload]
        index = starts[:, None] + self.window_offsets[None, :]  # [K, 160]
        windows = mel[:, index]  # [B, K, 160, 40]
        batch, n_windows = windows.shape[0], windows.shape[1]
        partials = self.partial_embeddings(windows.reshape(-1, PARTIAL_FRAMES, N_MELS))
        partials = partials.reshape(batch, n_windows, EMBEDDING_DIM)
        keep = starts[None, :] < counts[:, None] * FRAME_STEP  # [B, K]
        # where, not multiply: a masked window may be all zeros, whose partial is 0/0.
        partials = torch.where(keep[:, :, None], partials, torch.zeros_like(partials))
        mean = partials.sum(dim=1) / counts[:, None].to(partials.dtype)
        return mean / torch.clamp(torch.linalg.vector_norm(mean, dim=1, keepdim=True), min=NORM_EPS)
