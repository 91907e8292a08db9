"""The original's "Fast ResNet-34": 16-32-64-128 channels, 3-4-6-3 SE basic blocks (about 1.4 M parameters).

``frontend``: ``logmel`` (default: the original's log mel, instance-normalised) or another feature front end of
:mod:`models._frontend` (``kaldi_fbank``, ``speechbrain_fbank``), with any ``n_mels``."""

from ._frontend import check_feature_frontend
from ._resnet_se import ResNetSE


def MainModel(nOut: int = 512, encoder_type: str = "SAP", n_mels: int = 40, log_input: bool = True,
              window: str = "hann", frontend: str = "logmel", **kwargs):
    check_feature_frontend("ResNetSE34L", frontend)
    return ResNetSE(layers=[3, 4, 6, 3], num_filters=[16, 32, 64, 128], nOut=nOut, encoder_type=encoder_type,
                    n_mels=n_mels, log_input=log_input, window=window, frontend=frontend, **kwargs)
