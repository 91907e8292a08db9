"""3D-Speaker's ERes2NetV2 as it publishes it (``iic/speech_eres2netv2_sv_zh-cn_16k-common``: baseWidth 26, scale
2, expansion 2, 64 channels, 192-d, 80 bands; 17,859,632 parameters). The network is :mod:`models._eres2netv2`
(3D-Speaker's module names: its state dicts load key for key); the front end is the spec's, by default 3D-Speaker's
own input: 80 Kaldi fbanks (``povey`` window) with the utterance mean subtracted.

``channels`` is 3D-Speaker's ``m_channels`` (a narrower network: 32 gives a quarter of the parameters).
"""

from ._eres2netv2 import ERes2NetV2
from ._frontend import check_choice, check_feature_frontend, make_frontend

ENCODERS = ("TSTP",)


def build(name: str, base_width: int, scale: int, expansion: int, nOut: int, encoder_type: str, n_mels: int,
          log_input: bool, window: str, channels: int, frontend: str) -> ERes2NetV2:
    check_choice("encoder_type", encoder_type, ENCODERS)
    check_feature_frontend(name, frontend)
    return ERes2NetV2(nOut=nOut, n_mels=n_mels, channels=channels, base_width=base_width, scale=scale,
                      expansion=expansion, frontend=make_frontend(frontend, n_mels, window, log_input=log_input))


def MainModel(nOut: int = 192, encoder_type: str = "TSTP", n_mels: int = 80, log_input: bool = True,
              window: str = "povey", channels: int = 64, frontend: str = "kaldi_fbank", **kwargs):
    return build("ERes2NetV2", 26, 2, 2, nOut, encoder_type, n_mels, log_input, window, channels, frontend)
