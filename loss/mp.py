"""MP on the original's imbalanced batches (2 or 3 utterances per speaker): softmax over masked centres."""

from ._common import IMBALANCED
from ._masked_proxy import MaskedProxyLoss


class LossFunction(MaskedProxyLoss):
    variant = "mp"
    init_b = -5.0
    utterances_per_speaker = IMBALANCED
    has_unused_scalars = True
