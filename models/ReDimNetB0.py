"""ReDimNet-B0 as WeSpeaker publishes it (``wespeaker.models.redimnet.ReDimNetB0``: C 10, 60 Kaldi fbanks,
192-d, ASTP): :mod:`models._redimnet`, WeSpeaker's module names, its checkpoints load key for key.
``channels`` is the configuration's C (the published model keeps 10)."""

from ._redimnet import main_model


def MainModel(nOut: int = 192, encoder_type: str = "ASP", n_mels: int = 60, log_input: bool = True,
              window: str = "hamming", channels: int = 10, frontend: str = "kaldi_fbank", **kwargs):
    return main_model("B0", nOut, encoder_type, n_mels, log_input, window, channels, frontend)
