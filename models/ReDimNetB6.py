"""ReDimNet-B6 as WeSpeaker publishes it (``wespeaker.models.redimnet.ReDimNetB6``: C 32, 72 Kaldi fbanks,
192-d, ASTP): :mod:`models._redimnet`, WeSpeaker's module names, its checkpoints load key for key.
``channels`` is the configuration's C (the published model keeps 32)."""

from ._redimnet import main_model


def MainModel(nOut: int = 192, encoder_type: str = "ASP", n_mels: int = 72, log_input: bool = True,
              window: str = "hamming", channels: int = 32, frontend: str = "kaldi_fbank", **kwargs):
    return main_model("B6", nOut, encoder_type, n_mels, log_input, window, channels, frontend)
