"""CAM++ as 3D-Speaker publishes it (speakerlab/models/campplus/DTDNN.py; ``iic/speech_campplus_sv_zh-cn_16k-common``
and the other CAM++ model ids: 192-d, 80 bands, 6,848,544 parameters; ``iic/speech_campplus_sv_en_voxceleb_16k`` is
512-d, ``--nOut 512``).

3D-Speaker's CAM++ has WeSpeaker's modules and parameter names key for key (the network is :class:`models.CAMPPlus.
CAMPPlus`), but not its forward: 3D-Speaker's statistics pooling takes ``x.std()`` over time, WeSpeaker's
``sqrt(var + 1e-7)``. The two differ wherever a channel is constant over the utterance (a ReLU channel that stays
off: the standard deviation is 0 here, 3.2e-4 there), which moves the embedding by up to 1e-3 of its scale on a
randomly initialised network, so this plugin swaps in 3D-Speaker's pooling (:class:`StdPool`). Its front end is
3D-Speaker's input by default: 80 Kaldi fbanks with the ``povey`` window, the utterance mean subtracted, on float
waveforms (``--audio_scale float``).
"""

import torch
from torch import nn

from ._frontend import check_choice, check_feature_frontend, make_frontend
from .CAMPPlus import ENCODERS, CAMPPlus


class StdPool(nn.Module):
    """3D-Speaker's ``StatsPool``: the mean and the unbiased standard deviation over time, no eps. The variance is
    floored at 1e-14 before the root (a standard deviation of at most 1e-7 where 3D-Speaker's is 0), so that a
    channel constant over an utterance has a zero gradient instead of 3D-Speaker's NaN (``x.std()``'s backward
    at 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x.mean(dim=-1), x.var(dim=-1).clamp(min=1e-14).sqrt()), dim=1)


def MainModel(nOut: int = 192, encoder_type: str = "TSTP", n_mels: int = 80, log_input: bool = True,
              window: str = "povey", frontend: str = "kaldi_fbank", **kwargs):
    check_choice("encoder_type", encoder_type, ENCODERS)
    check_feature_frontend("CAMPPlus3D", frontend)
    net = CAMPPlus(nOut=nOut, n_mels=n_mels, frontend=make_frontend(frontend, n_mels, window, log_input=log_input))
    net.xvector.stats = StdPool()          # same place in the Sequential, no parameters: the keys are unchanged
    return net
