"""WeSpeaker's ResNet34 (Wang et al., "Wespeaker: A research and production oriented speaker embedding learning
toolkit", ICASSP 2023; its wespeaker/models/resnet.py): a 3x3 stem of ``channels`` (32), 3-4-6-3 basic blocks of
32-64-128-256 channels with strides 1-2-2-2, temporal statistics pooling (TSTP: mean and standard deviation over
time of every (channel, frequency) row of the last map), one linear layer to a 256-d embedding (6,634,336
parameters with 80 bands, WeSpeaker's own count). Module names follow WeSpeaker's (``layerN.i.shortcut``,
``seg_1``); the body is :mod:`models._wespeaker_resnet`, shared with ResNet18 ... ResNet293.

Front end: ``logmel`` by default, the one SpeakerNet's ResNet34 has always had (pre-emphasis 0.97, 25-ms Hamming
windows every 10 ms, torchaudio's mel scale, the utterance mean of each band subtracted; keys ``torchfb.*``), so
existing checkpoints and commands are unchanged. ``frontend kaldi_fbank`` is WeSpeaker's own input (80 Kaldi
fbanks, utterance mean subtracted): what ``python inference.py import --from wespeaker`` records, with which
WeSpeaker's and pyannote's published weights compute what they compute there.
"""

from ._wespeaker_resnet import resnet_plugin

MainModel = resnet_plugin(34, frontend="logmel")
