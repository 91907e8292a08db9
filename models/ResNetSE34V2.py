"""voxceleb_trainer's ResNetSE34V2 ("In defence of metric learning", Chung et al. 2020; its models/ResNetSE34V2.py):
32-64-128-256 channels, 3-4-6-3 SE basic blocks behind a 3x3 stem, strides 1-2-2-2, and attention over time on
the flattened (channels x frequency) map (about 8.0 M parameters with 64 mels and ASP).

Parameter and buffer names are voxceleb_trainer's, so its checkpoints load key for key. Defaults are those of its
published ResNetSE34V2 checkpoints and README command (``--log_input True --encoder_type ASP --n_mels 64``, 512-d),
so they load with no model flag; voxceleb_trainer's own command-line defaults (40 mels, SAP, no log) are not what
its models were trained with. Its input is float in [-1, 1] with short files wrapped: ``--audio_scale float --pad
wrap`` here (``spknet.inference`` picks them for its state dicts).
"""

import torch
from torch import nn

from ._frontend import check_choice, check_feature_frontend, log_mel, make_frontend, pre_emphasised_filterbank
from ._resnet_se import block_pairs, init_resnet_weights, se_layer

ATTENTION_BOTTLENECK = 128      # voxceleb_trainer's attention: Conv1d(C*F, 128) -> ReLU -> BN -> Conv1d(128, C*F)


class ResNetSE34V2(nn.Module):
    """Pre-emphasised log-mel, instance norm, SE ResNet, attentive (SAP) or attentive-statistics (ASP) pooling of
    every (channel, frequency) row over time, linear embedding. Another ``frontend`` than ``logmel`` replaces the
    log-mel and its instance norm (``self.frontend`` instead of ``torchfb``)."""

    def __init__(self, nOut: int = 512, encoder_type: str = "ASP", n_mels: int = 64, log_input: bool = True,
                 window: str = "hamming", layers=(3, 4, 6, 3), num_filters=(32, 64, 128, 256),
                 frontend: str = "logmel", **kwargs):
        super().__init__()
        self.encoder_type = check_choice("encoder_type", encoder_type, ("SAP", "ASP"))
        check_feature_frontend("ResNetSE34V2", frontend)
        self.log_input = log_input
        if frontend == "logmel":
            self.torchfb = pre_emphasised_filterbank(n_mels, window)
        else:
            self.frontend = make_frontend(frontend, n_mels, window, log_input=log_input)
        # voxceleb_trainer's stem: a 3x3 conv with bias, then ReLU, then BN (so the BN cannot be folded into it)
        self.conv1 = nn.Conv2d(1, num_filters[0], kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        inplanes = num_filters[0]
        for index, (planes, blocks, stride) in enumerate(zip(num_filters, layers, (1, 2, 2, 2)), start=1):
            setattr(self, f"layer{index}", se_layer(inplanes, planes, blocks, stride))
            inplanes = planes
        # frequency rows left after three stride-2 convs (padding 1): n_mels / 8, rounded up. voxceleb_trainer
        # writes int(n_mels / 8), the same for every n_mels it can run (multiples of 8; others fail there)
        rows = num_filters[3] * -(-n_mels // 8)
        self.attention = nn.Sequential(
            nn.Conv1d(rows, ATTENTION_BOTTLENECK, kernel_size=1), nn.ReLU(), nn.BatchNorm1d(ATTENTION_BOTTLENECK),
            nn.Conv1d(ATTENTION_BOTTLENECK, rows, kernel_size=1), nn.Softmax(dim=2))
        self.fc = nn.Linear(rows if encoder_type == "SAP" else 2 * rows, nOut)
        init_resnet_weights(self)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """The blocks' conv2 -> bn2 and shortcut pairs (spknet.folding); not the stem (ReLU before its BN), not the
        attention (its BN follows a ReLU)."""
        return block_pairs(self)

    def pooling(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, rows, T). A softmax over time per row weights the mean (SAP) and the standard deviation (ASP)."""
        weights = self.attention(x)
        mean = torch.sum(x * weights, dim=2)
        if self.encoder_type == "SAP":
            return mean
        std = torch.sqrt((torch.sum(x * x * weights, dim=2) - mean * mean).clamp(min=1e-5))
        return torch.cat((mean, std), dim=1)

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames): the instance-normalised log mel, or the front end's features."""
        if hasattr(self, "torchfb"):
            return log_mel(self.torchfb, waves, self.log_input, "instance")
        return self.frontend(waves)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = self.features(waves).unsqueeze(1)
        x = self.bn1(self.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pooling(x.flatten(1, 2)))


def MainModel(nOut: int = 512, encoder_type: str = "ASP", n_mels: int = 64, log_input: bool = True,
              window: str = "hamming", frontend: str = "logmel", **kwargs):
    return ResNetSE34V2(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels, log_input=log_input, window=window,
                        frontend=frontend, **kwargs)
