"""voxceleb_trainer's RawNet3 (Jung et al., "Pushing the limits of raw waveform speaker recognition", Interspeech
2022; voxceleb_trainer's models/RawNet3.py and configs/RawNet3_AAM.yaml): the raw waveform, pre-emphasised and
instance-normalised, through a learnable analytic sinc filterbank, three Res2Net bottleneck blocks with alpha
feature-map scaling, channel- and context-dependent attentive statistics pooling, and a linear embedding (about
16.3 M parameters).

Parameter and buffer names are voxceleb_trainer's (its ``conv1.filterbank.*`` are asteroid-filterbanks'
``ParamSincFB`` inside an ``Encoder``), so its checkpoints load key for key, the published ``model.pt`` among them.
The options are those of voxceleb_trainer's ``MainModel`` and ``configs/RawNet3_AAM.yaml``: 256-d output, ECA
pooling (attention weights per channel; ``ASP``: one weight per frame), filterbank stride 10, log of the filter
magnitudes, their utterance mean subtracted, no batch norm on the embedding. ``channels`` is the blocks' width C
(1024: C/4 sinc filters), smaller for quick experiments. voxceleb_trainer reads float samples in [-1, 1] and wraps
short files; the instance norm of the waveform makes the network nearly indifferent to the sample scale.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from spknet.constants import SAMPLE_RATE
from spknet.errors import SpeakerNetError, check_choice

from ._frontend import PreEmphasis, make_frontend

ENCODERS = ("ECA", "ASP")
SINC_TAPS = 251                 # filter length: about 16 ms at 16 kHz
SINC_STRIDE = 10                # configs/RawNet3_AAM.yaml's sinc_stride (and voxceleb_trainer's default)
MIN_LOW_HZ = 50.0               # the cut-offs' floors (asteroid's ParamSincFB defaults, which RawNet3 leaves)
MIN_BAND_HZ = 50.0
INIT_LOW_HZ = 30.0              # the lowest initial cut-off
POOLED = 1536                   # layer4's output channels, whatever the width
ATTENTION_BOTTLENECK = 128
SCALE = 8                       # Res2Net scale of the blocks (voxceleb_trainer's model_scale)


def hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class AnalyticSincFilterbank(nn.Module):
    """Learnable band-pass filters parametrised by their cut-offs (SincNet, Ravanelli and Bengio 2018), in analytic
    pairs (Pariente et al. 2020): for each of the ``n_filters / 2`` bands [f1, f2] an even filter, the difference of
    two Hamming-windowed ideal low-pass filters,

        g[n] = (2 f2 sinc(2 pi f2 n / fs) - 2 f1 sinc(2 pi f1 n / fs)) w[n] / (2 (f2 - f1)),  sinc(x) = sin(x) / x,

    and an odd one, its Hilbert transform, ``(cos(2 pi f1 n / fs) - cos(2 pi f2 n / fs)) / (pi n / fs) w[n]`` over
    the same ``2 (f2 - f1)``, for n = -K/2 ... K/2. The even filters come first, then the odd ones.

    The cut-offs are f1 = 50 + |low_hz_| and f2 = clamp(f1 + 50 + |band_hz_|, 50, fs / 2) Hz; they start equally
    spaced on the mel scale from 30 Hz. ``window_`` (the left half of the symmetric Hamming window) and ``n_``
    (2 pi n / fs for n < 0) are buffers, as in voxceleb_trainer's checkpoints."""

    def __init__(self, n_filters: int, kernel_size: int = SINC_TAPS, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        if n_filters < 2 or n_filters % 2 or kernel_size % 2 == 0:
            raise SpeakerNetError(f"a sinc filterbank needs an even number of filters and an odd length, got "
                                  f"{n_filters} filters of {kernel_size} taps")
        self.sample_rate = float(sample_rate)
        bands = n_filters // 2
        top = self.sample_rate / 2 - (MIN_LOW_HZ + MIN_BAND_HZ)
        edges = mel_to_hz(torch.linspace(hz_to_mel(INIT_LOW_HZ), hz_to_mel(top), bands + 1, dtype=torch.float64))
        self.low_hz_ = nn.Parameter(edges[:-1].float().unsqueeze(1))
        self.band_hz_ = nn.Parameter((edges[1:] - edges[:-1]).float().unsqueeze(1))
        half = kernel_size // 2
        window = torch.hamming_window(kernel_size, periodic=False, dtype=torch.float64)
        self.register_buffer("window_", window[:half].float())
        angular = 2 * math.pi * torch.arange(-half, 0, dtype=torch.float64) / self.sample_rate
        self.register_buffer("n_", angular.float().unsqueeze(0))

    def cutoffs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The bands' low and high cut-offs in Hz, ``(n_filters / 2, 1)`` each."""
        low = MIN_LOW_HZ + self.low_hz_.abs()
        high = (low + MIN_BAND_HZ + self.band_hz_.abs()).clamp(MIN_LOW_HZ, self.sample_rate / 2)
        return low, high

    def filters(self) -> torch.Tensor:
        """``(n_filters, 1, kernel_size)``: the even filters, then the odd ones."""
        low, high = self.cutoffs()
        width = high - low
        omega_low, omega_high = low * self.n_, high * self.n_          # 2 pi f n / fs, for n < 0
        denominator = self.n_ / 2                                       # pi n / fs
        # the left halves (n < 0); the even filters mirror them, the odd ones mirror and negate them
        even = (omega_high.sin() - omega_low.sin()) / denominator * self.window_
        odd = (omega_low.cos() - omega_high.cos()) / denominator * self.window_
        even = torch.cat((even, 2 * width, even.flip(1)), dim=1)
        odd = torch.cat((odd, torch.zeros_like(width), -odd.flip(1)), dim=1)
        return (torch.cat((even, odd), dim=0) / (2 * width).repeat(2, 1)).unsqueeze(1)


class SincConv(nn.Module):
    """The filterbank as a strided convolution of the waveform ``(batch, 1, samples)`` (no padding)."""

    def __init__(self, n_filters: int, stride: int = SINC_STRIDE, kernel_size: int = SINC_TAPS):
        super().__init__()
        self.filterbank = AnalyticSincFilterbank(n_filters, kernel_size)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.filterbank.filters().to(x.dtype), stride=self.stride)


