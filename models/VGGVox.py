"""voxceleb_trainer's VGGVox (its models/VGGVox.py; VGG-M as in Nagrani et al., "VoxCeleb", 2017): five
convolutions with batch norm and max pooling over 40 log-mel bands, a (4 x 1) convolution that collapses the
frequency axis, then self-attentive pooling (SAP), or the average (TAP) or maximum (MAX) over the map, and a linear
embedding (4.03 M parameters with SAP and 512-d).

Parameter and buffer names are voxceleb_trainer's (``netcnn.N``, ``sap_linear``, ``attention``, ``fc``,
``torchfb``), so its checkpoints load key for key. Its front end (``logmel``, the default) is a mel spectrogram
without pre-emphasis (512-point FFT of 25-ms Hann windows every 10 ms, 0-8 kHz), ``log(x + 1e-6)``, and instance
norm; another feature front end replaces it. The defaults are voxceleb_trainer's command line's (512-d, SAP, 40
mels), with the log of the mel energies (its ``MainModel``'s default; its command line leaves it off unless
``--log_input``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from spknet.errors import SpeakerNetError, check_choice

from ._frontend import check_feature_frontend, make_frontend
from ._resnet_se import make_filterbank

ENCODERS = ("SAP", "TAP", "MAX")
# (output channels, kernel, stride, padding, max pooling after it as (kernel, stride) or None), in netcnn's order
LAYERS = (
    (96, (5, 7), (1, 2), (2, 2), ((1, 3), (1, 2))),
    (256, (5, 5), (2, 2), (1, 1), ((3, 3), (2, 2))),
    (384, (3, 3), (1, 1), (1, 1), None),
    (256, (3, 3), (1, 1), (1, 1), None),
    (256, (3, 3), (1, 1), (1, 1), ((3, 3), (2, 2))),
    (512, (4, 1), (1, 1), (0, 0), None),
)
CHANNELS = LAYERS[-1][0]


def output_size(size: int, axis: int) -> int:
    """The map's size along ``axis`` (0: frequency, 1: time) after netcnn, for an input of ``size``."""
    for _, kernel, stride, padding, pool in LAYERS:
        size = (size + 2 * padding[axis] - kernel[axis]) // stride[axis] + 1
        if pool is not None and size >= 1:
            size = (size - pool[0][axis]) // pool[1][axis] + 1
        if size < 1:
            return size
    return size


class VGGVox(nn.Module):
    """Waveform ``(batch, samples)`` at 16 kHz -> ``(batch, nOut)``."""

    def __init__(self, nOut: int = 512, encoder_type: str = "SAP", n_mels: int = 40, log_input: bool = True,
                 window: str = "hann", frontend: str = "logmel"):
        super().__init__()
        self.encoder_type = check_choice("encoder_type", encoder_type, ENCODERS)
        check_feature_frontend("VGGVox", frontend)
        rows = output_size(n_mels, 0)
        if rows < 1 or (encoder_type == "SAP" and rows != 1):
            fitting = [n for n in range(1, 200) if output_size(n, 0) == 1]
            raise SpeakerNetError(f"VGGVox with n_mels {n_mels} leaves {max(rows, 0)} frequency rows; "
                                  f"{'SAP needs one' if rows >= 1 else 'it needs at least one'} "
                                  f"(n_mels {fitting[0]} to {fitting[-1]})")
        modules, channels = [], 1
        for out, kernel, stride, padding, pool in LAYERS:
            modules += [nn.Conv2d(channels, out, kernel_size=kernel, stride=stride, padding=padding),
                        nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if pool is not None:
                modules.append(nn.MaxPool2d(kernel_size=pool[0], stride=pool[1]))
            channels = out
        self.netcnn = nn.Sequential(*modules)
        if encoder_type == "SAP":
            self.sap_linear = nn.Linear(CHANNELS, CHANNELS)
            self.attention = nn.Parameter(torch.empty(CHANNELS, 1))
            nn.init.xavier_normal_(self.attention)
        self.fc = nn.Linear(CHANNELS, nOut)
        self.log_input = log_input
        # registered last, as voxceleb_trainer's, so the state dict lists its keys in the same order
        if frontend == "logmel":
            self.torchfb = make_filterbank(n_mels, window)
            self.instancenorm = nn.InstanceNorm1d(n_mels)
        else:
            self.frontend = make_frontend(frontend, n_mels, window, log_input=log_input)
        # the shortest input (in frames) that leaves one frame after netcnn
        self.min_frames = next(frames for frames in range(1, 1000) if output_size(frames, 1) >= 1)
        # samples that give min_frames 10-ms frames with either framing (centred, or Kaldi's snipped 25-ms edges)
        self.min_samples = (self.min_frames - 1) * 160 + 400

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Every convolution and the BatchNorm right after it (spknet.folding)."""
        return [(f"netcnn.{index}", f"netcnn.{index + 1}") for index, module in enumerate(self.netcnn)
                if isinstance(module, nn.Conv2d)]

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        """``(batch, n_mels, frames)``: the instance-normalised log mel (or the front end's features), in float32,
        without gradient and outside autocast."""
        if not hasattr(self, "torchfb"):
            return self.frontend(waves)
        with torch.no_grad(), torch.autocast(device_type=waves.device.type, enabled=False):
            x = self.torchfb(waves.to(self.torchfb.spectrogram.window.dtype)) + 1e-6
            if self.log_input:
                x = x.log()
            return self.instancenorm(x)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = self.features(waves)
        if x.shape[-1] < self.min_frames:
            raise SpeakerNetError(f"VGGVox needs at least {self.min_frames} frames (10 ms each), got {x.shape[-1]}")
        x = self.netcnn(x.unsqueeze(1))                                 # (batch, 512, rows, frames)
        if self.encoder_type == "TAP":
            pooled = x.mean(dim=(2, 3))
        elif self.encoder_type == "MAX":
            pooled = x.amax(dim=(2, 3))
        else:
            # the linear layers as 1x1 convolutions over (batch, 512, frames): the same products, which
            # torch.export traces for one frame as for many (a matmul over (batch, frames, 512) is traced for two
            # frames or more only)
            x = x.squeeze(2)
            hidden = torch.tanh(F.conv1d(x, self.sap_linear.weight.unsqueeze(2), self.sap_linear.bias))
            weights = F.softmax(F.conv1d(hidden, self.attention.T.unsqueeze(2)), dim=2)    # (batch, 1, frames)
            pooled = torch.sum(x * weights, dim=2)
        return self.fc(pooled)


def MainModel(nOut: int = 512, encoder_type: str = "SAP", n_mels: int = 40, log_input: bool = True,
              window: str = "hann", frontend: str = "logmel", **kwargs):
    return VGGVox(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels, log_input=log_input, window=window,
                  frontend=frontend)
