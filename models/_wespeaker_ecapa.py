"""WeSpeaker's ECAPA-TDNN family (wespeaker/models/ecapa_tdnn.py, after Desplanques et al., "ECAPA-TDNN: Emphasized
Channel Attention, Propagation and Aggregation in TDNN Based Speaker Verification", Interspeech 2020): the body of
the plugins ``ECAPA_TDNN_c512``, ``ECAPA_TDNN_GLOB_c512``, ``ECAPA_TDNN_c1024`` and ``ECAPA_TDNN_GLOB_c1024``, named
as WeSpeaker names them, so that a WeSpeaker ``config.yaml``'s ``model:`` selects the plugin.

- ``layer1``: a kernel-5 conv of C channels (512 or 1024) on the fbanks, ReLU, BN (WeSpeaker's order: conv, ReLU,
  BN, in every unit here);
- ``layer2`` ... ``layer4``: SE-Res2Blocks (kernel 3, dilations 2, 3, 4, Res2Net scale 8): a 1x1 unit, the dilated
  Res2Net conv (each of the first seven groups of C / 8 channels through its own conv + ReLU + BN after adding the
  previous group's output; the eighth passed as it is), a 1x1 unit, squeeze-excitation (bottleneck 128) and the
  block's input added. Unlike the paper (and SpeakerNet's ``ECAPA_TDNN``), each block takes the previous block's
  output alone, not the sum of all earlier outputs;
- ``conv``: multi-layer aggregation, the three blocks' outputs concatenated and a 1x1 conv to 1536 channels (1536
  for either C), ReLU;
- ``pool``: WeSpeaker's ``ASTP``, attentive statistics (bottleneck 128, tanh): per channel, a softmax over time
  weighs the frames; the weighted mean and ``sqrt(max(weighted variance, 1e-7))``. The ``GLOB`` networks' attention
  sees each frame beside the utterance's mean and standard deviation (``sqrt(var + 1e-7)``, unbiased), its first
  layer taking 3 x 1536 channels; the others' sees the frame alone;
- ``bn`` over the 3072 pooled values, ``linear`` to ``nOut``, and, with ``emb_bn``, a BN of the embedding
  (``bn2``; off in WeSpeaker's published models, and not carried by the plugins, whose spec has no such option).

| network | C | global context | parameters (80 fbanks, 192-d; WeSpeaker's own count) |
| --- | --- | --- | --- |
| ``ECAPA_TDNN_c512`` | 512 | no | 5,797,504 |
| ``ECAPA_TDNN_GLOB_c512`` | 512 | yes | 6,190,720 |
| ``ECAPA_TDNN_c1024`` | 1024 | no | 14,263,872 |
| ``ECAPA_TDNN_GLOB_c1024`` | 1024 | yes | 14,657,088 |

Module, parameter and buffer names are WeSpeaker's (``layer3.se_res2block.1.convs.6.weight``, ``pool.linear1``,
``bn``, ``linear``), so its ``avg_model.pt`` loads key for key (:mod:`spknet.importing`). WeSpeaker computes its 80
Kaldi fbanks (Hamming window, the utterance mean subtracted) outside the model; here they are the model's front end
(``kaldi_fbank`` by default), as for WeSpeaker's ResNets, CAM++ and ReDimNets.
"""

import torch
import torch.nn.functional as F
from torch import nn

from spknet.errors import SpeakerNetError

from ._frontend import check_choice, check_feature_frontend, make_frontend

ENCODERS = ("ASP",)         # WeSpeaker's ASTP (attentive statistics), with or without global context
RES2_SCALE = 8              # groups of the Res2Net conv
SE_BOTTLENECK = 128
ATTENTION_BOTTLENECK = 128
AGGREGATED = 1536           # channels after the aggregation conv: WeSpeaker's 512 * 3, whatever C
DILATIONS = (2, 3, 4)       # of layer2, layer3, layer4
STATS_EPS = 1e-7            # under WeSpeaker's square roots (pooling_layers.ASTP)
# WeSpeaker's model names: C, and whether the attention sees the utterance's statistics
NETWORKS = {"ECAPA_TDNN_c512": (512, False), "ECAPA_TDNN_GLOB_c512": (512, True),
            "ECAPA_TDNN_c1024": (1024, False), "ECAPA_TDNN_GLOB_c1024": (1024, True)}


