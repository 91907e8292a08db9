"""The network constructors: what a user can get wrong is a SpeakerNetError."""

import pytest
import torch

from spknet import plugins
from spknet.errors import SpeakerNetError


@pytest.mark.parametrize("encoder_type", ["SAP", "ASP"])
def test_known_encoder_types_build(encoder_type):
    net = plugins.load("models", "ResNetSE34L")(nOut=8, encoder_type=encoder_type)
    assert net.encoder_type == encoder_type and net.fc.out_features == 8


def test_unknown_encoder_type_is_a_user_error():
    with pytest.raises(SpeakerNetError, match="unknown encoder_type 'TAP': choose SAP or ASP"):
        plugins.load("models", "ResNetSE34L")(nOut=8, encoder_type="TAP")


@pytest.mark.parametrize("model", ["ResNetSE34L", "ResNetSE34V2"])
def test_only_hann_and_hamming_windows_build(model):
    for window, function in (("hann", torch.hann_window), ("hamming", torch.hamming_window)):
        net = plugins.load("models", model)(nOut=8, window=window)
        buffer = net.torchfb[-1].spectrogram.window if model == "ResNetSE34V2" else net.torchfb.spectrogram.window
        assert torch.equal(buffer, function(400))
    with pytest.raises(SpeakerNetError, match="unknown window 'blackman': choose hann or hamming"):
        plugins.load("models", model)(nOut=8, window="blackman")
