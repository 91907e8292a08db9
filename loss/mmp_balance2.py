"""MMP on balanced batches, b starting at +5 (the original README's "Train on mmp_balance" command)."""

from ._masked_proxy import MaskedProxyLoss


class LossFunction(MaskedProxyLoss):
    variant = "mmp"
    init_b = 5.0
    utterances_per_speaker = 2
