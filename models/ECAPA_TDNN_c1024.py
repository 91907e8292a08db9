"""WeSpeaker's ECAPA_TDNN_c1024 (wespeaker.models.ecapa_tdnn.ECAPA_TDNN_c1024: 80 Kaldi fbanks, 192-d, ASTP):
:mod:`models._wespeaker_ecapa`, WeSpeaker's module names, its checkpoints load key for key."""

from ._wespeaker_ecapa import main_model


def MainModel(nOut: int = 192, encoder_type: str = "ASP", n_mels: int = 80, log_input: bool = True,
              window: str = "hamming", frontend: str = "kaldi_fbank", **kwargs):
    return main_model("ECAPA_TDNN_c1024", nOut, encoder_type, n_mels, log_input, window, frontend)
