"""MP on balanced batches (every speaker with ``nPerSpeaker`` utterances): the original's recommended loss."""

from ._masked_proxy import MaskedProxyLoss


class LossFunction(MaskedProxyLoss):
    variant = "mp"
    init_b = -5.0
    utterances_per_speaker = 2
    has_unused_scalars = True
