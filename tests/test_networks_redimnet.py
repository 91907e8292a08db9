"""ReDimNet B0-B6 (WeSpeaker's configurations): the published parameter counts, and, where wespeaker-unofficial
(WeSpeaker's code, the ``oracles`` extra, installed without its dependencies) is importable, its own classes: the
same counts, the same state-dict keys and shapes, and the same embedding of the same features with copied weights.

The published configurations are built once per module, for counting and key layouts only; the forward checks run
narrower versions of each configuration (its own stages, block types and group divisor; fewer channels or bands)
on short inputs, built from WeSpeaker's own arguments for that configuration."""

import copy
import importlib
import importlib.util

import pytest
import torch
from torch import nn

import SpeakerNet
from spknet import plugins
from spknet.errors import SpeakerNetError
from tests.helpers import oracle_module
from tests.oracles import count, layout, randomise

CONFIGS = [f"B{index}" for index in range(7)]
# B2 and B6 as the issue counts them from WeSpeaker's package; the others counted from wespeaker-unofficial 0.0.2's
# ReDimNetB0()-B5() (the paper rounds them to 1.0, 2.2, 4.7, 3.0, 6.3, 9.2 and 15.0 M: WeSpeaker's B5 is smaller)
PUBLISHED = {"B0": 1_001_851, "B1": 2_123_481, "B2": 4_888_241, "B3": 3_220_413, "B4": 6_432_305, "B5": 7_650_545,
             "B6": 15_006_257}
# (channels, n_mels) of a narrow version that each configuration's strides, groups and attention heads allow
SMALL = {"B0": (2, 60), "B1": (8, 24), "B2": (4, 24), "B3": (4, 32), "B4": (8, 48), "B5": (16, 24), "B6": (32, 12)}

HAS_WESPEAKER = importlib.util.find_spec("wespeaker") is not None
needs_wespeaker = pytest.mark.skipif(not HAS_WESPEAKER, reason="wespeaker-unofficial (the oracles extra) is not "
                                                               "installed")


def wespeaker_redimnet():
    """``wespeaker.models.redimnet`` without running ``wespeaker/__init__.py`` (which imports its command-line
    dependencies)."""
    return oracle_module("wespeaker", "models.redimnet")


def oracle(config: str, channels: int | None = None, n_mels: int | None = None) -> nn.Module:
    """WeSpeaker's ``ReDimNet<config>()``, or the same configuration (WeSpeaker's own arguments for it, captured from
    its builder) with ``channels`` and ``n_mels`` changed."""
    module = wespeaker_redimnet()
    if channels is None:
        return getattr(module, f"ReDimNet{config}")()
    captured = {}

    class Capture:
        def __init__(self, **kwargs):
            captured.update(kwargs)

    original, module.ReDimNet = module.ReDimNet, Capture
    try:
        getattr(module, f"ReDimNet{config}")()
    finally:
        module.ReDimNet = original
    return original(**{**captured, "C": channels, "feat_dim": n_mels})


def small(config: str) -> nn.Module:
    channels, n_mels = SMALL[config]
    return plugins.load("models", f"ReDimNet{config}")(channels=channels, n_mels=n_mels)


@pytest.fixture(scope="module")
def published():
    torch.manual_seed(0)
    return {config: plugins.load("models", f"ReDimNet{config}")() for config in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS)
def test_parameter_counts_are_the_published_ones(published, config):
    assert count(published[config]) == PUBLISHED[config]


@needs_wespeaker
@pytest.mark.parametrize("config", CONFIGS)
def test_same_counts_and_keys_as_wespeaker(published, config):
    theirs = oracle(config)
    assert count(theirs) == count(published[config]) == PUBLISHED[config]
    assert layout(published[config]) == layout(theirs)
    assert list(published[config].state_dict()) == list(theirs.state_dict())


@needs_wespeaker
@pytest.mark.parametrize("config", CONFIGS)
def test_forward_matches_wespeaker_on_the_same_features(config):
    channels, n_mels = SMALL[config]
    torch.manual_seed(0)
    theirs = randomise(oracle(config, channels, n_mels))
    with torch.no_grad():                      # the stage weights' logits too (zero at initialisation: uniform)
        for name, parameter in theirs.named_parameters():
            if name.startswith("backbone.inputs_weights.") and parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(5)))
    theirs.eval()
    ours = small(config).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    features = torch.randn(2, n_mels, 23, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad():
        expected = theirs(features.transpose(1, 2).clone())[-1]   # (batch, frames, bands) -> (0, embedding)
        got = ours.embed(features)
    assert got.shape == expected.shape == (2, 192)
    assert (got - expected).abs().max().item() <= 1e-5 * max(expected.abs().max().item(), 1.0)


@pytest.mark.parametrize("config", CONFIGS)
def test_waveforms_in_embeddings_out(config):
    net = small(config).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3200) * 2 - 1)
    assert out.shape == (2, 192) and torch.isfinite(out).all()


