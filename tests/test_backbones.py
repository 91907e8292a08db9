"""The newer networks (ResNetSE34V2, ECAPA_TDNN, ResNet34): shapes, gradients, a training step with the losses,
parameter counts, BatchNorm folding, checkpoints, and voxceleb_trainer's ResNetSE34V2 reproduced key for key."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

import SpeakerNet
from spknet import plugins
from spknet.checkpoints import infer_model_config
from spknet.errors import SpeakerNetError
from spknet.folding import fold_batch_norms, inference_copy
from tests.helpers import run_cli, saved_run_checkpoint
from trainSpeakerNet import spec_from_argv

# Small but real configurations of each network (the widths the tests can afford on 2 cores)
SMALL = {"ResNetSE34V2": {"n_mels": 16}, "ECAPA_TDNN": {"channels": 64}, "ResNet34": {"channels": 8}}
ENCODERS = [("ResNetSE34V2", "SAP"), ("ResNetSE34V2", "ASP"), ("ECAPA_TDNN", "SAP"), ("ECAPA_TDNN", "ASP"),
            ("ResNet34", "TSTP")]


def waves(batch=3, samples=4000, seed=0):
    """Random float waveforms in [-1, 1] (0.25 s at 16 kHz by default)."""
    return torch.rand(batch, samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def build(name, **options):
    torch.manual_seed(0)
    return plugins.load("models", name)(**{**SMALL[name], **options})


def randomise(model: nn.Module, seed=1) -> nn.Module:
    """Random parameters and BatchNorm statistics, so that no layer is an identity a bug could hide behind."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if "torchfb" in name or tensor.dtype not in (torch.float32, torch.float64):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("weight") and tensor.dim() == 1:        # norm scales
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5)
    return model


# ----------------------------------------------------------------------------------------------------------------
# voxceleb_trainer's ResNetSE34V2, written here independently the way its models/ResNetSE34V2.py, ResNetBlocks.py
# and utils.PreEmphasis define it: its own module structure and forward code, none of ours.
# ----------------------------------------------------------------------------------------------------------------

