"""WeSpeaker's SimAM_ResNet34_ASP (wespeaker.models.samresnet.SimAM_ResNet34_ASP: in_planes 64, 80 Kaldi fbanks,
256-d, ASP): :mod:`models._wespeaker_simam`, WeSpeaker's module names, its checkpoints load key for key.
``channels`` is WeSpeaker's in_planes."""

from ._wespeaker_simam import main_model


def MainModel(nOut: int = 256, encoder_type: str = "ASP", n_mels: int = 80, log_input: bool = True,
              window: str = "hamming", channels: int = 64, frontend: str = "kaldi_fbank", **kwargs):
    return main_model("SimAM_ResNet34_ASP", nOut, encoder_type, n_mels, log_input, window, channels, frontend)
