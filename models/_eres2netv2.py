"""3D-Speaker's ERes2NetV2 (Chen et al., "ERes2NetV2: Boosting short-duration speaker verification performance
with computational efficiency", Interspeech 2024; speakerlab/models/eres2net/ERes2NetV2.py), the body that the
plugins ``ERes2NetV2`` and ``ERes2NetV2w24s4ep4`` build with the published configurations.

A 3x3 stem of ``m_channels`` (64), then four stages of bottleneck Res2Net blocks (3-4-6-3, strides 1-2-2-2): a
1x1 conv to ``scale`` groups of ``width = floor(planes * baseWidth / 64)`` channels, each group a 3x3 conv fed the
previous group's output added to its own input (stages 1-2) or fused with it by attentional feature fusion (AFF,
stages 3-4), a 1x1 conv to ``planes * expansion``, a residual shortcut. The third stage's output, downsampled by a
stride-2 3x3 conv, is fused into the fourth's by one more AFF ("bottom-up fusion"); temporal statistics pooling
(mean and standard deviation over time of every channel-frequency row) and one linear layer give the embedding.
The activation inside the blocks is 3D-Speaker's ``ReLU``, a ``Hardtanh(0, 20)``; the stem's is a plain ReLU.

Module and parameter names are 3D-Speaker's (``layer3.0.fuse_models.0.local_att.1.running_mean``, ``layer3_ds``,
``fuse34``, ``seg_1``), so its published state dicts load key for key into the network; the front end, which
3D-Speaker computes outside the model (80 Kaldi fbanks, utterance mean subtracted), is the model's ``frontend``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from spknet.errors import SpeakerNetError


def relu20(x: torch.Tensor) -> torch.Tensor:
    """3D-Speaker's ``ReLU``: ``Hardtanh(0, 20)``."""
    return F.hardtanh(x, 0.0, 20.0)


class AFF(nn.Module):
    """Attentional feature fusion of ``x`` and ``ds_y``: ``x * (1 + tanh(a)) + ds_y * (1 - tanh(a))`` with
    ``a`` a 1x1-conv bottleneck (``channels // r``, SiLU) over their concatenation."""

    def __init__(self, channels: int = 64, r: int = 4):
        super().__init__()
        inter_channels = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(channels * 2, inter_channels, kernel_size=1), nn.BatchNorm2d(inter_channels), nn.SiLU(),
            nn.Conv2d(inter_channels, channels, kernel_size=1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor, ds_y: torch.Tensor) -> torch.Tensor:
        weight = 1.0 + torch.tanh(self.local_att(torch.cat((x, ds_y), dim=1)))
        return x * weight + ds_y * (2.0 - weight)


class Block(nn.Module):
    """``BasicBlockERes2NetV2`` (``fuse=False``: the groups are added) and ``BasicBlockERes2NetV2AFF``
    (``fuse=True``: each group fused with the previous one's output by an AFF)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, base_width: int = 26, scale: int = 2,
                 expansion: int = 2, fuse: bool = False):
        super().__init__()
        width = int(math.floor(planes * (base_width / 64.0)))
        self.width, self.scale = width, scale
        self.conv1 = nn.Conv2d(in_planes, width * scale, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
                                   for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale))
        if fuse:
            self.fuse_models = nn.ModuleList(AFF(channels=width, r=4) for _ in range(scale - 1))
        self.fuse = fuse
        self.conv3 = nn.Conv2d(width * scale, planes * expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(expansion * planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(relu20(self.bn1(self.conv1(x))), self.width, 1)
        outs = []
        for i in range(self.scale):
            if i == 0:
                sp = groups[0]
            elif self.fuse:
                sp = self.fuse_models[i - 1](sp, groups[i])
            else:
                sp = sp + groups[i]
            sp = relu20(self.bns[i](self.convs[i](sp)))
            outs.append(sp)
        out = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        return relu20(out + self.shortcut(x))


class ERes2NetV2(nn.Module):
    """Features ``(batch, n_mels, frames)`` -> embeddings ``(batch, nOut)`` (:meth:`embed`); with a front end,
    waveforms ``(batch, samples)`` -> embeddings (``forward``)."""

    def __init__(self, nOut: int = 192, n_mels: int = 80, channels: int = 64, base_width: int = 26, scale: int = 2,
                 expansion: int = 2, layers=(3, 4, 6, 3), frontend: nn.Module | None = None):
        super().__init__()
        if n_mels < 8:
            raise SpeakerNetError(f"ERes2NetV2 needs at least 8 bands (three stride-2 stages), got n_mels {n_mels}")
        self.frontend = frontend
        self.in_planes, self.base_width, self.scale, self.expansion = channels, base_width, scale, expansion
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = self._make_layer(channels, layers[0], 1, fuse=False)
        self.layer2 = self._make_layer(channels * 2, layers[1], 2, fuse=False)
        self.layer3 = self._make_layer(channels * 4, layers[2], 2, fuse=True)
        self.layer4 = self._make_layer(channels * 8, layers[3], 2, fuse=True)
        self.layer3_ds = nn.Conv2d(channels * 4 * expansion, channels * 8 * expansion, kernel_size=3, padding=1,
                                   stride=2, bias=False)
        self.fuse34 = AFF(channels=channels * 8 * expansion, r=4)
        stats_dim = int(n_mels / 8) * channels * 8 * expansion
        self.seg_1 = nn.Linear(stats_dim * 2, nOut)

    def _make_layer(self, planes: int, blocks: int, stride: int, fuse: bool) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(Block(self.in_planes, planes, block_stride, self.base_width, self.scale, self.expansion,
                                fuse))
            self.in_planes = planes * self.expansion
        return nn.Sequential(*layers)

    @staticmethod
    def statistics(x: torch.Tensor) -> torch.Tensor:
        """3D-Speaker's TSTP of ``(batch, channels, freq, frames)``: the mean and the (unbiased) standard deviation
        over time, eps 1e-8 under the root."""
        return torch.cat((x.mean(dim=-1).flatten(1), torch.sqrt(torch.var(x, dim=-1) + 1e-8).flatten(1)), dim=1)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """3D-Speaker's ``forward`` on ``features.transpose(1, 2)``."""
        out = F.relu(self.bn1(self.conv1(features.unsqueeze(1))))
        out3 = self.layer3(self.layer2(self.layer1(out)))
        out4 = self.layer4(out3)
        return self.seg_1(self.statistics(self.fuse34(out4, self.layer3_ds(out3))))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.embed(self.frontend(waves))
