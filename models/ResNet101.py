"""WeSpeaker's ResNet101: bottleneck blocks 3-4-23-3, WeSpeaker's module names and 80 Kaldi fbanks by default (the
body, its options and front end: :mod:`models._wespeaker_resnet`; ``python inference.py import --from wespeaker``)."""

from ._wespeaker_resnet import resnet_plugin

MainModel = resnet_plugin(101)
