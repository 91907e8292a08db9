"""ECAPA-TDNN (Desplanques, Thienpondt and Demuynck, "ECAPA-TDNN: Emphasized Channel Attention, Propagation and
Aggregation in TDNN Based Speaker Verification", Interspeech 2020), its Figure 2 and Section 3:

- a Conv1D + ReLU + BN layer (kernel 5) of ``channels`` (C, 512 or 1024) on 80 log-mel bands;
- three SE-Res2Blocks (kernel 3, dilations 2, 3, 4, Res2Net scale 8, squeeze-excitation bottleneck 128), each fed
  the sum of the outputs of the first layer and of every block before it (the paper's summed residual connections,
  Section 3.3);
- multi-layer feature aggregation: the three blocks' outputs concatenated, Conv1D + ReLU to 1536 channels;
- channel- and context-dependent attentive statistics pooling (Section 3.2): the attention of each channel and
  frame sees the frame and the utterance's mean and standard deviation (bottleneck 128), then BN;
- FC to ``nOut`` (192, the paper's embedding size) + BN.

About 6.2 M parameters with C = 512 and 14.7 M with C = 1024 (the paper's Table 1). The paper feeds 80 MFCCs of
80 mel bands; here the front end is 80 log-mel bands (pre-emphasis 0.97, 25-ms Hamming windows every 10 ms), the
utterance mean of each band subtracted, as the public implementations do: an 80-point DCT of the bands is an
invertible linear map that the first layer's convolution can absorb. ``encoder_type`` ASP (default) pools the
attention-weighted mean and standard deviation, SAP the weighted mean alone. ``frontend``: another front end of
:mod:`models._frontend` (``kaldi_fbank``, ``speechbrain_fbank``) replaces the log-mel, with any ``n_mels``.
"""

import torch
from torch import nn

from spknet.errors import SpeakerNetError

from ._frontend import check_choice, check_feature_frontend, log_mel, make_frontend, pre_emphasised_filterbank

RES2_SCALE = 8              # Res2Net scale of the SE-Res2Blocks (Section 3.1)
SE_BOTTLENECK = 128         # squeeze-excitation bottleneck
ATTENTION_BOTTLENECK = 128  # attentive statistics pooling bottleneck
MFA_CHANNELS = 1536         # channels after multi-layer feature aggregation
DILATIONS = (2, 3, 4)       # of the three SE-Res2Blocks


