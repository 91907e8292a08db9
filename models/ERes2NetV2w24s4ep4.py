"""3D-Speaker's larger ERes2NetV2 (``iic/speech_eres2netv2w24s4ep4_sv_zh-cn_16k-common``: baseWidth 24, scale 4,
expansion 4; 53,513,632 parameters), otherwise as :mod:`models.ERes2NetV2`."""

from .ERes2NetV2 import build


def MainModel(nOut: int = 192, encoder_type: str = "TSTP", n_mels: int = 80, log_input: bool = True,
              window: str = "povey", channels: int = 64, frontend: str = "kaldi_fbank", **kwargs):
    return build("ERes2NetV2w24s4ep4", 24, 4, 4, nOut, encoder_type, n_mels, log_input, window, channels, frontend)
