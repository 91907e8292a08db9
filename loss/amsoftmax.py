"""Additive margin softmax (AM-Softmax / CosFace): Wang et al., "Additive Margin Softmax for Face Verification",
IEEE SPL 2018.  Logits are ``scale * (cos(x, w_j) - margin * [j == y])``."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import MarginSoftmaxLoss, accuracy, flatten_groups
from ._metric import cosine_matrix, target_mask


class LossFunction(MarginSoftmaxLoss):
    """Cross-entropy over ``scale * (cos - margin on the target class)``; accuracy is read from those logits."""

    def __init__(self, nOut: int, nSpeakers: int, margin: float | None = None, scale: float | None = None, **kwargs):
        super().__init__(margin, scale)
        # Stored (nOut, nSpeakers) like voxceleb_trainer, so its checkpoints load.
        self.W = nn.Parameter(torch.empty(nOut, nSpeakers))
        nn.init.xavier_normal_(self.W, gain=1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, label = flatten_groups(x, label)
        cosine = cosine_matrix(x, self.W.t())
        target = target_mask(label, cosine.size(1)).to(cosine.dtype)
        logits = self.s * (cosine - self.m * target)
        return F.cross_entropy(logits, label), accuracy(logits.detach(), label)
