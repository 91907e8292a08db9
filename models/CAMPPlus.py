"""CAM++ (Wang et al., "CAM++: A Fast and Efficient Network for Speaker Verification Using Context-Aware Masking",
Interspeech 2023), as WeSpeaker (wespeaker/models/campplus.py) and 3D-Speaker (speakerlab/models/campplus/DTDNN.py)
define it: the two have the same modules and parameter names, so one plugin carries both.

- ``head`` (FCM): a 3x3 stem of 32 channels, two stages of two basic 2-D blocks that stride 2 along frequency
  only, a stride-(2, 1) 3x3 conv + BN + ReLU; the map flattened to ``32 * (n_mels // 8)`` channels.
- ``xvector``: a TDNN layer (kernel 5, stride 2 in time, 128 channels), three densely connected CAM blocks (12, 24
  and 16 layers of growth 32, bottleneck 128, kernel 3, dilations 1-2-2), each layer a BN-ReLU-1x1 conv-BN-ReLU
  then a context-aware masking layer (a 3-tap conv gated by a sigmoid of the utterance mean plus 100-frame segment
  means), each block followed by a BN-ReLU-1x1 transition halving the channels; BN-ReLU, statistics pooling (mean
  and standard deviation over time), a 1x1 dense layer to ``nOut`` and a BatchNorm without affine parameters.

WeSpeaker's published CAM++ has a 512-d embedding (7,176,224 parameters with 80 bands), 3D-Speaker's 192-d
(6,848,544). Both compute 80 Kaldi fbanks with the utterance mean subtracted outside the model: here they are the
model's front end (``kaldi_fbank``; WeSpeaker's window is ``hamming``, 3D-Speaker's ``povey``). The pooling's
standard deviation is WeSpeaker's, ``sqrt(var + 1e-7)`` (unbiased); 3D-Speaker's has no ``1e-7``, which matters where
a channel is constant over the utterance: the plugin ``CAMPPlus3D`` is this network with 3D-Speaker's pooling and
defaults (192-d, ``povey``), for 3D-Speaker's checkpoints.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from spknet.errors import SpeakerNetError

from ._frontend import check_choice, check_feature_frontend, make_frontend
from ._wespeaker_resnet import BasicBlock

ENCODERS = ("TSTP",)


def nonlinear(config: str, channels: int) -> nn.Sequential:
    """WeSpeaker's ``get_nonlinear``: ``batchnorm`` / ``batchnorm_`` (no affine) / ``relu`` / ``prelu`` by name."""
    layers = nn.Sequential()
    for name in config.split("-"):
        if name == "relu":
            layers.add_module("relu", nn.ReLU(inplace=True))
        elif name == "prelu":
            layers.add_module("prelu", nn.PReLU(channels))
        elif name == "batchnorm":
            layers.add_module("batchnorm", nn.BatchNorm1d(channels))
        elif name == "batchnorm_":
            layers.add_module("batchnorm", nn.BatchNorm1d(channels, affine=False))
        else:
            raise SpeakerNetError(f"CAM++: unknown nonlinearity {name!r}")
    return layers


class TDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 config: str = "batchnorm-relu"):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                dilation=dilation, bias=False)
        self.nonlinear = nonlinear(config, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """A conv whose output is masked by a sigmoid of its input's utterance mean plus its 100-frame segment means."""

    def __init__(self, bn_channels: int, out_channels: int, kernel_size: int, padding: int, dilation: int,
                 reduction: int = 2):
        super().__init__()
        self.linear_local = nn.Conv1d(bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                                      bias=False)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_channels, 1)

    @staticmethod
    def seg_pooling(x: torch.Tensor, seg_len: int = 100) -> torch.Tensor:
        """The mean of each 100-frame segment (the last one shorter), repeated over its frames."""
        # Each frame's segment sum as a difference of running sums (avg_pool1d with ceil_mode, repeated, computes the
        # same means): no tensor has the segment count as a dimension, which torch.export would otherwise fix to
        # the traced example's (one segment for 2 s) and refuse longer inputs.
        frames = x.shape[-1]
        sums = F.pad(torch.cumsum(x, dim=-1, dtype=torch.float64), (1, 0))     # float64: no drift over long inputs
        start = torch.div(torch.arange(frames, device=x.device), seg_len, rounding_mode="floor") * seg_len
        end = torch.clamp(start + seg_len, max=frames)
        means = (sums.index_select(-1, end) - sums.index_select(-1, start)) / (end - start).to(torch.float64)
        return means.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear_local(x)
        context = x.mean(-1, keepdim=True) + self.seg_pooling(x)
        return y * torch.sigmoid(self.linear2(self.relu(self.linear1(context))))


class CAMDenseTDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int, dilation: int = 1,
                 config: str = "batchnorm-relu"):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.nonlinear1 = nonlinear(config, in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = nonlinear(config, bn_channels)
        self.cam_layer = CAMLayer(bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.ModuleList):
    def __init__(self, num_layers: int, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int,
                 dilation: int = 1, config: str = "batchnorm-relu"):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"tdnnd{i + 1}", CAMDenseTDNNLayer(in_channels + i * out_channels, out_channels,
                                                               bn_channels, kernel_size, dilation, config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, config: str = "batchnorm-relu"):
        super().__init__()
        self.nonlinear = nonlinear(config, in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, config: str = "batchnorm_"):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = nonlinear(config, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class StatsPool(nn.Module):
    """Mean and unbiased standard deviation over time, ``sqrt(var + eps)``."""

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x.mean(dim=-1), torch.sqrt(x.var(dim=-1) + self.eps)), dim=1)


def BasicResBlock(in_planes: int, planes: int, stride: int = 1) -> BasicBlock:
    """The FCM's 2-D basic block: WeSpeaker's ResNet block (the same layers and names), striding along frequency
    only."""
    return BasicBlock(in_planes, planes, (stride, 1) if stride != 1 else 1)


class FCM(nn.Module):
    def __init__(self, num_blocks=(2, 2), m_channels: int = 32, feat_dim: int = 80):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = nn.Sequential(*(BasicResBlock(m_channels, m_channels, 2 if i == 0 else 1)
                                      for i in range(num_blocks[0])))
        self.layer2 = nn.Sequential(*(BasicResBlock(m_channels, m_channels, 2 if i == 0 else 1)
                                      for i in range(num_blocks[1])))
        self.conv2 = nn.Conv2d(m_channels, m_channels, kernel_size=3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m_channels)
        self.out_channels = m_channels * -(-feat_dim // 8)       # the map's height after three stride-2 convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(out)))))
        return out.flatten(1, 2)


class CAMPPlus(nn.Module):
    """Features ``(batch, n_mels, frames)`` -> embeddings ``(batch, nOut)`` (:meth:`embed`); with its front end,
    waveforms ``(batch, samples)`` -> embeddings (``forward``)."""

    def __init__(self, nOut: int = 512, n_mels: int = 80, growth_rate: int = 32, bn_size: int = 4,
                 init_channels: int = 128, config: str = "batchnorm-relu", frontend: nn.Module | None = None,
                 stats_eps: float = 1e-7):
        super().__init__()
        if n_mels < 8:
            raise SpeakerNetError(f"CAM++ needs at least 8 bands (three stride-2 convs), got n_mels {n_mels}")
        self.frontend = frontend
        self.head = FCM(feat_dim=n_mels)
        channels = self.head.out_channels
        self.xvector = nn.Sequential(OrderedDict([("tdnn", TDNNLayer(channels, init_channels, 5, stride=2,
                                                                     config=config))]))
        channels = init_channels
        for i, (num_layers, kernel_size, dilation) in enumerate(zip((12, 24, 16), (3, 3, 3), (1, 2, 2))):
            self.xvector.add_module(f"block{i + 1}", CAMDenseTDNNBlock(num_layers, channels, growth_rate,
                                                                       bn_size * growth_rate, kernel_size,
                                                                       dilation, config))
            channels += num_layers * growth_rate
            self.xvector.add_module(f"transit{i + 1}", TransitLayer(channels, channels // 2, config))
            channels //= 2
        self.xvector.add_module("out_nonlinear", nonlinear(config, channels))
        self.xvector.add_module("stats", StatsPool(stats_eps))
        self.xvector.add_module("dense", DenseLayer(channels * 2, nOut, config="batchnorm_"))
        for module in self.modules():            # WeSpeaker's and 3D-Speaker's initialisation
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight.data)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """The FCM's conv -> BN pairs, the TDNN layer's, and each dense layer's bottleneck conv -> BN (the other
        BatchNorms come before their conv)."""
        pairs = [("head.conv1", "head.bn1"), ("head.conv2", "head.bn2"),
                 ("xvector.tdnn.linear", "xvector.tdnn.nonlinear.batchnorm")]
        for name, module in self.named_modules():
            if isinstance(module, BasicBlock):
                pairs += [(f"{name}.{conv}", f"{name}.{norm}") for conv, norm in module.fusable_conv_bn_pairs()]
            elif isinstance(module, CAMDenseTDNNLayer):
                pairs.append((f"{name}.linear1", f"{name}.nonlinear2.batchnorm"))
        return pairs

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """WeSpeaker's and 3D-Speaker's ``forward`` on ``features.transpose(1, 2)``."""
        return self.xvector(self.head(features))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.embed(self.frontend(waves))


def MainModel(nOut: int = 512, encoder_type: str = "TSTP", n_mels: int = 80, log_input: bool = True,
              window: str = "hamming", frontend: str = "kaldi_fbank", **kwargs):
    check_choice("encoder_type", encoder_type, ENCODERS)
    check_feature_frontend("CAMPPlus", frontend)
    return CAMPPlus(nOut=nOut, n_mels=n_mels, frontend=make_frontend(frontend, n_mels, window, log_input=log_input))
