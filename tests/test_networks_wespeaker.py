"""WeSpeaker's networks: the ResNet family by depth (ResNet18 ... ResNet293, one body in models/_wespeaker_resnet.py),
CAM++ (models/CAMPPlus.py, WeSpeaker's and 3D-Speaker's layout), the ECAPA-TDNNs (models/_wespeaker_ecapa.py; their
import in tests/test_import_wespeaker_ecapa.py) and the SimAM-ResNets (models/_wespeaker_simam.py; their import in
tests/test_import_wespeaker_simam.py): parameter counts to the parameter against the
published figures and against WeSpeaker's own model code (wespeaker-unofficial, where installed: the same keys and
shapes), training steps with the losses, BatchNorm folding, their options."""

import copy
import importlib
import importlib.util
import sys

import pytest
import torch

import SpeakerNet
from spknet import plugins
from spknet.errors import SpeakerNetError
from spknet.folding import fold_batch_norms, inference_copy
from tests.oracles import randomise, wespeaker_module
from trainSpeakerNet import spec_from_argv

DEPTHS = (18, 34, 50, 101, 152, 221, 293)
ECAPAS = ("ECAPA_TDNN_c512", "ECAPA_TDNN_GLOB_c512", "ECAPA_TDNN_c1024", "ECAPA_TDNN_GLOB_c1024")
SIMAMS = ("SimAM_ResNet34_ASP", "SimAM_ResNet100_ASP")
# Published: WeSpeaker's model cards and the counts of its own code (256-d, TSTP, 80 fbanks; CAM++ 512-d)
PUBLISHED = {"ResNet34": 6_634_336, "ResNet293": 28_626_016, "CAMPPlus": 7_176_224}


def build(name: str, **options) -> torch.nn.Module:
    return plugins.load("models", name)(**options)


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name,count", sorted(PUBLISHED.items()))
def test_parameter_counts_are_the_published_ones_to_the_parameter(name, count):
    assert parameters(build(name, frontend="kaldi_fbank")) == count


def test_the_front_end_adds_no_parameter_and_resnet34_keeps_its_log_mel():
    net = plugins.load("models", "ResNet34")()
    assert parameters(net) == PUBLISHED["ResNet34"]
    keys = net.state_dict()
    assert {"torchfb.0.flipped_filter", "torchfb.1.spectrogram.window", "torchfb.1.mel_scale.fb"} <= set(keys)
    assert not [key for key in build("ResNet34", frontend="kaldi_fbank").state_dict() if "frontend" in key]


def wespeaker_networks():
    resnet = wespeaker_module("models.resnet")
    campplus = wespeaker_module("models.campplus")
    networks = {f"ResNet{depth}": lambda depth=depth: getattr(resnet, f"ResNet{depth}")(feat_dim=80, embed_dim=256)
                for depth in DEPTHS}
    networks["CAMPPlus"] = lambda: campplus.CAMPPlus(feat_dim=80, embed_dim=512)
    ecapa = wespeaker_module("models.ecapa_tdnn")
    for name in ECAPAS:
        networks[name] = lambda name=name: getattr(ecapa, name)(feat_dim=80, embed_dim=192, pooling_func="ASTP")
    simam = wespeaker_module("models.samresnet")
    for name in SIMAMS:
        networks[name] = lambda name=name: getattr(simam, name)(in_planes=64, embed_dim=256, acoustic_dim=80)
    return networks


@pytest.mark.parametrize("name", [f"ResNet{depth}" for depth in DEPTHS] + ["CAMPPlus", *ECAPAS, *SIMAMS])
def test_keys_shapes_and_counts_are_wespeakers_own(name):
    theirs = wespeaker_networks()[name]()
    ours = build(name, frontend="kaldi_fbank")
    assert parameters(ours) == parameters(theirs)
    assert {key: value.shape for key, value in ours.state_dict().items()} == \
        {key: value.shape for key, value in theirs.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------
# Training, folding, options
# ----------------------------------------------------------------------------------------------------------------

SMALL = {"ResNet18": {"channels": 4}, "ResNet50": {"channels": 4}, "CAMPPlus": {}}


def waves(batch=4, samples=8000, seed=0):
    return (torch.rand(batch, samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * 3000


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("trainfunc", ["aamsoftmax", "angleproto"])
def test_a_training_step_with_each_kind_of_loss(name, trainfunc, one_thread):
    torch.manual_seed(0)
    net = SpeakerNet.SpeakerNet.build(model=name, trainfunc=trainfunc, nSpeakers=2, nOut=16,
                                      frontend="kaldi_fbank", **SMALL[name])
    net.train()
    loss, _ = net(waves(), torch.tensor([0, 0, 1, 1]), 2)
    loss.backward()
    grads = [p.grad for p in net.__S__.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_folding_keeps_the_embeddings(name, one_thread):
    torch.manual_seed(0)
    net = randomise(plugins.load("models", name)(nOut=16, frontend="kaldi_fbank", **SMALL[name]))
    audio = waves(2)
    with torch.no_grad():
        expected = net(audio)
        fast = inference_copy(net, audio, channels_last=True)
        assert torch.allclose(fast(audio), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        assert fold_batch_norms(copy.deepcopy(net), audio) > 0


@pytest.mark.parametrize("argv,expected", [
    (["--model", "ResNet293"], ("kaldi_fbank", 256, 80, "TSTP", "hamming", 32)),
    (["--model", "ResNet34"], ("logmel", 256, 80, "TSTP", "hamming", 32)),
    (["--model", "ResNet34", "--frontend", "kaldi_fbank"], ("kaldi_fbank", 256, 80, "TSTP", "hamming", 32)),
    (["--model", "CAMPPlus"], ("kaldi_fbank", 512, 80, "TSTP", "hamming", None)),
    (["--model", "CAMPPlus", "--nOut", "192"], ("kaldi_fbank", 192, 80, "TSTP", "hamming", None))])
def test_unset_options_are_the_networks_own(argv, expected):
    model = spec_from_argv(argv).model
    assert (model.frontend, model.nOut, model.n_mels, model.encoder_type, model.window, model.channels) == expected


def test_options_the_networks_lack_are_user_errors():
    with pytest.raises(SpeakerNetError, match="model CAMPPlus has no option --channels"):
        spec_from_argv(["--model", "CAMPPlus", "--channels", "64"])
    with pytest.raises(SpeakerNetError, match="unknown encoder_type 'ASP': choose TSTP"):
        plugins.load("models", "ResNet101")(encoder_type="ASP")
    with pytest.raises(SpeakerNetError, match="unknown encoder_type 'ASP': choose TSTP"):
        plugins.load("models", "CAMPPlus")(encoder_type="ASP")
    with pytest.raises(SpeakerNetError, match="takes features, not frontend 'waveform'"):
        plugins.load("models", "CAMPPlus")(frontend="waveform")


def test_the_oracle_loader_leaves_no_half_registered_package():
    """wespeaker's modules are loaded from the package's folder without its __init__ (which needs the CLI's
    dependencies): the stand-in package has a spec, so find_spec and later imports still work."""
    wespeaker_module("models.resnet")
    assert importlib.util.find_spec("wespeaker.models.campplus") is not None
    assert sys.modules["wespeaker"].__spec__.submodule_search_locations
    assert importlib.import_module("wespeaker.models.pooling_layers").TSTP
