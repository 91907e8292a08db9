"""The front ends: what turns a batch of 16-kHz waveforms into a network's input, inside the model.

Every network takes waveforms ``(batch, samples)`` at 16 kHz, in the scale the input pipeline gives
(``--audio_scale``: ``int16``, the default, samples in [-32768, 32767]; ``float``, samples in [-1, 1]), and its
front end (the model spec's ``frontend``, recorded in the checkpoint) is one of :data:`FRONTENDS`:

``logmel``
    voxceleb_trainer's log-mel (the original's for ResNetSE34L): pre-emphasis 0.97, a 512-point FFT mel
    spectrogram of 25-ms windows every 10 ms (torchaudio's mel scale, 0-8 kHz), ``log(x + 1e-6)``, then instance
    or mean normalisation. The existing networks keep their own layout of it (``torchfb``), so their checkpoints
    load key for key and compute what they always computed. Defined on either scale: the networks trained on it
    recorded theirs (the original's int16, voxceleb_trainer's float).
``kaldi_fbank``
    Kaldi's fbank as ``torchaudio.compliance.kaldi.fbank`` computes it with WeSpeaker's and 3D-Speaker's options
    (25-ms frames every 10 ms with snip_edges, per-frame DC removal, pre-emphasis 0.97, a symmetric window: Kaldi's
    ``hamming`` (WeSpeaker), ``povey`` (3D-Speaker) or ``hanning`` (``hann`` here), a 512-point power spectrum,
    Kaldi's mel banks from 20 Hz to 8 kHz, ``log(max(x, float32 eps))``, no energy), then the utterance mean of each
    bin subtracted: batched, one FFT for the whole batch. It is computed on the samples as given: WeSpeaker scales
    float waveforms by ``1 << 15`` before its fbank, which is what ``--audio_scale int16`` gives, so a WeSpeaker
    model is imported with ``audio_scale int16``; 3D-Speaker's inference (``speakerlab/bin/infer_sv.py``) feeds
    float waveforms in [-1, 1], so ``audio_scale float`` there. The scale changes the features only through the
    ``eps`` floor (the mean subtraction removes the constant ``2 log 32768``) and through the dither.
    Dither, as Kaldi: Gaussian noise of standard deviation ``dither`` (1.0 by default, WeSpeaker's training value)
    in int16 steps is added to every frame *in training mode only* (``module.training``); in eval mode, as
    WeSpeaker and 3D-Speaker evaluate with ``dither=0``, there is none, so embeddings are deterministic. One int16
    step is 1 input unit when the input is int16-scale and 1/32768 when it is ``float``: ``spknet.model.SpeakerNet``
    tells the network its ``audio_scale`` when it builds it (:func:`set_audio_scale`); a network built otherwise
    and fed float input must be told, or its training dither is 32768 times too large. The scale changes the
    features through the floor: digital silence and the lowest bins, which pre-emphasis all but empties, reach it
    with float input and not with int16 input, so an import must give each toolkit its own scale.
``speechbrain_fbank``
    SpeechBrain's ``speechbrain.lobes.features.Fbank(n_mels=80)`` followed by
    ``InputNormalization(norm_type="sentence", std_norm=False)``, as its ECAPA-TDNN ``hyperparams.yaml`` uses them,
    re-implemented here (SpeechBrain is never imported): a centred, zero-padded STFT (400-point FFT, periodic
    Hamming window of 400 samples: SpeechBrain's, another ``window`` is honoured; hop 160), the power spectrum,
    SpeechBrain's triangular filters on the 2595 log10 mel scale from 0 to 8 kHz, ``10 log10(max(x, 1e-10))``,
    clamped at 80 dB below *the utterance's* maximum (SpeechBrain 1.x takes the maximum per utterance,
    ``amax(dim=(-2, -1))``; SpeechBrain 0.5 took one over the whole batch: the two agree whenever an utterance is
    embedded alone, as SpeechBrain's ``encode_batch`` of one file does), then the utterance mean of each band
    subtracted. SpeechBrain's models take float waveforms in [-1, 1]: import them with ``audio_scale float`` (the
    features depend on the scale only through the 1e-10 floor and the 80-dB clamp, which is relative). No dither.
``waveform``
    The samples, unchanged, for the raw-waveform networks (RawNet3), which bring their own filters.

Every feature front end returns ``(batch, n_mels, frames)`` in float32 (float64 for a ``.double()`` model), without
gradient and outside any autocast region (it has no trained parameters). The banks and windows of ``kaldi_fbank`` and
``speechbrain_fbank`` are non-persistent buffers: the front end is rebuilt from the spec, and a checkpoint holds the
network's weights only.
"""

