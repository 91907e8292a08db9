"""WeSpeaker's ResNet family (Wang et al., "Wespeaker: A research and production oriented speaker embedding learning
toolkit", ICASSP 2023; its wespeaker/models/resnet.py), the body that the plugins ``ResNet18`` ... ``ResNet293``
build by depth, and the one that ``ResNet34`` has always been.

A 3x3 stem of ``channels`` (32), four stages of 32-64-128-256 planes with strides 1-2-2-2, each of basic blocks
(two 3x3 convs: ResNet18/34) or bottleneck blocks (1x1, 3x3, 1x1 to 4x the planes: ResNet50 and deeper), a 1x1
conv + BN shortcut where the shape changes; temporal statistics pooling (TSTP: the mean and the unbiased standard
deviation, ``sqrt(var + 1e-7)``, over time of every (channel, frequency) row of the last map); one linear layer
``seg_1`` to the embedding.

| depth | block | blocks per stage | parameters (80 bands, 256-d, TSTP; WeSpeaker's own count) |
| --- | --- | --- | --- |
| 18 | basic | 2-2-2-2 | 4,105,440 |
| 34 | basic | 3-4-6-3 | 6,634,336 |
| 50 | bottleneck | 3-4-6-3 | 11,131,360 |
| 101 | bottleneck | 3-4-23-3 | 15,892,448 |
| 152 | bottleneck | 3-8-36-3 | 19,814,880 |
| 221 | bottleneck | 6-16-48-3 | 23,792,224 |
| 293 | bottleneck | 10-20-64-3 | 28,626,016 |

Module and parameter names are WeSpeaker's (``layer3.5.conv2.weight``, ``layerN.i.shortcut.0``, ``seg_1``), so its
``avg_model.pt`` loads key for key (:mod:`spknet.importing`); WeSpeaker computes its 80 Kaldi fbanks outside the
model, here they are the model's front end (``frontend``, the ``kaldi_fbank`` of the model spec). WeSpeaker's
``two_emb_layer`` (a second linear layer after a ReLU and BN, off in every published model) is not carried.
"""

import torch
import torch.nn.functional as F
from torch import nn

from spknet.errors import SpeakerNetError

from ._frontend import check_choice, check_feature_frontend, log_mel, make_frontend, pre_emphasised_filterbank

ENCODERS = ("TSTP",)
STATS_EPS = 1e-7            # under WeSpeaker's square root (pooling_layers.TSTP)

