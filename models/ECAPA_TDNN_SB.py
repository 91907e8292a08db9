"""ECAPA-TDNN as SpeechBrain defines it (``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN``), with SpeechBrain's
module names, so that its ``embedding_model.ckpt`` (a plain state dict) loads key for key; the defaults are its
published ``speechbrain/spkrec-ecapa-voxceleb`` model's (``hyperparams.yaml``): channels 1024, 1024, 1024, 1024,
3072, kernel sizes 5, 3, 3, 3, 1, dilations 1, 2, 3, 4, 1, attention 128, a 192-d embedding on 80 bands of
SpeechBrain's Fbank with the sentence mean subtracted (``frontend speechbrain_fbank``, float input:
``--audio_scale float``). 20,767,552 parameters.

It is not :mod:`models.ECAPA_TDNN` under other names; SpeechBrain's network differs from the paper's layout there:

- every convolution pads its input by reflection (SpeechBrain's ``Conv1d(padding="same", padding_mode="reflect")``),
  not with zeros;
- each SE-Res2Block takes the previous block's output (no sum of all the earlier outputs), and the multi-layer
  aggregation is a full TDNN block (conv, ReLU, BN) to 3 x C channels;
- the attentive pooling's statistics are ``sqrt(max(var, 1e-12))``, its attention a TDNN block (conv, ReLU, BN),
  tanh and a conv; the pooled statistics go through a BN and a 1x1 convolution (``fc``) to the embedding, with no
  BN after it.

``channels`` (C) sets SpeechBrain's ``channels`` list ``[C, C, C, C, 3C]`` (its default ECAPA, ``[512, 512, 512, 512,
1536]``, is ``--channels 512``); the other options of SpeechBrain's class are fixed at its defaults (Res2Net scale 8,
SE and attention bottlenecks 128, global context, no groups, no dropout).
"""

import torch
import torch.nn.functional as F
from torch import nn

from spknet.errors import SpeakerNetError

from ._frontend import check_choice, check_feature_frontend, make_frontend

KERNEL_SIZES = (5, 3, 3, 3, 1)
DILATIONS = (1, 2, 3, 4, 1)
RES2NET_SCALE = 8
SE_CHANNELS = 128
ATTENTION_CHANNELS = 128
MFA_FACTOR = 3                  # the aggregation's channels: the three SE-Res2Blocks' outputs, concatenated
STD_EPS = 1e-12                 # SpeechBrain's floor of the pooled variances
# the reflection padding needs more frames than the widest pad (SE-Res2Block 3: dilation 4, kernel 3)
MIN_FRAMES = max(dilation * (kernel - 1) // 2 for kernel, dilation in zip(KERNEL_SIZES, DILATIONS)) + 1


class Conv1d(nn.Module):
    """SpeechBrain's ``Conv1d``: the time axis padded by reflection so its length stays (``self.conv`` holds the
    weights: keys ``conv.weight``, ``conv.bias``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__()
        self.pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad, self.pad), mode="reflect")
        return self.conv(x)


class BatchNorm1d(nn.Module):
    """SpeechBrain's ``BatchNorm1d`` wrapper (keys ``norm.*``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class TDNNBlock(nn.Module):
    """Conv, ReLU, BN."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = Conv1d(in_channels, out_channels, kernel_size, dilation)
        self.activation = nn.ReLU()
        self.norm = BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.conv(x)))


class Res2NetBlock(nn.Module):
    """The channels in ``scale`` groups: the first passes, group i > 1 goes through its own TDNN block after adding
    the previous group's output."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int = RES2NET_SCALE):
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.chunk(self.scale, dim=1)
        outputs = [groups[0]]
        for block, group in zip(self.blocks, groups[1:]):
            outputs.append(block(group if len(outputs) == 1 else group + outputs[-1]))
        return torch.cat(outputs, dim=1)


class SEBlock(nn.Module):
    """Channel weights from the utterance mean of each channel through a bottleneck."""

    def __init__(self, channels: int, se_channels: int = SE_CHANNELS):
        super().__init__()
        self.conv1 = Conv1d(channels, se_channels)
        self.relu = nn.ReLU()
        self.conv2 = Conv1d(se_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.relu(self.conv1(x.mean(dim=2, keepdim=True)))))