class VtSELayer(nn.Module):
    def __init__(self, channel, reduction=8):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel), nn.Sigmoid())

    def forward(self, x):
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class VtSEBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None, reduction=8):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = VtSELayer(planes, reduction)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.conv1(x)
        out = self.relu(out)
        out = self.bn1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.se(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class VtPreEmphasis(nn.Module):
    def __init__(self, coef=0.97):
        super().__init__()
        self.register_buffer("flipped_filter", torch.FloatTensor([-coef, 1.0]).unsqueeze(0).unsqueeze(0))

    def forward(self, x):
        x = F.pad(x.unsqueeze(1), (1, 0), "reflect")
        return F.conv1d(x, self.flipped_filter).squeeze(1)


class VtResNetSE34V2(nn.Module):
    def __init__(self, nOut, encoder_type="SAP", n_mels=40, log_input=True, layers=(3, 4, 6, 3),
                 num_filters=(32, 64, 128, 256)):
        super().__init__()
        self.inplanes = num_filters[0]
        self.encoder_type, self.n_mels, self.log_input = encoder_type, n_mels, log_input
        self.conv1 = nn.Conv2d(1, num_filters[0], kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[0], layers[0])
        self.layer2 = self._make_layer(num_filters[1], layers[1], stride=(2, 2))
        self.layer3 = self._make_layer(num_filters[2], layers[2], stride=(2, 2))
        self.layer4 = self._make_layer(num_filters[3], layers[3], stride=(2, 2))
        self.instancenorm = nn.InstanceNorm1d(n_mels)
        self.torchfb = nn.Sequential(VtPreEmphasis(), torchaudio.transforms.MelSpectrogram(
            sample_rate=16000, n_fft=512, win_length=400, hop_length=160, window_fn=torch.hamming_window,
            n_mels=n_mels))
        outmap_size = int(n_mels / 8)
        self.attention = nn.Sequential(
            nn.Conv1d(num_filters[3] * outmap_size, 128, kernel_size=1), nn.ReLU(), nn.BatchNorm1d(128),
            nn.Conv1d(128, num_filters[3] * outmap_size, kernel_size=1), nn.Softmax(dim=2))
        out_dim = num_filters[3] * outmap_size * (1 if encoder_type == "SAP" else 2)
        self.fc = nn.Linear(out_dim, nOut)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [VtSEBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(VtSEBasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        with torch.no_grad():
            x = self.torchfb(x) + 1e-6
            if self.log_input:
                x = x.log()
            x = self.instancenorm(x).unsqueeze(1)
        x = self.bn1(self.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.reshape(x.size()[0], -1, x.size()[-1])
        w = self.attention(x)
        if self.encoder_type == "SAP":
            x = torch.sum(x * w, dim=2)
        else:
            mu = torch.sum(x * w, dim=2)
            sg = torch.sqrt((torch.sum((x ** 2) * w, dim=2) - mu ** 2).clamp(min=1e-5))
            x = torch.cat((mu, sg), 1)
        return self.fc(x.view(x.size()[0], -1))


def assert_embeddings_agree(ours, reference, tolerance=1e-5):
    scale = reference.abs().max().item()
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() <= tolerance * max(scale, 1.0), (ours - reference).abs().max()


@pytest.mark.parametrize("encoder_type,n_mels", [("ASP", 64), ("SAP", 16)])
def test_voxceleb_trainer_resnetse34v2_loads_key_for_key(tmp_path, encoder_type, n_mels):
    torch.manual_seed(3)
    reference = randomise(VtResNetSE34V2(nOut=48, encoder_type=encoder_type, n_mels=n_mels)).eval()
    classes = 7
    # voxceleb_trainer saves its SpeakerNet's flat state dict: __S__. network keys and __L__. loss keys
    state = {f"__S__.{key}": value for key, value in reference.state_dict().items()}
    state["__L__.weight"] = torch.randn(classes, 48)                     # its aamsoftmax: (nClasses, nOut)
    path = tmp_path / "vt_resnetse34v2.model"
    torch.save(state, path)
    audio = waves(2, 3200, seed=5)
    with torch.no_grad():
        expected = reference(audio)

    config = infer_model_config(state, str(path))
    assert config == {"model": "ResNetSE34V2", "encoder_type": encoder_type, "nOut": 48, "n_mels": n_mels,
                      "window": "hamming", "log_input": True, "audio_scale": "float", "pad": "wrap", "trainfunc": ""}
    embedder = SpeakerNet.load_embedder(str(path), device="cpu")              # no model flag
    assert (embedder.pipeline.scale, embedder.pipeline.pad) == ("float", "wrap")
    assert_embeddings_agree(embedder.embed(audio[0].numpy()), expected[:1])    # through its float pipeline

    net = SpeakerNet.SpeakerNet.build(model="ResNetSE34V2", trainfunc="aamsoftmax", nOut=48, nSpeakers=classes,
                                encoder_type=encoder_type, n_mels=n_mels)
    net.load_state_dict(state, strict=True)
    net.eval()
    with torch.no_grad():
        assert_embeddings_agree(net.__S__(audio), expected)


def test_resnetse34v2_defaults_are_the_published_checkpoints():
    """Its MainModel's defaults are voxceleb_trainer's published ResNetSE34V2 (512-d, ASP, 64 log-mel bands,
    Hamming window): such a checkpoint loads with no model flag, in --eval as with load_embedder."""
    net = plugins.load("models", "ResNetSE34V2")()
    reference_keys = {key: value.shape for key, value in VtResNetSE34V2(nOut=512, encoder_type="ASP",
                                                                        n_mels=64).state_dict().items()}
    assert {key: value.shape for key, value in net.state_dict().items()} == reference_keys
    assert net.log_input and torch.allclose(net.torchfb[1].spectrogram.window, torch.hamming_window(400))


# ----------------------------------------------------------------------------------------------------------------
# Every network
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,encoder_type", ENCODERS)
def test_output_shape_and_options(name, encoder_type):
    net = build(name, nOut=24, encoder_type=encoder_type, n_mels=32, window="hann").eval()
    with torch.no_grad():
        out = net(waves(2))
    assert out.shape == (2, 24) and torch.isfinite(out).all()
    assert net.torchfb[1].mel_scale.fb.shape[1] == 32                                          # n_mels honoured
    assert torch.allclose(net.torchfb[1].spectrogram.window, torch.hann_window(400))            # window honoured


@pytest.mark.parametrize("name", sorted(SMALL))
def test_log_input_is_honoured(name):
    audio = waves(2)
    with_log, without_log = build(name, nOut=8).eval(), build(name, nOut=8, log_input=False).eval()
    with torch.no_grad():
        assert not torch.allclose(with_log(audio), without_log(audio))


@pytest.mark.parametrize("name,encoder_type,message", [
    ("ResNetSE34V2", "TSTP", "choose SAP or ASP"), ("ECAPA_TDNN", "TAP", "choose SAP or ASP"),
    ("ResNet34", "ASP", "unknown encoder_type 'ASP': choose TSTP")])
def test_unknown_encoder_is_a_user_error(name, encoder_type, message):
    with pytest.raises(SpeakerNetError, match=message):
        build(name, encoder_type=encoder_type)


def test_ecapa_channels_must_split_into_the_res2net_scale():
    with pytest.raises(SpeakerNetError, match="multiple of 8"):
        plugins.load("models", "ECAPA_TDNN")(channels=100)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradient_reaches_every_parameter(name):
    net = build(name, nOut=16).train()
    out = net(waves(2))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    missing = [key for key, parameter in net.named_parameters()
               if parameter.grad is None or not parameter.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("trainfunc", ["mp_balance", "aamsoftmax"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_training_step_with_each_loss(name, trainfunc):
    torch.manual_seed(0)
    net = SpeakerNet.SpeakerNet.build(model=name, trainfunc=trainfunc, nSpeakers=3, **SMALL[name])
    per_group = net.utterances_per_speaker
    labels = torch.arange(3).repeat_interleave(per_group)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    loss, accuracy = net(waves(3 * per_group, 3200), labels, 3)
    assert torch.isfinite(loss) and torch.isfinite(accuracy)
    loss.backward()
    optimizer.step()
    assert all(torch.isfinite(parameter).all() for parameter in net.parameters())
    with torch.no_grad():
        assert torch.isfinite(net(waves(3 * per_group, 3200, seed=1), labels, 3)[0])


def test_the_loss_sees_the_networks_own_embedding_size():
    """With nOut left unset (None, as the command line leaves it), the loss gets the network's default."""
    for name, size in [("ECAPA_TDNN", 192), ("ResNet34", 256), ("ResNetSE34V2", 512), ("ResNetSE34L", 512)]:
        net = SpeakerNet.SpeakerNet.build(model=name, trainfunc="aamsoftmax", nSpeakers=3, nOut=None,
                                    **SMALL.get(name, {}))
        assert net.__L__.weight.shape == (3, size), name


def parameters(name, **options):
    return sum(p.numel() for p in plugins.load("models", name)(**options).parameters())


@pytest.mark.parametrize("name,options,published", [
    ("ECAPA_TDNN", {"channels": 512}, 6.2e6),         # Desplanques et al. 2020, Table 1
    ("ECAPA_TDNN", {"channels": 1024}, 14.7e6),
    ("ResNet34", {}, 6.6e6),                          # WeSpeaker's ResNet34 (6.63 M)
    ("ResNetSE34V2", {}, 8.0e6),                      # H/ASP of "In defence of metric learning" (8.0 M)
    ("ResNetSE34L", {}, 1.4e6)])                      # the original's fast ResNet-34 (1.4 M)
def test_parameter_counts_are_the_published_ones(name, options, published):
    assert abs(parameters(name, **options) / published - 1) < 0.03


@pytest.mark.parametrize("name", sorted(SMALL))
def test_folded_inference_copy_gives_the_same_embeddings(name):
    net = randomise(build(name, nOut=16)).eval()
    audio = waves(2)
    with torch.no_grad():
        expected = net(audio)
        fast = inference_copy(net, audio, channels_last=True)
        assert torch.allclose(fast(audio), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        folded = fold_batch_norms(copy.deepcopy(net), audio)
    # ECAPA's BatchNorms all follow a ReLU or the pooling: nothing to fold; the ResNets fold their blocks
    assert (folded > 0) == (name != "ECAPA_TDNN")


# ----------------------------------------------------------------------------------------------------------------
# Options, checkpoints, the command line
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    ([], (512, 40, "SAP", "hann", None)),                                   # the original's defaults
    (["--model", "ResNetSE34L"], (512, 40, "SAP", "hann", None)),
    (["--model", "ResNetSE34V2"], (512, 64, "ASP", "hamming", None)),
    (["--model", "ECAPA_TDNN"], (192, 80, "ASP", "hamming", 512)),
    (["--model", "ECAPA_TDNN", "--channels", "1024", "--n_mels", "64", "--nOut", "256", "--encoder", "SAP"],
     (256, 64, "SAP", "hamming", 1024)),
    (["--model", "ResNet34"], (256, 80, "TSTP", "hamming", 32))])
def test_unset_model_options_are_the_networks_own(argv, expected):
    model = spec_from_argv(argv).model
    assert (model.nOut, model.n_mels, model.encoder_type, model.window, model.channels) == expected


def test_an_option_the_network_lacks_is_a_user_error():
    with pytest.raises(SpeakerNetError, match="model ResNetSE34L has no option --channels; models with it: "
                                              "ECAPA_TDNN, ") as raised:
        spec_from_argv(["--model", "ResNetSE34L", "--channels", "64"])
    named = str(raised.value).split("models with it: ")[1].split(", ")
    assert {"ECAPA_TDNN", "ResNet34"} <= set(named) and "ResNetSE34L" not in named and "ResNetSE34V2" not in named


@pytest.mark.parametrize("name", ["ECAPA_TDNN", "ResNet34"])
def test_own_checkpoint_round_trip(tmp_path, name):
    """A SpeakerNet checkpoint carries its run's model options (channels included): load_embedder rebuilds the
    same network from them alone and gives the same embeddings."""
    channels = str(SMALL[name]["channels"])
    torch.manual_seed(0)
    path = tmp_path / "model000000001.model"
    net = saved_run_checkpoint(["--model", name, "--channels", channels, "--trainfunc", "aamsoftmax", "--nSpeakers",
                                "4", "--n_mels", "40", "--audio_scale", "float"], path,
                               randomise=lambda net: randomise(net.__S__))
    embedder = SpeakerNet.load_embedder(str(path), device="cpu")
    audio = waves(1, 4800)[0].numpy()
    net.__S__.eval()
    with torch.no_grad():
        expected = net.__S__(torch.from_numpy(audio)[None])
    assert embedder.network.torchfb[1].mel_scale.fb.shape[1] == 40
    assert_embeddings_agree(embedder.embed(audio), expected)
    assert embedder.embed(np.concatenate([audio, audio])).shape == (1, net.spec.nOut)


@pytest.mark.slow
def test_ecapa_trains_from_the_command_line(tiny_corpus, tmp_path):
    save_path = tmp_path / "ecapa"
    result = run_cli("--model", "ECAPA_TDNN", "--channels", "128", "--trainfunc", "mp_balance", "--max_epoch", "1",
                     "--max_frames", "50", "--eval_frames", "0", "--batch_size", "8", "--nDataLoaderThread", "2",
                     "--optimizer", "adam", "--lr", "0.001",
                     "--train_list", tiny_corpus["train_list"], "--test_list", tiny_corpus["test_list"],
                     "--train_path", tiny_corpus["train_path"], "--test_path", tiny_corpus["test_path"],
                     "--save_path", save_path)
    assert result.returncode == 0, result.stderr[-3000:]
    header = (save_path / "result" / "scores.txt").read_text().splitlines()
    assert {"model ECAPA_TDNN", "channels 128", "n_mels 80", "nOut 192", "encoder_type ASP"} <= set(header)
    checkpoint = save_path / "model" / "model000000001.model"
    embedder = SpeakerNet.load_embedder(str(checkpoint), device="cpu")
    assert sum(p.numel() for p in embedder.network.parameters()) == parameters("ECAPA_TDNN", channels=128)
    assert embedder.embed(waves(1, 16000)[0].numpy() * 0.1).shape == (1, 192)
