"""WeSpeaker's ResNet152 (wespeaker/models/resnet.py): bottleneck blocks 3-8-36-3 of 32-64-128-256 planes (strides
1-2-2-2), 3x3 stem, temporal statistics pooling, one linear layer; the body is :mod:`models._wespeaker_resnet`, with
WeSpeaker's module names, so its checkpoints import key for key (``python inference.py import --from wespeaker``).
The front end is WeSpeaker's, 80 Kaldi fbanks with the utterance mean subtracted (``kaldi_fbank``), unless the model
spec names another.
"""

from ._wespeaker_resnet import WeSpeakerResNet


def MainModel(nOut: int = 256, encoder_type: str = "TSTP", n_mels: int = 80, log_input: bool = True,
              window: str = "hamming", channels: int = 32, frontend: str = "kaldi_fbank", **kwargs):
    return WeSpeakerResNet(152, nOut=nOut, encoder_type=encoder_type, n_mels=n_mels, log_input=log_input,
                           window=window, channels=channels, frontend=frontend)