class SERes2NetBlock(nn.Module):
    """TDNN block (1x1), Res2Net block, TDNN block (1x1), SE, plus the block's input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.tdnn1 = TDNNBlock(channels, channels)
        self.res2net_block = Res2NetBlock(channels, kernel_size, dilation)
        self.tdnn2 = TDNNBlock(channels, channels)
        self.se_block = SEBlock(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


def _statistics(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted mean and standard deviation over time (weights summing to 1 over time), as SpeechBrain
    computes them: the variance about the weighted mean, floored at 1e-12."""
    mean = (weights * x).sum(dim=2)
    std = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2).clamp(min=STD_EPS).sqrt()
    return mean, std


class AttentiveStatisticsPooling(nn.Module):
    """Channel- and context-dependent attentive statistics: the attention of each channel and frame sees the frame
    and the utterance's mean and standard deviation."""

    def __init__(self, channels: int, attention_channels: int = ATTENTION_CHANNELS):
        super().__init__()
        self.tdnn = TDNNBlock(3 * channels, attention_channels)
        self.tanh = nn.Tanh()
        self.conv = Conv1d(attention_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        mean, std = _statistics(x, torch.full_like(x[:1, :1], 1.0 / frames))
        context = torch.cat((x, mean.unsqueeze(2).expand(-1, -1, frames), std.unsqueeze(2).expand(-1, -1, frames)),
                            dim=1)
        attention = torch.softmax(self.conv(self.tanh(self.tdnn(context))), dim=2)
        mean, std = _statistics(x, attention)
        return torch.cat((mean, std), dim=1).unsqueeze(2)


class ECAPA_TDNN_SB(nn.Module):  # noqa: N801 (the paper's name, SpeechBrain's variant)
    def __init__(self, nOut: int = 192, n_mels: int = 80, window: str = "hamming", channels: int = 1024,
                 frontend: str = "speechbrain_fbank", log_input: bool = True):
        super().__init__()
        if channels < RES2NET_SCALE or channels % RES2NET_SCALE:
            raise SpeakerNetError(f"ECAPA_TDNN_SB needs --channels a multiple of {RES2NET_SCALE} (the Res2Net scale), "
                                  f"got {channels}")
        check_feature_frontend("ECAPA_TDNN_SB", frontend)
        self.frontend = make_frontend(frontend, n_mels, window, log_input=log_input)
        self.blocks = nn.ModuleList([TDNNBlock(n_mels, channels, KERNEL_SIZES[0], DILATIONS[0])])
        self.blocks.extend(SERes2NetBlock(channels, kernel, dilation)
                           for kernel, dilation in zip(KERNEL_SIZES[1:-1], DILATIONS[1:-1]))
        aggregated = MFA_FACTOR * channels
        self.mfa = TDNNBlock(aggregated, aggregated, KERNEL_SIZES[-1], DILATIONS[-1])
        self.asp = AttentiveStatisticsPooling(aggregated)
        self.asp_bn = BatchNorm1d(2 * aggregated)
        self.fc = Conv1d(2 * aggregated, nOut)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """None (spknet.folding): every BatchNorm here follows a ReLU, or the pooling, not a convolution."""
        return []

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = self.frontend(waves)
        if x.shape[2] < MIN_FRAMES:
            raise SpeakerNetError(f"ECAPA_TDNN_SB needs at least {MIN_FRAMES} frames ({(MIN_FRAMES - 1) * 10} ms) "
                                  f"for its reflection padding, got {x.shape[2]}")
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        x = self.mfa(torch.cat(outputs[1:], dim=1))
        return self.fc(self.asp_bn(self.asp(x))).squeeze(2)


def MainModel(nOut: int = 192, encoder_type: str = "ASP", n_mels: int = 80, log_input: bool = True,
              window: str = "hamming", channels: int = 1024, frontend: str = "speechbrain_fbank", **kwargs):
    check_choice("encoder_type", encoder_type, ("ASP",))
    return ECAPA_TDNN_SB(nOut=nOut, n_mels=n_mels, window=window, channels=channels, frontend=frontend,
                         log_input=log_input)
