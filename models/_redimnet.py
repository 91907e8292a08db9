"""ReDimNet (Yakovlev et al., "Reshape Dimensions Network for Speaker Recognition", Interspeech 2024), as WeSpeaker
publishes it (wespeaker/models/redimnet.py, ported from the authors' IDRnD/ReDimNet): the body of the plugins
``ReDimNetB0`` ... ``ReDimNetB6``, whose configurations (:data:`CONFIGS`) are WeSpeaker's ``ReDimNetB0()`` ...
``ReDimNetB6()``.

The network alternates between a 2D map ``(batch, C, F, frames)`` and its 1D reshape ``(batch, C * F, frames)``
at a constant volume: a 3x3 stem of ``C`` channels, then stages that each take a learned softmax-weighted sum of all
earlier stages' 1D outputs, reshape it to 2D, trade frequency for channels (a ``(stride, 1)`` conv: ``stride``
times the channels, ``1/stride`` the bands), run 2D blocks (ConvNeXt-like, or ResNet basic blocks with optional
frequency-wise squeeze-excitation), reshape back to 1D and run a 1D time-context block (four ConvNeXt-like 1D blocks
with kernels 7, 19, 31, 59 and a transformer encoder layer) on a ``C * F // att_block_red`` bottleneck. The final
weighted sum of every stage's output is pooled by attentive statistics with global context (WeSpeaker's ``ASTP``)
and projected to the embedding by one linear layer (``seg_1``).

Module and parameter names are WeSpeaker's (``backbone.inputs_weights.3``, ``backbone.stage2.5.tcm.4.attention.
q_proj.weight``, ``pool.linear1``, ``seg_1``), so a WeSpeaker ReDimNet checkpoint loads key for key. The features
are WeSpeaker's 72 Kaldi fbanks (60 for B0) with the utterance mean subtracted, computed by the model's
``frontend``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from spknet.errors import SpeakerNetError

from ._frontend import check_choice, check_feature_frontend, make_frontend
from ._wespeaker_ecapa import AttentiveStatistics

# WeSpeaker's ReDimNetB0 ... B6: C, the 2D block, the group divisor, and per stage (stride, blocks, conv_exp,
# kernel_sizes (unused, kept as WeSpeaker writes them), att_block_red); every one has 1D block "conv+att", no
# ``out_channels`` (the pooled map is C * F rows), ASTP with global context. Default bands: 60 for B0, 72 else.
CONFIGS = {
    "B0": dict(n_mels=60, C=10, block_2d="basic_resnet", group_divisor=1,
               stages=((1, 2, 1, 30), (2, 3, 2, 30), (1, 3, 3, 30), (2, 4, 2, 10), (1, 3, 1, 10))),
    "B1": dict(n_mels=72, C=12, block_2d="convnext_like", group_divisor=8,
               stages=((1, 2, 1, None), (2, 3, 1, None), (3, 4, 1, 12), (2, 5, 1, 12), (2, 3, 1, 8))),
    "B2": dict(n_mels=72, C=16, block_2d="convnext_like", group_divisor=4,
               stages=((1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8), (2, 4, 1, 4))),
    "B3": dict(n_mels=72, C=16, block_2d="basic_resnet_fwse", group_divisor=1,
               stages=((1, 6, 4, 32), (2, 6, 2, 32), (1, 8, 2, 32), (2, 10, 2, 16), (1, 10, 1, 16), (2, 8, 1, 16))),
    "B4": dict(n_mels=72, C=32, block_2d="basic_resnet_fwse", group_divisor=1,
               stages=((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24), (2, 4, 1, 16))),
    "B5": dict(n_mels=72, C=32, block_2d="basic_resnet_fwse", group_divisor=16,
               stages=((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24), (2, 4, 1, 16))),
    "B6": dict(n_mels=72, C=32, block_2d="basic_resnet", group_divisor=32,
               stages=((1, 4, 4, 32), (2, 6, 2, 32), (1, 6, 2, 24), (3, 8, 1, 24), (1, 8, 1, 16), (2, 8, 1, 16))),
}
BLOCKS_2D = ("convnext_like", "basic_resnet", "basic_resnet_fwse")


class LayerNorm(nn.Module):
    """Layer normalisation over the channels of ``(batch, channels, ...)`` (WeSpeaker's ``channels_first``)."""

    def __init__(self, C: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        shape = (-1,) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)


def groups(channels: int, group_divisor: int) -> int:
    """WeSpeaker's ``channels // group_divisor`` groups of a grouped conv, checked: at least one, dividing the
    channels (a ``channels`` option too small for the configuration's divisor is an error naming both)."""
    count = channels // group_divisor
    if count < 1 or channels % count:
        raise SpeakerNetError(f"ReDimNet: {channels} channels cannot form {channels} // {group_divisor} groups; "
                              f"choose a larger channels option")
    return count


def new_gelu(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU (HuggingFace's ``NewGELUActivation``, the transformer layers' activation)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class ConvNeXtLikeBlock(nn.Module):
    """``x + pw(GELU(BN(dwconv(x))))`` in 1D or 2D (one kernel, "same" padding, ``C // group_divisor`` groups;
    WeSpeaker's ``dwconvs`` list, which every configuration fills with one conv)."""

    def __init__(self, C: int, dim: int, kernel_size, group_divisor: int = 1):
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.dwconvs = nn.ModuleList([conv(C, C, kernel_size=kernel_size, padding="same",
                                           groups=groups(C, group_divisor))])
        self.norm = norm(C)
        self.pwconv1 = conv(C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one kernel: WeSpeaker's concatenation of the one output is that output (and BN folding sees conv -> BN)
        return x + self.pwconv1(F.gelu(self.norm(self.dwconvs[0](x))))


class FwSEBlock(nn.Module):
    """Frequency-wise squeeze-excitation: each band scaled by a sigmoid of an MLP over the band means."""

    def __init__(self, num_freq: int, num_feats: int = 64):
        super().__init__()
        self.squeeze = nn.Linear(num_freq, num_feats)
        self.exitation = nn.Linear(num_feats, num_freq)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.exitation(F.relu(self.squeeze(torch.mean(inputs, dim=[1, 3])))))
        return inputs * x[:, None, :, None]


class ResBasicBlock(nn.Module):
    """A ResNet basic block of grouped 3x3 convs each followed by a pointwise conv: conv -> ReLU -> BN -> conv ->
    BN (-> fwSE), plus the input, ReLU (WeSpeaker's order, ReLU before the first BN)."""

    def __init__(self, planes: int, num_freq: int, se_channels: int, group_divisor: int, use_fwse: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False,
                               groups=groups(planes, group_divisor))
        self.conv1pw = nn.Conv2d(planes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False,
                               groups=groups(planes, group_divisor))
        self.conv2pw = nn.Conv2d(planes, planes, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = FwSEBlock(num_freq, se_channels) if use_fwse else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(F.relu(self.conv1pw(self.conv1(x))))
        out = self.se(self.bn2(self.conv2pw(self.conv2(out))))
        return F.relu(out + x)


class ConvBlock2d(nn.Module):
    def __init__(self, c: int, f: int, block_type: str, group_divisor: int):
        super().__init__()
        if block_type == "convnext_like":
            self.conv_block = ConvNeXtLikeBlock(c, dim=2, kernel_size=(3, 3), group_divisor=group_divisor)
        else:
            self.conv_block = ResBasicBlock(c, f, min(64, max(c, 32)), group_divisor,
                                            use_fwse=block_type == "basic_resnet_fwse")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x)


class MultiHeadAttention(nn.Module):
    """Self-attention of ``(batch, time, channels)`` (HuggingFace's wav2vec2 attention, no dropout)."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        if self.head_dim * num_heads != embed_dim:
            raise SpeakerNetError(f"ReDimNet: the attention width {embed_dim} is not a multiple of {num_heads} heads "
                                  "(choose n_mels and channels so that C * n_mels / att_block_red is)")
        self.scaling = self.head_dim ** -0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        return x.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2).reshape(
            batch * self.num_heads, -1, self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        query = self._heads(self.q_proj(x) * self.scaling, batch)
        key, value = self._heads(self.k_proj(x), batch), self._heads(self.v_proj(x), batch)
        weights = F.softmax(torch.bmm(query, key.transpose(1, 2)), dim=-1)
        out = torch.bmm(weights, value).view(batch, self.num_heads, length, self.head_dim).transpose(1, 2)
        return self.out_proj(out.reshape(batch, length, self.embed_dim))


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(hidden_size, intermediate_size)
        self.output_dense = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(new_gelu(self.intermediate_dense(x)))


class TransformerEncoderLayer(nn.Module):
    """Post-norm transformer layer on ``(batch, channels, time)``: attention, add, LayerNorm, MLP, add, LayerNorm."""

    def __init__(self, n_state: int, n_mlp: int, n_head: int, ln_eps: float = 1e-6):
        super().__init__()
        self.attention = MultiHeadAttention(n_state, n_head)
        self.layer_norm = nn.LayerNorm(n_state, eps=ln_eps)
        self.feed_forward = FeedForward(n_state, n_mlp)
        self.final_layer_norm = nn.LayerNorm(n_state, eps=ln_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 1)
        x = self.layer_norm(x + self.attention(x))
        x = self.final_layer_norm(x + self.feed_forward(x))
        return x.permute(0, 2, 1)


class TimeContextBlock1d(nn.Module):
    """``x + expand(tcm(reduce(x)))``, the "conv+att" time-context module on a ``hC``-channel bottleneck."""

    def __init__(self, C: int, hC: int):
        super().__init__()
        self.red_dim_conv = nn.Sequential(nn.Conv1d(C, hC, 1), LayerNorm(hC, eps=1e-6))
        self.tcm = nn.Sequential(*(ConvNeXtLikeBlock(hC, dim=1, kernel_size=k) for k in (7, 19, 31, 59)),
                                 TransformerEncoderLayer(n_state=hC, n_mlp=hC, n_head=4))
        self.exp_dim_conv = nn.Conv1d(hC, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.exp_dim_conv(self.tcm(self.red_dim_conv(x)))


def to1d(x: torch.Tensor) -> torch.Tensor:
    """``(batch, c, f, t)`` -> ``(batch, f * c, t)`` (frequency-major rows)."""
    return x.permute(0, 2, 1, 3).flatten(1, 2)


class To1d(nn.Module):
    """:func:`to1d` as a layer (WeSpeaker's ``to1d``, a place in each stage's Sequential)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to1d(x)


class ReDimNetBone(nn.Module):
    def __init__(self, F: int, C: int, block_2d: str, stages, group_divisor: int):
        super().__init__()
        self.F, self.C = F, C
        self.num_stages = len(stages)
        # WeSpeaker's list: a frozen 1 for the stem's lone output, then one (1, n + 1, C * F, 1) logit per sum
        self.inputs_weights = nn.ParameterList(
            [nn.Parameter(torch.ones(1, 1, 1, 1), requires_grad=False)]
            + [nn.Parameter(torch.zeros(1, inputs + 1, C * F, 1)) for inputs in range(1, len(stages) + 1)])
        self.stem = nn.Sequential(nn.Conv2d(1, C, kernel_size=3, stride=1, padding="same"), LayerNorm(C, eps=1e-6))
        reduction = math.prod(stage[0] for stage in stages)
        if F % reduction:
            raise SpeakerNetError(f"ReDimNet: its stages divide the bands by {reduction} in all: choose n_mels a "
                                  f"multiple of {reduction} (the product of the configuration's strides), not {F}")
        self.stages_cfs = []
        c, f = C, F
        for index, (stride, blocks, conv_exp, att_block_red) in enumerate(stages):
            layers = [nn.Conv2d(c, stride * c * conv_exp, kernel_size=(stride, 1), stride=(stride, 1))]
            self.stages_cfs.append((c, f))
            c, f = stride * c, f // stride
            layers += [ConvBlock2d(c * conv_exp, f, block_2d, group_divisor) for _ in range(blocks)]
            if conv_exp != 1:
                layers.append(nn.Sequential(
                    nn.Conv2d(c * conv_exp, c, kernel_size=(3, 3), stride=1, padding="same",
                              groups=groups(c, group_divisor)),
                    nn.BatchNorm2d(c, eps=1e-6), nn.GELU(), nn.Conv2d(c, c, 1)))
            layers.append(To1d())
            if att_block_red is not None:
                layers.append(TimeContextBlock1d(C * F, hC=(C * F) // att_block_red))
            setattr(self, f"stage{index}", nn.Sequential(*layers))
        self.mfa = nn.Identity()

    def weigh(self, outputs: list[torch.Tensor], index: int) -> torch.Tensor:
        stacked = torch.stack(outputs, dim=1)
        return (F.softmax(self.inputs_weights[index], dim=1) * stacked).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, F, frames)`` -> ``(batch, C * F, frames)``."""
        outputs = [to1d(self.stem(x))]
        for index in range(self.num_stages):
            c, f = self.stages_cfs[index]
            weighted = self.weigh(outputs, index)
            batch, _, t = weighted.shape
            outputs.append(getattr(self, f"stage{index}")(weighted.reshape(batch, f, c, t).permute(0, 2, 1, 3)))
        return self.mfa(self.weigh(outputs, -1))


class ReDimNet(nn.Module):
    """Features ``(batch, n_mels, frames)`` -> embeddings ``(batch, nOut)`` (:meth:`embed`); with a front end,
    waveforms -> embeddings (``forward``). ``channels`` overrides the configuration's ``C`` (a narrower network for
    tests; the published models keep theirs)."""

    def __init__(self, config: str, nOut: int = 192, n_mels: int | None = None, channels: int | None = None,
                 frontend: nn.Module | None = None):
        super().__init__()
        setup = CONFIGS[config]
        n_mels = setup["n_mels"] if n_mels is None else n_mels
        C = setup["C"] if channels is None else channels
        self.config = config
        self.frontend = frontend
        self.backbone = ReDimNetBone(n_mels, C, setup["block_2d"], setup["stages"], setup["group_divisor"])
        self.pool = AttentiveStatistics(C * n_mels, global_context=True)      # WeSpeaker's ASTP
        self.seg_1 = nn.Linear(2 * C * n_mels, nOut)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """WeSpeaker's ``forward(features.transpose(1, 2))[-1]``."""
        return self.seg_1(self.pool(self.backbone(features.unsqueeze(1))))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.embed(self.frontend(waves))


ENCODERS = ("ASP",)     # WeSpeaker's ASTP: attentive statistics pooling with global context


def main_model(config: str, nOut: int, encoder_type: str, n_mels: int | None, log_input: bool, window: str,
               channels: int | None, frontend: str) -> ReDimNet:
    """The plugin ``ReDimNet<config>``: the network on the spec's front end (WeSpeaker's: 72 Kaldi fbanks, 60 for
    B0, Hamming window, utterance mean subtracted)."""
    check_choice("encoder_type", encoder_type, ENCODERS)
    check_feature_frontend(f"ReDimNet{config}", frontend)
    n_mels = CONFIGS[config]["n_mels"] if n_mels is None else n_mels
    return ReDimNet(config, nOut=nOut, n_mels=n_mels, channels=channels,
                    frontend=make_frontend(frontend, n_mels, window, log_input=log_input))


def read_sizes(state: dict) -> dict | None:
    """``nOut``, ``n_mels`` and ``channels`` of a WeSpeaker ReDimNet state dict, read from its stem, its first
    stage's input weights and its embedding layer; None when those keys are missing or misshapen."""
    try:
        channels = state["backbone.stem.0.weight"].shape[0]
        return {"nOut": state["seg_1.weight"].shape[0], "n_mels": state["backbone.inputs_weights.1"].shape[2] //
                channels, "channels": channels}
    except (KeyError, IndexError, AttributeError):
        return None


def stage_count(state: dict) -> int:
    """How many stages (``backbone.stage<i>.*``) a ReDimNet state dict holds."""
    indices = [int(key.split(".")[1][len("stage"):]) for key in state
               if key.startswith("backbone.stage") and key.split(".")[1][len("stage"):].isdigit()]
    return 1 + max(indices, default=-1)


def distances(state: dict, sizes: dict) -> dict[str, int]:
    """Each configuration with the state dict's number of stages, built at ``sizes`` -> how many of its keys are
    missing from the state dict, unused by it or of another shape (0: the state dict is that configuration)."""
    found, stages = {key: tuple(value.shape) for key, value in state.items()}, stage_count(state)
    out = {}
    for config, setup in CONFIGS.items():
        if len(setup["stages"]) != stages:
            continue
        try:
            own = ReDimNet(config, **sizes).state_dict()
        except (SpeakerNetError, ValueError, RuntimeError):
            continue
        out[config] = len(set(own) ^ set(found)) + sum(tuple(own[key].shape) != found[key]
                                                       for key in set(own) & set(found))
    return out


def identify(state: dict) -> dict | None:
    """Which configuration a WeSpeaker ReDimNet state dict (keys ``backbone.*``, ``pool.*``, ``seg_1.*``, no
    ``projection.*``) is: ``{"model": "ReDimNetB<k>", "nOut", "n_mels", "channels"}`` when its keys and shapes are
    exactly one configuration's at some C and bands; None otherwise (for an importer to name what does not fit)."""
    sizes = read_sizes(state)
    exact = [config for config, distance in distances(state, sizes).items() if distance == 0] if sizes else []
    return {"model": f"ReDimNet{exact[0]}", **sizes} if exact else None
