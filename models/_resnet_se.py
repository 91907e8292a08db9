"""Building blocks of the original's ResNet-SE networks (parameter names match its checkpoints)."""

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from spknet.constants import SAMPLE_RATE
from spknet.errors import SpeakerNetError

from ._frontend import check_feature_frontend, make_frontend, window_function


class SELayer(nn.Module):
    """Squeeze-excitation: channel weights from the global average, through a c/reduction bottleneck."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x):
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class SEBasicBlock(nn.Module):
    """conv3x3 -> ReLU -> BN -> conv3x3 -> BN -> SE -> + residual -> ReLU (the original's order)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride=1, downsample: nn.Module | None = None, reduction=8):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes, reduction)
        self.downsample = downsample

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """(conv, BatchNorm) pairs whose BatchNorm normalises only its conv's output (spknet.folding): conv2 -> bn2
        and the shortcut's conv -> BN. Not conv1 -> bn1: the in-place ReLU runs between them."""
        pairs = [("conv2", "bn2")]
        if self.downsample is not None:
            pairs.append(("downsample.0", "downsample.1"))
        return pairs

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + residual)


def se_layer(inplanes: int, planes: int, blocks: int, stride=1) -> nn.Sequential:
    """``blocks`` SE basic blocks, the first with ``stride`` and, when the shape changes, a 1x1 conv + BN shortcut
    (``downsample.0`` / ``downsample.1``, the original's and voxceleb_trainer's names)."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(planes))
    layers = [SEBasicBlock(inplanes, planes, stride, downsample)]
    layers += [SEBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def block_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """The foldable (conv, BatchNorm) pairs of every SE basic block inside ``model`` (spknet.folding)."""
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, SEBasicBlock):
            pairs += [(f"{name}.{conv}", f"{name}.{norm}") for conv, norm in module.fusable_conv_bn_pairs()]
    return pairs


def make_filterbank(n_mels: int = 40, window: str = "hann") -> torchaudio.transforms.MelSpectrogram:
    """The original's mel front end (Hann window; voxceleb_trainer uses Hamming)."""
    return torchaudio.transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=512, win_length=400, hop_length=160,
                                                f_min=0.0, f_max=8000, pad=0, n_mels=n_mels,
                                                window_fn=window_function(window))


def init_resnet_weights(network: nn.Module) -> None:
    """The original's (and voxceleb_trainer's) initialisation: Kaiming-normal convolutions, BatchNorm 1 and 0."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)


class ResNetSE(nn.Module):
    """Log-mel front end, ResNet with SE blocks, frequency averaging, attentive pooling, linear embedding.

    ``frontend`` ``logmel`` (default) is the original's: a mel spectrogram without pre-emphasis, log, instance
    norm, as ``torchfb`` and ``instancenorm``; another front end (``kaldi_fbank``, ``speechbrain_fbank``) is
    ``self.frontend`` and replaces both (its features are already mean-normalised)."""

    def __init__(self, layers, num_filters, nOut: int = 512, encoder_type: str = "SAP", n_mels: int = 40,
                 log_input: bool = True, window: str = "hann", frontend: str = "logmel", **kwargs):
        super().__init__()
        check_feature_frontend(type(self).__name__, frontend)
        if frontend == "logmel":
            # Attribute names are the original's, so that its checkpoints load unchanged.
            # the window is a buffer of the front end: a loaded checkpoint keeps its own
            self.torchfb = make_filterbank(n_mels, window)
            self.instancenorm = nn.InstanceNorm1d(n_mels)
        else:
            self.frontend = make_frontend(frontend, n_mels, window, log_input=log_input)
        self.log_input = log_input
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(1, num_filters[0], kernel_size=7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        strides = [1, (2, 2), (2, 2), 1]
        for index, (planes, blocks, stride) in enumerate(zip(num_filters, layers, strides), start=1):
            setattr(self, f"layer{index}", self._make_layer(planes, blocks, stride))
        channels = num_filters[3]
        if encoder_type not in ("SAP", "ASP"):
            raise SpeakerNetError(f"unknown encoder_type {encoder_type!r}: choose SAP or ASP")
        self.encoder_type = encoder_type
        self.sap_linear = nn.Linear(channels, channels)
        self.attention = nn.Parameter(torch.empty(channels, 1))
        nn.init.xavier_normal_(self.attention)
        self.fc = nn.Linear(channels if encoder_type == "SAP" else 2 * channels, nOut)
        self._init_weights()

    def _make_layer(self, planes, blocks, stride):
        layer = se_layer(self.inplanes, planes, blocks, stride)
        self.inplanes = planes
        return layer

    def _init_weights(self):
        init_resnet_weights(self)

    def fusable_conv_bn_pairs(self) -> list[tuple[str, str]]:
        """(conv, BatchNorm) pairs that spknet.folding may fold for inference: the stem's conv1 -> bn1 and each
        block's own pairs (:meth:`SEBasicBlock.fusable_conv_bn_pairs`)."""
        return [("conv1", "bn1")] + block_pairs(self)

    def log_mel(self, waves: torch.Tensor) -> torch.Tensor:
        """Waveform -> instance-normalised log mel (or the features of ``frontend``), ``(batch, 1, n_mels,
        frames)``, in float32 and without gradient (it has no parameters)."""
        if not hasattr(self, "torchfb"):
            return self.frontend(waves).unsqueeze(1)
        with torch.no_grad(), torch.autocast(device_type=waves.device.type, enabled=False):
            x = self.torchfb(waves.to(self.torchfb.spectrogram.window.dtype)) + 1e-6   # float32 unless .double()
            if self.log_input:
                x = x.log()
            return self.instancenorm(x).unsqueeze(1)

    def attentive_pooling(self, x: torch.Tensor) -> torch.Tensor:
        """SAP: attention-weighted mean over time; ASP adds the weighted standard deviation. x: (B, T, C)."""
        h = torch.tanh(self.sap_linear(x))
        w = F.softmax(torch.matmul(h, self.attention), dim=1)
        mean = torch.sum(x * w, dim=1)
        if self.encoder_type == "SAP":
            return mean
        std = torch.sqrt((torch.sum(x * x * w, dim=1) - mean * mean).clamp(min=1e-5))
        return torch.cat((mean, std), dim=1)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = self.log_mel(waves)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.mean(dim=2)                       # over frequency; the original's AvgPool2d((5, 1)) for 40 mels
        return self.fc(self.attentive_pooling(x.transpose(1, 2)))
