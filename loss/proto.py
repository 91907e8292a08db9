"""Prototypical loss: Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017 (as used for
speakers by Chung et al., Interspeech 2020).  Query = utterance 0, prototype = mean of the others; logits are
``-|query_i - prototype_j|^2``, target ``j == i``."""

import torch
import torch.nn.functional as F
from torch import nn

from ._common import accuracy, query_and_anchor
from ._metric import check_groups, diagonal_targets, squared_distance_matrix


class LossFunction(nn.Module):
    """Cross-entropy over negative squared Euclidean distances between queries and prototypes."""

    utterances_per_speaker = 2
    train_normalize = False
    test_normalize = False

    def __init__(self, **kwargs):
        super().__init__()

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_groups(x, "proto", 2)
        positive, anchor = query_and_anchor(x)
        logits = -squared_distance_matrix(positive, anchor)
        target = diagonal_targets(x.size(0), x.device)
        return F.cross_entropy(logits, target), accuracy(logits.detach(), target)
