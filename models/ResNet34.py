"""WeSpeaker's ResNet34 (Wang et al., "Wespeaker: A research and production oriented speaker embedding learning
toolkit", ICASSP 2023; its wespeaker/models/resnet.py): a 3x3 stem of ``channels`` (32), 3-4-6-3 basic blocks of
32-64-128-256 channels with strides 1-2-2-2, temporal statistics pooling (TSTP: mean and standard deviation over
time of every (channel, frequency) row of the last map), one linear layer to a 256-d embedding (about 6.6 M
parameters with 80 bands). Module names follow WeSpeaker's (``layerN.i.shortcut``, ``seg_1``).

Difference: WeSpeaker computes 80 Kaldi fbanks outside the model (dither, povey window, utterance mean
subtracted); here the front end is inside the model, as for every SpeakerNet network: 80 log-mel bands
(pre-emphasis 0.97, 25-ms Hamming windows every 10 ms, torchaudio's mel scale), the utterance mean of each band
subtracted. Close to, not identical with, Kaldi's features, so WeSpeaker's weights do not carry over unchanged.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ._frontend import check_choice, log_mel, pre_emphasised_filterbank


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the (1x1 conv + BN when the shape changes) shortcut, ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Every BN here normalises its conv's output alone (spknet.folding)."""
        pairs = [("conv1", "bn1"), ("conv2", "bn2")]
        return pairs + ([("shortcut.0", "shortcut.1")] if len(self.shortcut) else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ResNet34(nn.Module):
    def __init__(self, nOut: int = 256, encoder_type: str = "TSTP", n_mels: int = 80, log_input: bool = True,
                 window: str = "hamming", channels: int = 32, layers=(3, 4, 6, 3), **kwargs):
        super().__init__()
        check_choice("encoder_type", encoder_type, ("TSTP",))
        self.log_input = log_input
        self.torchfb = pre_emphasised_filterbank(n_mels, window)
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        inplanes = channels
        for index, (blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2)), start=1):
            planes = channels * 2 ** (index - 1)
            setattr(self, f"layer{index}", nn.Sequential(
                *(BasicBlock(inplanes if block == 0 else planes, planes, stride if block == 0 else 1)
                  for block in range(blocks))))
            inplanes = planes
        rows = inplanes * -(-n_mels // 8)             # (channels x frequency) rows after three stride-2 layers
        self.seg_1 = nn.Linear(2 * rows, nOut)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """The stem and every block's pairs (spknet.folding)."""
        pairs = [("conv1", "bn1")]
        for name, module in self.named_modules():
            if isinstance(module, BasicBlock):
                pairs += [(f"{name}.{conv}", f"{name}.{norm}") for conv, norm in module.fusable_conv_bn_pairs()]
        return pairs

    @staticmethod
    def statistics(x: torch.Tensor) -> torch.Tensor:
        """TSTP of x (B, rows, T): mean and (unbiased, as WeSpeaker) standard deviation over time."""
        return torch.cat((x.mean(dim=2), torch.sqrt(x.var(dim=2) + 1e-7)), dim=1)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = log_mel(self.torchfb, waves, self.log_input, "mean").unsqueeze(1)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.seg_1(self.statistics(x.flatten(1, 2)))


def MainModel(nOut: int = 256, encoder_type: str = "TSTP", n_mels: int = 80, log_input: bool = True,
              window: str = "hamming", channels: int = 32, **kwargs):
    return ResNet34(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels, log_input=log_input, window=window,
                    channels=channels, **kwargs)