class ConvReluBN(nn.Module):
    """The paper's "Conv1D + ReLU + BN" unit (the BN after the ReLU, as in its Figure 2)."""

    def __init__(self, inputs: int, outputs: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(inputs, outputs, kernel_size, dilation=dilation,
                              padding=dilation * (kernel_size - 1) // 2)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm1d(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.relu(self.conv(x)))


class Res2Conv(nn.Module):
    """Res2Net's hierarchical convolution (Gao et al. 2019): the channels split into ``scale`` groups; the first
    passes unchanged, group i > 1 goes through its own dilated conv after adding the previous group's output, so
    the receptive field grows group by group at the parameter cost of one conv of C / scale channels each."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int = RES2_SCALE):
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.convs = nn.ModuleList(ConvReluBN(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.chunk(self.scale, dim=1)
        outputs = [groups[0]]
        for conv, group in zip(self.convs, groups[1:]):
            outputs.append(conv(group if len(outputs) == 1 else group + outputs[-1]))
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    """Channel weights from the utterance mean of each channel through a bottleneck (Hu et al.; Section 3.1)."""

    def __init__(self, channels: int, bottleneck: int = SE_BOTTLENECK):
        super().__init__()
        self.fc = nn.Sequential(nn.Conv1d(channels, bottleneck, 1), nn.ReLU(), nn.Conv1d(bottleneck, channels, 1),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=2, keepdim=True))


class SERes2Block(nn.Module):
    """1x1 Conv-ReLU-BN, dilated Res2 conv, 1x1 Conv-ReLU-BN, SE, plus the block's input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv1 = ConvReluBN(channels, channels)
        self.res2 = Res2Conv(channels, kernel_size, dilation)
        self.conv3 = ConvReluBN(channels, channels)
        self.se = SqueezeExcitation(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se(self.conv3(self.res2(self.conv1(x))))


class AttentiveStatistics(nn.Module):
    """Channel- and context-dependent attentive statistics pooling (Section 3.2): per channel, a softmax over time
    of an attention that sees each frame with the utterance's unweighted mean and standard deviation."""

    def __init__(self, channels: int, encoder_type: str, bottleneck: int = ATTENTION_BOTTLENECK):
        super().__init__()
        self.encoder_type = encoder_type
        self.attention = nn.Sequential(nn.Conv1d(3 * channels, bottleneck, 1), nn.ReLU(), nn.BatchNorm1d(bottleneck),
                                       nn.Tanh(), nn.Conv1d(bottleneck, channels, 1), nn.Softmax(dim=2))

    @staticmethod
    def _std(x: torch.Tensor, mean: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        second = (x * x).mean(dim=2, keepdim=True) if weights is None else (x * x * weights).sum(dim=2, keepdim=True)
        return (second - mean * mean).clamp(min=1e-4).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        mean = x.mean(dim=2, keepdim=True)
        context = torch.cat((x, mean.expand(-1, -1, frames), self._std(x, mean).expand(-1, -1, frames)), dim=1)
        weights = self.attention(context)
        weighted_mean = (x * weights).sum(dim=2, keepdim=True)
        if self.encoder_type == "SAP":
            return weighted_mean.squeeze(2)
        return torch.cat((weighted_mean, self._std(x, weighted_mean, weights)), dim=1).squeeze(2)


class ECAPA_TDNN(nn.Module):  # noqa: N801 (the paper's name)
    def __init__(self, nOut: int = 192, encoder_type: str = "ASP", n_mels: int = 80, log_input: bool = True,
                 window: str = "hamming", channels: int = 512, frontend: str = "logmel", **kwargs):
        super().__init__()
        if channels < RES2_SCALE or channels % RES2_SCALE:
            raise SpeakerNetError(f"ECAPA_TDNN needs --channels a multiple of {RES2_SCALE} (the Res2Net scale), "
                                  f"got {channels}")
        check_choice("encoder_type", encoder_type, ("SAP", "ASP"))
        check_feature_frontend("ECAPA_TDNN", frontend)
        self.log_input = log_input
        if frontend == "logmel":
            self.torchfb = pre_emphasised_filterbank(n_mels, window)
        else:
            self.frontend = make_frontend(frontend, n_mels, window, log_input=log_input)
        self.layer1 = ConvReluBN(n_mels, channels, kernel_size=5)
        self.blocks = nn.ModuleList(SERes2Block(channels, 3, dilation) for dilation in DILATIONS)
        self.mfa = nn.Conv1d(len(DILATIONS) * channels, MFA_CHANNELS, kernel_size=1)
        self.relu = nn.ReLU()
        self.pooling = AttentiveStatistics(MFA_CHANNELS, encoder_type)
        pooled = MFA_CHANNELS * (2 if encoder_type == "ASP" else 1)
        self.bn_pooling = nn.BatchNorm1d(pooled)
        self.fc = nn.Linear(pooled, nOut)
        self.bn_embedding = nn.BatchNorm1d(nOut)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """None (spknet.folding): every BatchNorm here follows a ReLU, or a pooling, not a convolution."""
        return []

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames): the mean-normalised log mel, or the front end's features."""
        if hasattr(self, "torchfb"):
            return log_mel(self.torchfb, waves, self.log_input, "mean")
        return self.frontend(waves)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.features(waves))
        summed, outputs = x, []
        for block in self.blocks:
            outputs.append(block(summed))
            summed = summed + outputs[-1]
        x = self.relu(self.mfa(torch.cat(outputs, dim=1)))
        return self.bn_embedding(self.fc(self.bn_pooling(self.pooling(x))))


def MainModel(nOut: int = 192, encoder_type: str = "ASP", n_mels: int = 80, log_input: bool = True,
              window: str = "hamming", channels: int = 512, frontend: str = "logmel", **kwargs):
    return ECAPA_TDNN(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels, log_input=log_input, window=window,
                      channels=channels, frontend=frontend, **kwargs)