import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from spknet.constants import SAMPLE_RATE
from spknet.errors import SpeakerNetError, check_choice

FRONTENDS = ("logmel", "kaldi_fbank", "speechbrain_fbank", "waveform")
FEATURE_FRONTENDS = FRONTENDS[:3]       # those giving (batch, n_mels, frames): what a feature network takes


def povey_window(length: int, periodic: bool = False, **kwargs) -> torch.Tensor:
    """Kaldi's ``povey`` window: a symmetric Hann window to the power 0.85 (zero at both ends)."""
    return torch.hann_window(length, periodic=False, **kwargs).pow(0.85)


WINDOWS = {"hann": torch.hann_window, "hamming": torch.hamming_window, "povey": povey_window}
NORMALISATIONS = ("instance", "mean")
INT16_STEP = {"int16": 1.0, "float": 1.0 / 32768}       # one int16 step in the input's units, per --audio_scale

# Kaldi's (and torchaudio.compliance.kaldi's) framing and bank options, as WeSpeaker and 3D-Speaker leave them
KALDI_FRAME = 400                # 25 ms at 16 kHz
KALDI_SHIFT = 160                # 10 ms
KALDI_FFT = 512                  # the frame zero-padded to the next power of two
KALDI_LOW_FREQ = 20.0
KALDI_PREEMPHASIS = 0.97
KALDI_EPSILON = torch.finfo(torch.float32).eps      # numeric_limits<float>::epsilon(), Kaldi's floor of the log
KALDI_WINDOWS = {"hamming": "hamming", "hann": "hanning", "povey": "povey"}
# SpeechBrain's Fbank defaults (speechbrain/lobes/features.py, speechbrain/processing/features.py)
SB_FFT = 400
SB_HOP = 160
SB_AMIN = 1e-10
SB_TOP_DB = 80.0


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
    check_n_mels(n_mels)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=512, win_length=400, hop_length=160,
                                               window_fn=window_function(window), n_mels=n_mels)
    return nn.Sequential(PreEmphasis(), mel)


def check_n_mels(n_mels: int) -> None:
    if n_mels < 1:
        raise SpeakerNetError(f"n_mels must be at least 1, got {n_mels}")


def log_mel(torchfb: nn.Module, waves: torch.Tensor, log_input: bool, normalisation: str) -> torch.Tensor:
    """``(batch, samples)`` -> ``(batch, n_mels, frames)`` features, in float32 and without gradient (the front end
    has no trained parameters), outside any autocast region as voxceleb_trainer computes them.

    ``instance``: each band normalised to zero mean and unit variance over the utterance (ResNetSE34V2's
    ``InstanceNorm1d``); ``mean``: the utterance mean of each band subtracted only (the cepstral mean
    normalisation of ECAPA-TDNN)."""
    with torch.no_grad(), torch.autocast(device_type=waves.device.type, enabled=False):
        dtype = torchfb[1].spectrogram.window.dtype                  # float32 unless the model is .double()
        x = torchfb(waves.to(dtype)) + 1e-6
        if log_input:
            x = x.log()
        if normalisation == "instance":
            return F.instance_norm(x)
        return x - x.mean(dim=-1, keepdim=True)


class LogMel(nn.Module):
    """The ``logmel`` front end for a new network: voxceleb_trainer's ``torchfb`` and :func:`log_mel` (keys
    ``torchfb.0.flipped_filter``, ``torchfb.1.spectrogram.window``, ``torchfb.1.mel_scale.fb`` under this
    module's name)."""

    def __init__(self, n_mels: int, window: str = "hamming", log_input: bool = True, normalisation: str = "mean"):
        super().__init__()
        self.torchfb = pre_emphasised_filterbank(n_mels, window)
        self.log_input = log_input
        self.normalisation = check_choice("normalisation", normalisation, NORMALISATIONS)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return log_mel(self.torchfb, waves, self.log_input, self.normalisation)


