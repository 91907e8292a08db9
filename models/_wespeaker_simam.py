"""WeSpeaker's SimAM-ResNets (wespeaker/models/samresnet.py: ResNets whose blocks end in SimAM, Yang et al., "SimAM:
A Simple, Parameter-Free Attention Module for Convolutional Neural Networks", ICML 2021; WeSpeaker publishes them
trained on VoxBlink2): the body of the plugins ``SimAM_ResNet34_ASP`` and ``SimAM_ResNet100_ASP``, named as WeSpeaker
names them, so that a WeSpeaker ``config.yaml``'s ``model:`` selects the plugin.

- ``front``: a 3x3 stem of ``in_planes`` channels (``channels``, 64) on the fbanks as a one-channel image
  (frequency x time), BN, ReLU; four stages of in_planes x 1, 2, 4, 8 channels with strides 1, 2, 2, 2, of basic
  blocks (3-4-6-3 for ResNet34, 6-16-24-3 for ResNet100): 3x3 conv, BN, ReLU, 3x3 conv, BN, SimAM, plus the
  shortcut (``downsample``: a 1x1 conv + BN where the shape changes), ReLU;
- SimAM, parameter-free: each value is weighed by ``sigmoid(d / (4 (v + lambda)) + 0.5)``, ``d`` its squared
  distance from the mean of its channel's map (frequency x time, per utterance), ``v`` the sum of ``d`` over the
  map divided by its size less one, ``lambda`` 1e-4;
- ``pooling``: WeSpeaker's ``ASP``, attentive statistics over time of every (channel, frequency) row of the last
  map (in_planes x 8 x n_mels / 8 rows): a 1x1 conv to 128, ReLU, BN, a 1x1 conv back to a score per row, softmax
  over time; the weighted mean and ``sqrt(max(weighted variance, 1e-5))``;
- ``bottleneck``: one linear layer to ``nOut`` (256). WeSpeaker's ``dropout`` before it (0 by default) acts in
  training only and has no weights; the plugins do not carry it.

| network | blocks per stage | parameters (in_planes 64, 80 fbanks, 256-d; WeSpeaker's own count) |
| --- | --- | --- |
| ``SimAM_ResNet34_ASP`` | 3-4-6-3 | 25,213,760 |
| ``SimAM_ResNet100_ASP`` | 6-16-24-3 | 50,232,896 |

Module, parameter and buffer names are WeSpeaker's (``front.layer3.5.conv2.weight``, ``front.layer2.0.downsample.1``,
``pooling.attention.3``, ``bottleneck``), so its ``avg_model.pt`` loads key for key (:mod:`spknet.importing`).
WeSpeaker computes its 80 Kaldi fbanks (Hamming window, the utterance mean subtracted) outside the model; here they
are the model's front end (``kaldi_fbank`` by default), as for WeSpeaker's other networks.
"""

import torch
import torch.nn.functional as F
from torch import nn

from spknet.errors import SpeakerNetError

from ._frontend import check_choice, check_feature_frontend, make_frontend
from ._wespeaker_resnet import block_pairs, shortcut

ENCODERS = ("ASP",)         # WeSpeaker's ASP: attentive statistics of every (channel, frequency) row
SIMAM_LAMBDA = 1e-4         # SimAM's regulariser of the map's variance (WeSpeaker's lambda_p)
ATTENTION_BOTTLENECK = 128  # WeSpeaker's ASP hidden_dim
VARIANCE_FLOOR = 1e-5       # under ASP's square root (pooling_layers.ASP)
STRIDES = (1, 2, 2, 2)      # of the four stages; the frequency axis ends n_mels / 8 rows tall
# WeSpeaker's model names: basic blocks per stage
NETWORKS = {"SimAM_ResNet34_ASP": (3, 4, 6, 3), "SimAM_ResNet100_ASP": (6, 16, 24, 3)}


def simam(x: torch.Tensor, regulariser: float = SIMAM_LAMBDA) -> torch.Tensor:
    """SimAM's weighting of ``x`` (batch, channels, frequency, time): the sigmoid of each value's inverse energy,
    computed over its own channel's map."""
    squared = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
    variance = squared.sum(dim=(2, 3), keepdim=True) / (x.shape[2] * x.shape[3] - 1)
    return x * torch.sigmoid(squared / (4 * (variance + regulariser)) + 0.5)