class ConvReluBn(nn.Module):
    """conv -> ReLU -> BN (the BN after the ReLU: nothing here folds into a conv)."""

    def __init__(self, inputs: int, outputs: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(inputs, outputs, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                              dilation=dilation)
        self.bn = nn.BatchNorm1d(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2Conv(nn.Module):
    """Res2Net's hierarchical conv: the channels in ``scale`` groups; group i (but the last) goes through its own
    dilated conv + ReLU + BN after the previous group's output is added to it; the last group is passed as it is,
    after the others (WeSpeaker's order of the output groups)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int = RES2_SCALE):
        super().__init__()
        if channels % scale:
            raise SpeakerNetError(f"ECAPA-TDNN: {channels} channels do not split into {scale} Res2Net groups")
        self.width = channels // scale
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel_size, padding=dilation * (kernel_size - 1)
                                             // 2, dilation=dilation) for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(x, self.width, dim=1)
        outputs = []
        for index, (conv, norm) in enumerate(zip(self.convs, self.bns)):
            group = groups[index] if index == 0 else groups[index] + outputs[-1]
            outputs.append(norm(F.relu(conv(group))))
        return torch.cat(outputs + [groups[-1]], dim=1)


class SqueezeExcitation(nn.Module):
    """Channel gains from the utterance mean of each channel through a ReLU bottleneck and a sigmoid."""

    def __init__(self, channels: int, bottleneck: int = SE_BOTTLENECK):
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gains = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * gains.unsqueeze(2)


class SERes2Block(nn.Module):
    """1x1 unit, dilated Res2Net conv, 1x1 unit, squeeze-excitation (``se_res2block.0`` ... ``.3``), plus the
    input."""

    def __init__(self, channels: int, dilation: int, kernel_size: int = 3):
        super().__init__()
        self.se_res2block = nn.Sequential(ConvReluBn(channels, channels), Res2Conv(channels, kernel_size, dilation),
                                          ConvReluBn(channels, channels), SqueezeExcitation(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_res2block(x)


def utterance_std(x: torch.Tensor) -> torch.Tensor:
    """The unbiased standard deviation over time, ``sqrt(var + 1e-7)``, kept as a ``(batch, channels, 1)``."""
    return torch.sqrt(torch.var(x, dim=-1, keepdim=True) + STATS_EPS)


class AttentiveStatistics(nn.Module):
    """WeSpeaker's ASTP: a tanh bottleneck (``linear1``) and a per-channel score (``linear2``), 1x1 convs, softmax
    over time; the weighted mean and standard deviation of every channel. ``global_context``: the attention's input
    is each frame with the utterance's mean and standard deviation beside it (3 x the channels)."""

    def __init__(self, channels: int, global_context: bool, bottleneck: int = ATTENTION_BOTTLENECK):
        super().__init__()
        self.global_context = global_context
        self.linear1 = nn.Conv1d(channels * (3 if global_context else 1), bottleneck, kernel_size=1)
        self.linear2 = nn.Conv1d(bottleneck, channels, kernel_size=1)

    def attention_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.global_context:
            return x
        mean = x.mean(dim=-1, keepdim=True)
        return torch.cat((x, mean.expand_as(x), utterance_std(x).expand_as(x)), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.linear2(torch.tanh(self.linear1(self.attention_input(x)))), dim=2)
        mean = (weights * x).sum(dim=2)
        variance = (weights * x * x).sum(dim=2) - mean * mean
        return torch.cat((mean, torch.sqrt(variance.clamp(min=STATS_EPS))), dim=1)


class WeSpeakerECAPA(nn.Module):
    """Features ``(batch, n_mels, frames)`` -> embeddings ``(batch, nOut)`` (:meth:`embed`); with its front end,
    waveforms ``(batch, samples)`` -> embeddings (``forward``)."""

    def __init__(self, channels: int = 512, global_context: bool = True, nOut: int = 192, n_mels: int = 80,
                 emb_bn: bool = False, frontend: nn.Module | None = None):
        super().__init__()
        self.frontend = frontend
        self.layer1 = ConvReluBn(n_mels, channels, kernel_size=5)
        for index, dilation in enumerate(DILATIONS, start=2):
            setattr(self, f"layer{index}", SERes2Block(channels, dilation))
        self.conv = nn.Conv1d(len(DILATIONS) * channels, AGGREGATED, kernel_size=1)
        self.pool = AttentiveStatistics(AGGREGATED, global_context)
        self.bn = nn.BatchNorm1d(2 * AGGREGATED)
        self.linear = nn.Linear(2 * AGGREGATED, nOut)
        self.bn2 = nn.BatchNorm1d(nOut) if emb_bn else nn.Identity()

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """None (spknet.folding): every BatchNorm follows a ReLU or the pooling, never a conv."""
        return []

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """WeSpeaker's ``forward(features.transpose(1, 2))[-1]``."""
        out2 = self.layer2(self.layer1(features))
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        aggregated = F.relu(self.conv(torch.cat((out2, out3, out4), dim=1)))
        return self.bn2(self.linear(self.bn(self.pool(aggregated))))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.embed(self.frontend(waves))


def main_model(name: str, nOut: int, encoder_type: str, n_mels: int, log_input: bool, window: str,
               frontend: str) -> WeSpeakerECAPA:
    """The plugin ``name`` (a key of :data:`NETWORKS`) on the spec's front end (WeSpeaker's: 80 Kaldi fbanks, Hamming
    window, the utterance mean subtracted)."""
    check_choice("encoder_type", encoder_type, ENCODERS)
    check_feature_frontend(name, frontend)
    channels, global_context = NETWORKS[name]
    return WeSpeakerECAPA(channels, global_context, nOut=nOut, n_mels=n_mels,
                          frontend=make_frontend(frontend, n_mels, window, log_input=log_input))
