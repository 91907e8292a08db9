"""MMP (multi-positive/negative pair form of MP) on the original's imbalanced batches; b starts at -5."""

from ._common import IMBALANCED
from ._masked_proxy import MaskedProxyLoss


class LossFunction(MaskedProxyLoss):
    variant = "mmp"
    init_b = -5.0
    utterances_per_speaker = IMBALANCED
