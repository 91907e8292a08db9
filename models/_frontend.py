"""The log-mel front end of the newer networks (ResNetSE34V2, ECAPA_TDNN, ResNet34): pre-emphasis, mel
spectrogram, log, per-utterance normalisation, all inside the model so that it takes raw waveforms.

The layout is voxceleb_trainer's (``torchfb`` = ``nn.Sequential(PreEmphasis, MelSpectrogram)``, so the keys are
``torchfb.0.flipped_filter``, ``torchfb.1.spectrogram.window`` and ``torchfb.1.mel_scale.fb``): its ResNetSE34V2
checkpoints load key for key, and the other networks share the same front end.
"""

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from spknet.constants import SAMPLE_RATE
from spknet.errors import SpeakerNetError, check_choice

WINDOWS = {"hann": torch.hann_window, "hamming": torch.hamming_window}
NORMALISATIONS = ("instance", "mean")


class PreEmphasis(nn.Module):
    """``y[n] = x[n] - coef * x[n - 1]``, with ``x[-1] = x[1]`` (reflect padding), as voxceleb_trainer does it.

    The filter is a buffer ``flipped_filter`` of shape (1, 1, 2) holding ``[-coef, 1]``, as in voxceleb_trainer's
    checkpoints, so a loaded checkpoint keeps its own coefficient."""

    def __init__(self, coef: float = 0.97):
        super().__init__()
        self.register_buffer("flipped_filter", torch.tensor([[[-coef, 1.0]]]))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        padded = F.pad(waves.unsqueeze(1), (1, 0), mode="reflect")
        return F.conv1d(padded, self.flipped_filter.to(waves.dtype)).squeeze(1)


def window_function(window: str):
    return WINDOWS[check_choice("window", window, WINDOWS)]


def pre_emphasised_filterbank(n_mels: int, window: str = "hamming") -> nn.Sequential:
    """voxceleb_trainer's ``torchfb``: pre-emphasis 0.97, then a 512-point FFT mel spectrogram of 25-ms windows
    every 10 ms from 0 to 8 kHz (torchaudio's defaults for the band edges, as voxceleb_trainer leaves them)."""
    if n_mels < 1:
        raise SpeakerNetError(f"n_mels must be at least 1, got {n_mels}")
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=512, win_length=400, hop_length=160,
                                               window_fn=window_function(window), n_mels=n_mels)
    return nn.Sequential(PreEmphasis(), mel)


def log_mel(torchfb: nn.Module, waves: torch.Tensor, log_input: bool, normalisation: str) -> torch.Tensor:
    """``(batch, samples)`` -> ``(batch, n_mels, frames)`` features, in float32 and without gradient (the front end
    has no trained parameters), outside any autocast region as voxceleb_trainer computes them.

    ``instance``: each band normalised to zero mean and unit variance over the utterance (ResNetSE34V2's
    ``InstanceNorm1d``); ``mean``: the utterance mean of each band subtracted only (the cepstral mean
    normalisation of ECAPA-TDNN and of WeSpeaker's Kaldi fbanks)."""
    with torch.no_grad(), torch.autocast(device_type=waves.device.type, enabled=False):
        dtype = torchfb[1].spectrogram.window.dtype                  # float32 unless the model is .double()
        x = torchfb(waves.to(dtype)) + 1e-6
        if log_input:
            x = x.log()
        if normalisation == "instance":
            return F.instance_norm(x)
        return x - x.mean(dim=-1, keepdim=True)