@pytest.mark.parametrize("trainfunc", sorted(plugins.choices("loss")))
def test_trains_with_every_loss(trainfunc):
    """A loss sees only the embeddings: one step of the smallest configuration with each."""
    torch.manual_seed(0)
    net = SpeakerNet.SpeakerNet.build(model="ReDimNetB0", trainfunc=trainfunc, nSpeakers=3, channels=2, n_mels=60,
                                      nOut=16)
    per_group = 2 if net.utterances_per_speaker == "imbalanced" else net.utterances_per_speaker   # mp, mmp: 2 or 3
    labels = torch.arange(3).repeat_interleave(per_group)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    loss, _ = net(torch.rand(len(labels), 3200) * 2 - 1, labels, 3)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert all(torch.isfinite(parameter).all() for parameter in net.parameters())


@pytest.mark.parametrize("config", ["B1", "B3", "B6"])
def test_a_training_step_reaches_every_parameter(config):
    channels, n_mels = SMALL[config]
    torch.manual_seed(0)
    net = SpeakerNet.SpeakerNet.build(model=f"ReDimNet{config}", trainfunc="aamsoftmax", nSpeakers=3,
                                      channels=channels, n_mels=n_mels)
    labels = torch.arange(3).repeat_interleave(net.utterances_per_speaker)
    loss, _ = net(torch.rand(len(labels), 3200) * 2 - 1, labels, 3)
    loss.backward()
    missing = [key for key, parameter in net.__S__.named_parameters()
               if parameter.requires_grad and (parameter.grad is None or not parameter.grad.abs().sum() > 0)]
    assert not missing


def test_the_published_defaults_are_recorded():
    """The spec a run records: WeSpeaker's 192-d embedding on its Kaldi fbanks (72 bands, 60 for B0, Hamming)."""
    from spknet.specs import ModelSpec

    for config in CONFIGS:
        spec = ModelSpec(model=f"ReDimNet{config}").resolved()
        assert (spec.nOut, spec.n_mels, spec.window, spec.frontend, spec.encoder_type) == \
            (192, 60 if config == "B0" else 72, "hamming", "kaldi_fbank", "ASP"), config


@pytest.mark.parametrize("config,options,message", [
    ("B6", {"n_mels": 64}, r"multiple of 12 \(the product of the configuration's strides\), not 64"),
    ("B6", {"channels": 8}, "cannot form"),                            # B6's group divisor is 32
    ("B2", {"n_mels": 8}, "not a multiple of 4 heads"),                # 16 * 8 // 12 = 10 attention channels
    ("B6", {"encoder_type": "TSTP"}, "encoder_type"),
    ("B6", {"frontend": "waveform"}, "takes features")])
def test_impossible_configurations_are_user_errors(config, options, message):
    with pytest.raises(SpeakerNetError, match=message):
        plugins.load("models", f"ReDimNet{config}")(**options)


@needs_wespeaker
def test_a_wespeaker_state_dict_says_which_configuration_it_is(published):
    from spknet.models._redimnet import identify

    for config in CONFIGS:
        expected = {"model": f"ReDimNet{config}", "nOut": 192, "n_mels": 60 if config == "B0" else 72,
                    "channels": published[config].backbone.C}
        assert identify(oracle(config).state_dict()) == expected
    channels, n_mels = SMALL["B3"]
    assert identify(oracle("B3", channels, n_mels).state_dict())["model"] == "ReDimNetB3"
    assert identify({"conv1.weight": torch.zeros(1)}) is None


@pytest.mark.parametrize("config", ["B0", "B2", "B3"])
def test_the_folded_cpu_copy_gives_the_same_embeddings(config):
    from spknet.folding import fold_batch_norms, inference_copy

    net = randomise(small(config), scale_vectors=False).eval()     # the front end's window N(0, 1), as ever
    audio = torch.rand(2, 4000) * 2 - 1
    with torch.no_grad():
        expected = net(audio)
        assert torch.allclose(inference_copy(net, audio, channels_last=True)(audio), expected, rtol=1e-4,
                              atol=1e-4 * expected.abs().max().item())
    assert fold_batch_norms(copy.deepcopy(net), audio) > 0