class MaxPool(nn.Module):
    """Max pooling over time by ``size`` frames without overlap, as ``nn.MaxPool1d(size)``; computed as a 2-D
    pooling, which torch.export traces for any length (the 1-D kernel's export fixes the length it was traced
    with)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x.unsqueeze(2), (1, self.size)).squeeze(2)


class AFMS(nn.Module):
    """Alpha feature-map scaling (RawNet2): ``(x + alpha) * sigmoid(fc(mean over time of x))`` per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc(x.mean(dim=2))).unsqueeze(2)
        return (x + self.alpha) * scale


class Bottle2neck(nn.Module):
    """A Res2Net block on 1-D features: 1x1 conv, ``scale - 1`` hierarchical dilated 3-tap convs (each group fed
    the previous group's output plus its own split; the last split passes through), 1x1 conv, every conv followed
    by ReLU then BN; the residual (a 1x1 conv without bias when the width changes), optional max pooling, AFMS."""

    def __init__(self, inplanes: int, planes: int, dilation: int, scale: int = SCALE, pool: int = 0):
        super().__init__()
        width = planes // scale
        self.width, self.groups = width, scale - 1
        self.conv1 = nn.Conv1d(inplanes, width * scale, kernel_size=1)
        self.bn1 = nn.BatchNorm1d(width * scale)
        self.convs = nn.ModuleList(nn.Conv1d(width, width, kernel_size=3, dilation=dilation, padding=dilation)
                                   for _ in range(self.groups))
        self.bns = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(self.groups))
        self.conv3 = nn.Conv1d(width * scale, planes, kernel_size=1)
        self.bn3 = nn.BatchNorm1d(planes)
        self.relu = nn.ReLU()
        self.mp = MaxPool(pool) if pool else None
        self.afms = AFMS(planes)
        self.residual = nn.Identity() if inplanes == planes else \
            nn.Sequential(nn.Conv1d(inplanes, planes, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.residual(x)
        splits = torch.split(self.bn1(self.relu(self.conv1(x))), self.width, dim=1)
        outputs, carried = [], None
        for index, (conv, norm) in enumerate(zip(self.convs, self.bns)):
            carried = splits[index] if carried is None else carried + splits[index]
            carried = norm(self.relu(conv(carried)))
            outputs.append(carried)
        outputs.append(splits[self.groups])
        out = self.bn3(self.relu(self.conv3(torch.cat(outputs, dim=1)))) + residual
        if self.mp is not None:
            out = self.mp(out)
        return self.afms(out)


class RawNet3(nn.Module):
    """Waveform ``(batch, samples)`` at 16 kHz -> ``(batch, nOut)``. The layer names are voxceleb_trainer's."""

    def __init__(self, nOut: int = 256, encoder_type: str = "ECA", channels: int = 1024, log_sinc: bool = True,
                 sinc_stride: int = SINC_STRIDE):
        super().__init__()
        self.encoder_type = check_choice("encoder_type", encoder_type, ENCODERS)
        if channels < SCALE or channels % SCALE:
            raise SpeakerNetError(f"RawNet3's channels must be a positive multiple of {SCALE}, got {channels}")
        self.log_sinc = log_sinc
        self.frontend = make_frontend("waveform", 0)
        self.preprocess = nn.Sequential(PreEmphasis(), nn.InstanceNorm1d(1, eps=1e-4, affine=True))
        self.conv1 = SincConv(channels // 4, sinc_stride)
        self.relu = nn.ReLU()
        # voxceleb_trainer's bn1 and bn6 are in its checkpoints but unused by its forward (out_bn False): kept for
        # the layout, frozen so that DistributedDataParallel does not wait for their gradients
        self.bn1 = nn.BatchNorm1d(channels // 4)
        self.layer1 = Bottle2neck(channels // 4, channels, dilation=2, pool=5)
        self.layer2 = Bottle2neck(channels, channels, dilation=3, pool=3)
        self.layer3 = Bottle2neck(channels, channels, dilation=4)
        self.layer4 = nn.Conv1d(3 * channels, POOLED, kernel_size=1)
        self.attention = nn.Sequential(
            nn.Conv1d(3 * POOLED, ATTENTION_BOTTLENECK, kernel_size=1), nn.ReLU(),
            nn.BatchNorm1d(ATTENTION_BOTTLENECK),
            nn.Conv1d(ATTENTION_BOTTLENECK, POOLED if encoder_type == "ECA" else 1, kernel_size=1), nn.Softmax(dim=2))
        self.bn5 = nn.BatchNorm1d(2 * POOLED)
        self.fc6 = nn.Linear(2 * POOLED, nOut)
        self.bn6 = nn.BatchNorm1d(nOut)
        self.mp3 = MaxPool(3)
        self.bn1.requires_grad_(False)
        self.bn6.requires_grad_(False)
        # the shortest input with two frames at the pooling (one frame has no standard deviation)
        self.min_samples = SINC_TAPS + sinc_stride * (2 * 5 * 3 - 1)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """None: every BatchNorm follows a ReLU (or the pooling), so there is nothing to fold (spknet.folding)."""
        return []

    def sinc_features(self, waves: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, channels / 4, frames)``: the log magnitudes of the filterbank's outputs
        with their utterance mean subtracted, computed in float32 outside autocast (with gradient: the cut-offs
        learn)."""
        if waves.shape[-1] < self.min_samples:
            raise SpeakerNetError(f"RawNet3 needs at least {self.min_samples} samples "
                                  f"({self.min_samples / SAMPLE_RATE:.3f} s), got {waves.shape[-1]}")
        with torch.autocast(device_type=waves.device.type, enabled=False):
            x = self.frontend(waves).to(self.fc6.weight.dtype)
            x = self.preprocess[1](self.preprocess[0](x).unsqueeze(1))
            x = self.conv1(x).abs()
            if self.log_sinc:
                x = torch.log(x + 1e-6)
            return x - x.mean(dim=-1, keepdim=True)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = self.sinc_features(waves)
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(self.mp3(x1) + x2)
        x = self.relu(self.layer4(torch.cat((self.mp3(x1), x2, x3), dim=1)))
        frames = x.shape[-1]
        mean = x.mean(dim=2, keepdim=True)
        std = x.var(dim=2, keepdim=True).clamp(min=1e-4, max=1e4).sqrt()
        weights = self.attention(torch.cat((x, mean.expand(-1, -1, frames), std.expand(-1, -1, frames)), dim=1))
        mu = torch.sum(x * weights, dim=2)
        sigma = (torch.sum(x * x * weights, dim=2) - mu * mu).clamp(min=1e-4, max=1e4).sqrt()
        return self.fc6(self.bn5(torch.cat((mu, sigma), dim=1)))


def MainModel(nOut: int = 256, encoder_type: str = "ECA", log_input: bool = True, channels: int = 1024,
              frontend: str = "waveform", **kwargs):
    """``log_input``: the log of the filter magnitudes (voxceleb_trainer's ``log_sinc``, True in its RawNet3)."""
    if frontend != "waveform":
        raise SpeakerNetError(f"RawNet3 takes the raw waveform (its sinc filterbank is its front end): frontend "
                              f"must be waveform, not {frontend!r}")
    return RawNet3(nOut=nOut, encoder_type=encoder_type, channels=channels, log_sinc=log_input)