class SimAMBasicBlock(nn.Module):
    """3x3 conv -> BN -> ReLU -> 3x3 conv -> BN -> SimAM, plus the shortcut (``downsample``), ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = shortcut(inplanes, planes, stride)    # WeSpeaker's name here, the ResNets' layers

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Each BN normalises its conv's output alone (SimAM reads bn2's output, after the BN)."""
        pairs = [("conv1", "bn1"), ("conv2", "bn2")]
        return pairs + ([("downsample.0", "downsample.1")] if len(self.downsample) else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(simam(out) + self.downsample(x))


class SimAMTrunk(nn.Module):
    """WeSpeaker's ``front``: the stem and the four stages (``layer1`` ... ``layer4``)."""

    def __init__(self, in_planes: int, blocks: tuple[int, ...]):
        super().__init__()
        self.conv1 = nn.Conv2d(1, in_planes, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        inplanes = in_planes
        for index, (count, stride) in enumerate(zip(blocks, STRIDES), start=1):
            planes = in_planes * 2 ** (index - 1)
            setattr(self, f"layer{index}", nn.Sequential(
                *(SimAMBasicBlock(inplanes if i == 0 else planes, planes, stride if i == 0 else 1)
                  for i in range(count))))
            inplanes = planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class AttentiveStatistics(nn.Module):
    """WeSpeaker's ASP on ``(batch, rows, frames)``: ``attention`` (keys ``attention.0``, ``.2``, ``.3``: conv,
    ReLU, BN, conv) scores every row's frames; the softmax over time weighs them into a mean and a standard
    deviation per row."""

    def __init__(self, rows: int, bottleneck: int = ATTENTION_BOTTLENECK):
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(rows, bottleneck, kernel_size=1), nn.ReLU(),
                                       nn.BatchNorm1d(bottleneck), nn.Conv1d(bottleneck, rows, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.attention(x), dim=2)
        mean = (x * weights).sum(dim=2)
        variance = (x * x * weights).sum(dim=2) - mean * mean
        return torch.cat((mean, torch.sqrt(variance.clamp(min=VARIANCE_FLOOR))), dim=1)


class WeSpeakerSimAM(nn.Module):
    """Features ``(batch, n_mels, frames)`` -> embeddings ``(batch, nOut)`` (:meth:`embed`); with its front end,
    waveforms ``(batch, samples)`` -> embeddings (``forward``)."""

    def __init__(self, blocks: tuple[int, ...] = NETWORKS["SimAM_ResNet34_ASP"], in_planes: int = 64,
                 nOut: int = 256, n_mels: int = 80, frontend: nn.Module | None = None):
        super().__init__()
        if n_mels < 8:
            raise SpeakerNetError(f"SimAM-ResNet needs at least 8 bands (three stride-2 stages), got n_mels {n_mels}")
        self.frontend = frontend
        self.front = SimAMTrunk(in_planes, blocks)
        # (channels x frequency) rows after three stride-2 stages: WeSpeaker's in_planes * 8 * (acoustic_dim / 8)
        rows = in_planes * 8 * -(-n_mels // 8)
        self.pooling = AttentiveStatistics(rows)
        self.bottleneck = nn.Linear(2 * rows, nOut)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """The stem's and every block's pairs (spknet.folding); the pooling's BN follows a ReLU."""
        return [("front.conv1", "front.bn1"), *block_pairs(self, (SimAMBasicBlock,))]

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """WeSpeaker's ``forward(features.transpose(1, 2))``."""
        x = self.front(features.unsqueeze(1))
        return self.bottleneck(self.pooling(x.flatten(1, 2)))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.embed(self.frontend(waves))


def main_model(name: str, nOut: int, encoder_type: str, n_mels: int, log_input: bool, window: str, channels: int,
               frontend: str) -> WeSpeakerSimAM:
    """The plugin ``name`` (a key of :data:`NETWORKS`) of ``channels`` (WeSpeaker's in_planes) on the spec's front
    end (WeSpeaker's: 80 Kaldi fbanks, Hamming window, the utterance mean subtracted)."""
    check_choice("encoder_type", encoder_type, ENCODERS)
    check_feature_frontend(name, frontend)
    return WeSpeakerSimAM(NETWORKS[name], in_planes=channels, nOut=nOut, n_mels=n_mels,
                          frontend=make_frontend(frontend, n_mels, window, log_input=log_input))
