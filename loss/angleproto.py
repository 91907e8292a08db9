"""Angular prototypical loss: Chung et al., "In defence of metric learning for speaker recognition",
Interspeech 2020.  Query = utterance 0 of each group, prototype = mean of the others; logits are
``w * cos(query_i, prototype_j) + b`` with learnable ``w > 0`` (init 10) and ``b`` (init -5), target ``j == i``."""

import torch
import torch.nn.functional as F

from ._common import LearnedScaleLoss, accuracy, query_and_anchor
from ._metric import check_groups, cosine_matrix, diagonal_targets


def angular_prototypical_logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(batch, group >= 2, dim)`` -> ``(batch, batch)`` scaled cosine logits, query i against prototype j."""
    positive, anchor = query_and_anchor(x)
    return cosine_matrix(positive, anchor) * w.clamp(min=1e-6) + b


class LossFunction(LearnedScaleLoss):
    """Cross-entropy of each query against all prototypes of the batch (its own speaker's is the target)."""

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_groups(x, "angleproto", 2)
        logits = angular_prototypical_logits(x, self.w, self.b)
        target = diagonal_targets(x.size(0), x.device)
        return F.cross_entropy(logits, target), accuracy(logits.detach(), target)