# WeSpeaker's configurations (wespeaker/models/resnet.py): block type and blocks per stage, by depth
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3)),
          221: ("bottleneck", (6, 16, 48, 3)), 293: ("bottleneck", (10, 20, 64, 3))}


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the (1x1 conv + BN when the shape changes) shortcut, ReLU."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(inplanes, planes * self.expansion, stride)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Every BN here normalises its conv's output alone (spknet.folding)."""
        pairs = [("conv1", "bn1"), ("conv2", "bn2")]
        return pairs + ([("shortcut.0", "shortcut.1")] if len(self.shortcut) else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1 -> BN -> ReLU -> conv3x3 (the stride) -> BN -> ReLU -> conv1x1 to 4x the planes -> BN, plus the
    shortcut, ReLU."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = shortcut(inplanes, planes * self.expansion, stride)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        pairs = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
        return pairs + ([("shortcut.0", "shortcut.1")] if len(self.shortcut) else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(out + self.shortcut(x))


def shortcut(inplanes: int, planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and inplanes == planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes))


def block_pairs(model: nn.Module, block_types: tuple[type, ...]) -> list[tuple[str, str]]:
    """The conv -> BN pairs every block of ``block_types`` in ``model`` declares, named from ``model``."""
    return [(f"{name}.{conv}", f"{name}.{norm}") for name, module in model.named_modules()
            if isinstance(module, block_types) for conv, norm in module.fusable_conv_bn_pairs()]


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class WeSpeakerResNet(nn.Module):
    """Features ``(batch, n_mels, frames)`` -> embeddings ``(batch, nOut)`` (:meth:`embed`); with its front end,
    waveforms ``(batch, samples)`` -> embeddings (``forward``).

    ``frontend``: a name of the model spec (``kaldi_fbank``: WeSpeaker's features; ``logmel``: the log-mel that
    SpeakerNet's ResNet34 has always had, kept as ``torchfb`` so that its checkpoints load key for key)."""

    def __init__(self, depth: int = 34, nOut: int = 256, encoder_type: str = "TSTP", n_mels: int = 80,
                 log_input: bool = True, window: str = "hamming", channels: int = 32, frontend: str = "kaldi_fbank",
                 layers=None):
        super().__init__()
        check_choice("encoder_type", encoder_type, ENCODERS)
        check_feature_frontend(f"ResNet{depth}", frontend)
        if n_mels < 8:
            raise SpeakerNetError(f"ResNet{depth} needs at least 8 bands (three stride-2 stages), got n_mels {n_mels}")
        kind, default_layers = DEPTHS[depth]
        block = BLOCKS[kind]
        self.log_input = log_input
        if frontend == "logmel":       # ResNet34's own layout: torchfb.0.flipped_filter, torchfb.1.mel_scale.fb, ...
            self.torchfb = pre_emphasised_filterbank(n_mels, window)
        else:
            self.frontend = make_frontend(frontend, n_mels, window, log_input=log_input)
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        inplanes = channels
        for index, (blocks, stride) in enumerate(zip(layers or default_layers, (1, 2, 2, 2)), start=1):
            planes = channels * 2 ** (index - 1)
            setattr(self, f"layer{index}", nn.Sequential(
                *(block(inplanes if i == 0 else planes * block.expansion, planes, stride if i == 0 else 1)
                  for i in range(blocks))))
            inplanes = planes * block.expansion
        rows = inplanes * -(-n_mels // 8)             # (channels x frequency) rows after three stride-2 stages
        self.seg_1 = nn.Linear(2 * rows, nOut)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """The stem and every block's pairs (spknet.folding)."""
        return [("conv1", "bn1"), *block_pairs(self, (BasicBlock, Bottleneck))]

    @staticmethod
    def statistics(x: torch.Tensor) -> torch.Tensor:
        """TSTP of x (B, rows, T): mean and (unbiased, as WeSpeaker) standard deviation over time."""
        return torch.cat((x.mean(dim=2), torch.sqrt(x.var(dim=2) + STATS_EPS)), dim=1)

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "torchfb"):
            return log_mel(self.torchfb, waves, self.log_input, "mean")
        return self.frontend(waves)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """WeSpeaker's ``ResNet.forward`` on ``features.transpose(1, 2)`` (its ``(batch, frames, bins)``)."""
        x = F.relu(self.bn1(self.conv1(features.unsqueeze(1))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.seg_1(self.statistics(x.flatten(1, 2)))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(waves))


def resnet_plugin(depth: int, frontend: str = "kaldi_fbank"):
    """The ``MainModel`` of ``models/ResNet<depth>.py``: its signature holds the network's own defaults (what
    :func:`spknet.plugins.model_defaults` reads), WeSpeaker's 80 Kaldi fbanks unless ``frontend`` says otherwise."""

    def MainModel(nOut: int = 256, encoder_type: str = "TSTP", n_mels: int = 80, log_input: bool = True,
                  window: str = "hamming", channels: int = 32, frontend: str = frontend, **kwargs):
        return WeSpeakerResNet(depth, nOut=nOut, encoder_type=encoder_type, n_mels=n_mels, log_input=log_input,
                               window=window, channels=channels, frontend=frontend)

    MainModel.__doc__ = f"WeSpeaker's ResNet{depth} ({DEPTHS[depth][0]} blocks {'-'.join(map(str, DEPTHS[depth][1]))})"
    return MainModel