def kaldi_mel_banks(n_mels: int, n_fft: int = KALDI_FFT, sample_rate: int = SAMPLE_RATE,
                    low_freq: float = KALDI_LOW_FREQ) -> torch.Tensor:
    """Kaldi's triangular mel banks ``(n_fft // 2 + 1, n_mels)`` (``MelBanks``; torchaudio's ``get_mel_banks``
    with its right column of zeros, no VTLN): equally spaced on ``1127 ln(1 + f / 700)`` from ``low_freq`` to
    the Nyquist frequency, over the FFT bins' centres. In float32 with torchaudio's operations (Kaldi's are in
    float too), so the matrix is torchaudio's to the bit: float64 banks would differ by 1e-5, enough to move the
    log of the lowest, pre-emphasis-attenuated bins by 1e-4."""
    def mel(freq: float) -> float:
        return 1127.0 * math.log(1.0 + freq / 700.0)

    low = mel(low_freq)
    delta = (mel(sample_rate / 2) - low) / (n_mels + 1)
    index = torch.arange(n_mels).unsqueeze(1)
    left, centre, right = low + index * delta, low + (index + 1.0) * delta, low + (index + 2.0) * delta
    bins = (1127.0 * (1.0 + (sample_rate / n_fft) * torch.arange(n_fft // 2) / 700.0).log()).unsqueeze(0)
    banks = torch.max(torch.zeros(1), torch.min((bins - left) / (centre - left), (right - bins) / (right - centre)))
    return F.pad(banks, (0, 1)).T.contiguous()


class KaldiFbank(nn.Module):
    """``kaldi_fbank``: batched Kaldi fbanks (see the module's docstring), the utterance mean of each bin subtracted.

    ``dither`` is Kaldi's, in int16 steps, and applies in training mode only; ``int16_step`` is one int16 step in
    the input's units (1.0 for ``--audio_scale int16``; :func:`set_audio_scale` sets it)."""

    def __init__(self, n_mels: int, window: str = "hamming", dither: float = 1.0, mean_norm: bool = True):
        super().__init__()
        check_n_mels(n_mels)
        self.window_type = KALDI_WINDOWS[check_choice("window", window, KALDI_WINDOWS)]
        self.dither = float(dither)
        self.int16_step = 1.0
        self.mean_norm = mean_norm
        if window == "hamming":         # Kaldi's windows are symmetric; computed in float32 as torchaudio does
            frame_window = torch.hamming_window(KALDI_FRAME, periodic=False, alpha=0.54, beta=0.46)
        else:
            frame_window = WINDOWS[window](KALDI_FRAME, periodic=False)
        self.register_buffer("window", frame_window, persistent=False)
        self.register_buffer("banks", kaldi_mel_banks(n_mels), persistent=False)

    def extra_repr(self) -> str:
        return f"window={self.window_type}, dither={self.dither}, bins={self.banks.shape[1]}"

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=waves.device.type, enabled=False):
            x = waves.to(self.window.dtype)
            if x.shape[-1] < KALDI_FRAME:
                raise SpeakerNetError(f"kaldi_fbank needs at least {KALDI_FRAME} samples (25 ms), got "
                                      f"{x.shape[-1]}")
            frames = x.unfold(-1, KALDI_FRAME, KALDI_SHIFT)                  # (batch, frames, 400), snip_edges
            if self.training and self.dither != 0.0:
                frames = frames + torch.randn_like(frames) * (self.dither * self.int16_step)
            frames = frames - frames.mean(dim=-1, keepdim=True)              # remove_dc_offset
            previous = torch.cat((frames[..., :1], frames[..., :-1]), dim=-1)
            frames = (frames - KALDI_PREEMPHASIS * previous) * self.window
            spectrum = torch.fft.rfft(frames, n=KALDI_FFT).abs().pow(2.0)   # (batch, frames, 257)
            features = torch.matmul(spectrum, self.banks).clamp(min=KALDI_EPSILON).log()
            if self.mean_norm:
                features = features - features.mean(dim=1, keepdim=True)
            return features.transpose(1, 2)


def speechbrain_filters(n_mels: int, n_fft: int = SB_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """SpeechBrain's triangular filters ``(n_fft // 2 + 1, n_mels)`` (``Filterbank._triangular_filters``): centres
    equally spaced on ``2595 log10(1 + f / 700)`` from 0 Hz to the Nyquist frequency, each filter reaching zero at
    its neighbours' centres on the Hz axis, over ``linspace(0, sample_rate // 2, n_fft // 2 + 1)``. Computed in
    float32 with SpeechBrain's operations, so the matrix is SpeechBrain's to the bit."""
    mel = torch.linspace(2595 * math.log10(1 + 0 / 700), 2595 * math.log10(1 + (sample_rate // 2) / 700),
                         n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band, centre = (hz[1:] - hz[:-1])[:-1], hz[1:-1]
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1).repeat(n_mels, 1)
    centre_mat = centre.repeat(freqs.shape[1], 1).transpose(0, 1)
    band_mat = band.repeat(freqs.shape[1], 1).transpose(0, 1)
    slope = (freqs - centre_mat) / band_mat
    return torch.max(torch.zeros(1), torch.min(slope + 1.0, -slope + 1.0)).transpose(0, 1).contiguous()


class SpeechBrainFbank(nn.Module):
    """``speechbrain_fbank``: SpeechBrain's ``Fbank`` and sentence mean normalisation (see the module's
    docstring)."""

    def __init__(self, n_mels: int, window: str = "hamming", mean_norm: bool = True):
        super().__init__()
        check_n_mels(n_mels)
        self.mean_norm = mean_norm
        self.register_buffer("window", window_function(window)(SB_FFT), persistent=False)
        self.register_buffer("filters", speechbrain_filters(n_mels), persistent=False)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=waves.device.type, enabled=False):
            x = waves.to(self.window.dtype)
            stft = torch.stft(x, SB_FFT, SB_HOP, SB_FFT, self.window, center=True, pad_mode="constant",
                              normalized=False, onesided=True, return_complex=True)
            power = torch.view_as_real(stft).pow(2).sum(-1).transpose(1, 2)   # (batch, frames, 201)
            features = 10 * torch.log10(torch.matmul(power, self.filters).clamp(min=SB_AMIN))
            floor = features.amax(dim=(-2, -1), keepdim=True) - SB_TOP_DB    # per utterance (SpeechBrain 1.x)
            features = torch.max(features, floor)
            if self.mean_norm:
                features = features - features.mean(dim=1, keepdim=True)
            return features.transpose(1, 2)


class Waveform(nn.Module):
    """``waveform``: the samples unchanged, for networks that bring their own filters (RawNet3)."""

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return waves


def make_frontend(name: str, n_mels: int, window: str = "hamming", *, log_input: bool = True,
                  normalisation: str = "mean", dither: float = 1.0) -> nn.Module:
    """The front end ``name`` (one of :data:`FRONTENDS`): a module from waveforms ``(batch, samples)`` at 16 kHz,
    in the pipeline's scale (module docstring), to features ``(batch, n_mels, frames)`` in float32, without gradient
    and outside autocast; for ``waveform``, the ``(batch, samples)`` input unchanged.

    ``window``: ``hamming`` (default), ``hann`` or ``povey``; ``logmel`` uses it as torchaudio does (periodic),
    ``kaldi_fbank`` as Kaldi does (symmetric: WeSpeaker's ``hamming``, 3D-Speaker's ``povey``), ``speechbrain_fbank``
    as SpeechBrain does (periodic; SpeechBrain's own is ``hamming``). ``log_input`` and ``normalisation``
    (``mean`` or ``instance``) are ``logmel``'s; the other front ends are always logarithmic and mean-normalised.
    ``dither``: ``kaldi_fbank``'s, in int16 steps, training mode only."""
    check_choice("frontend", name, FRONTENDS)
    if name == "logmel":
        return LogMel(n_mels, window, log_input, normalisation)
    if not log_input:
        raise SpeakerNetError(f"log_input False applies to the logmel front end only; {name} is always logarithmic")
    if name == "kaldi_fbank":
        return KaldiFbank(n_mels, window, dither)
    if name == "speechbrain_fbank":
        return SpeechBrainFbank(n_mels, window)
    return Waveform()


def check_feature_frontend(network: str, frontend: str) -> str:
    """``frontend`` when it gives features (a network on 2-D or 1-D features cannot take ``waveform``)."""
    check_choice("frontend", frontend, FRONTENDS)
    if frontend not in FEATURE_FRONTENDS:
        raise SpeakerNetError(f"network {network} takes features, not frontend {frontend!r} (raw waveform "
                              f"networks only); choose {' or '.join(FEATURE_FRONTENDS)}")
    return frontend


def set_audio_scale(network: nn.Module, audio_scale: str) -> nn.Module:
    """Tell every ``kaldi_fbank`` front end inside ``network`` the scale of its input (``--audio_scale``), so that
    its training dither is one int16 step whatever the scale; returns ``network``."""
    step = INT16_STEP[check_choice("audio_scale", audio_scale, INT16_STEP)]
    for module in network.modules():
        if isinstance(module, KaldiFbank):
            module.int16_step = step
    return network
