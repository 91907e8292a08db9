"""The network constructors: what a user can get wrong is a SpeakerNetError."""

import pytest

from spknet import plugins
from spknet.errors import SpeakerNetError


@pytest.mark.parametrize("encoder_type", ["SAP", "ASP"])
def test_known_encoder_types_build(encoder_type):
    net = plugins.load("models", "ResNetSE34L")(nOut=8, encoder_type=encoder_type)
    assert net.encoder_type == encoder_type and net.fc.out_features == 8


def test_unknown_encoder_type_is_a_user_error():
    with pytest.raises(SpeakerNetError, match="unknown encoder_type 'TAP': choose SAP or ASP"):
        plugins.load("models", "ResNetSE34L")(nOut=8, encoder_type="TAP")
