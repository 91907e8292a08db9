"""The original's "Fast ResNet-34": 16-32-64-128 channels, 3-4-6-3 SE basic blocks (about 1.4 M parameters)."""

from ._resnet_se import ResNetSE


def MainModel(nOut: int = 512, encoder_type: str = "SAP", n_mels: int = 40, log_input: bool = True,
              window: str = "hann", **kwargs):
    return ResNetSE(layers=[3, 4, 6, 3], num_filters=[16, 32, 64, 128], nOut=nOut, encoder_type=encoder_type,
                    n_mels=n_mels, log_input=log_input, window=window, **kwargs)
